"""The free baselines: what a user gets without nasbert's search, at the same measured latency.

A searched family member is only worth having if it beats the models a user can build in minutes:

* the **layer-dropped teacher** (``layerdrop-bottom{k}``, ``layerdrop-spread{k}``): keep k of the teacher's
  layers as they are, no training. ``bottom`` keeps layers 0..k-1; ``spread`` spreads the k layers over the
  space's blocks (each block keeps its first ones: with MiniLM-L6's 3 blocks of 2 layers, spread-3 is layers
  0, 2, 4). It is built from a supernet that keeps the teacher's own unit order (``reorder=False``), so the
  extracted model *is* those teacher layers, with no adapter between them: exactly a Hugging Face
  ``BertModel`` with ``num_hidden_layers = k`` (checked in the tests), so it costs what such a BERT costs;
* the **uniform model** (``uniform-L{l}-H{w}``, NAS-BERT's BERTx): l layers of MHA + FFN at one width w, spread
  over the blocks the same way, sliced from the run's trained supernet;
* the **magnitude-pruned twin** of a member of the teacher's own sub-layers (``pruned-<member>``, kind
  ``pruned``): the same shape, its heads and neurons kept by weight magnitude, no calibration. It costs what the
  member costs; calibration is all that separates them.

Each can also be given the post-search distillation a family member gets (``+kd``): the same
:func:`~nasbert.training.distill.distill_arch` steps, corpus, seed and settings. A layer-dropped teacher keeps its
adapters frozen at the identity while it is distilled, so it stays a plain BERT.

:func:`choose_baselines` times every candidate with the teacher (interleaved, the run's latency settings) and
keeps, per budget and kind, the biggest candidate that serves the budget on measured latency (the most
teacher layers; the slowest uniform model): the one a user with that budget would take. A baseline serves a
speed-up or latency budget when it is at most :data:`SERVES_TOLERANCE` slower than the limit: the bottom 3 of 6
layers, timed at 1.98x, serve 2x, as a user would take them for it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ..space import Arch, BlockArch, SearchSpace

__all__ = ["KINDS", "LAYERDROP_MODES", "ROW_KINDS", "SERVES_TOLERANCE", "Baseline", "baseline_params", "build_raw",
           "choose_baselines", "kept_layers", "layer_counts", "layerdrop_baselines", "serves", "uniform_baselines"]

logger = logging.getLogger(__name__)

KINDS = ("layerdrop", "uniform")
#: every kind of row a report holds
ROW_KINDS = ("searched", "rule", "layerdrop", "pruned", "uniform", "teacher", "sampled")
LAYERDROP_MODES = ("bottom", "spread")
#: how much slower than a latency budget's limit a baseline may be timed and still serve it (the timing's own
#: spread between runs on one idle machine is a few percent)
SERVES_TOLERANCE = 0.03


@dataclass(frozen=True)
class Baseline:
    """One free baseline: a name, its kind ("layerdrop" or "uniform") and its architecture in the space."""

    name: str
    kind: str
    arch: Arch

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "arch": str(self.arch)}


def layer_counts(layers: int, num_blocks: int, per_block: int, mode: str) -> list[int]:
    """How many (MHA + FFN) layers each block keeps: ``bottom`` fills the blocks in order, ``spread`` as evenly
    as possible (earlier blocks take the remainder).

    >>> layer_counts(3, 3, 2, "bottom"), layer_counts(3, 3, 2, "spread"), layer_counts(4, 3, 2, "spread")
    ([2, 1, 0], [1, 1, 1], [2, 1, 1])
    """
    if mode not in LAYERDROP_MODES:
        raise ValueError(f"mode must be one of {', '.join(LAYERDROP_MODES)}, got {mode!r}")
    if not 1 <= layers <= num_blocks * per_block:
        raise ValueError(f"layers must be in 1..{num_blocks * per_block}, got {layers}")
    if mode == "bottom":
        return [min(per_block, max(0, layers - n * per_block)) for n in range(num_blocks)]
    return [layers // num_blocks + (1 if n < layers % num_blocks else 0) for n in range(num_blocks)]


def _stacked(space: SearchSpace, width: int, counts: Sequence[int]) -> Arch:
    k = space.slots_per_block
    return Arch(tuple(BlockArch(width, ("mha", "ffn") * c + ("identity",) * (k - 2 * c)) for c in counts))


def _check_space(space: SearchSpace, ops: Sequence[str] = ("identity",)) -> None:
    missing = [op for op in ops if op not in space.ops]
    if space.slots_per_block % 2 or missing:
        raise ValueError(f"space {space.name!r}: these baselines need blocks of whole MHA + FFN layers (an even "
                         f"number of slots per block) and the ops {', '.join(ops)}; missing: {', '.join(missing)}")


def kept_layers(space: SearchSpace, arch: Arch) -> list[int]:
    """The teacher layers a layer-drop architecture keeps (block n's first c layers)."""
    per_block = space.slots_per_block // 2
    return [n * per_block + j for n, block in enumerate(arch.blocks) for j in range(len(block.layers) // 2)]


def layerdrop_baselines(space: SearchSpace, modes: Sequence[str] = LAYERDROP_MODES) -> list[Baseline]:
    """Every layer-dropped teacher with 1..L-1 layers, for each mode; a spread one equal to a bottom one
    (e.g. one layer) is listed once, as bottom."""
    _check_space(space)
    per_block, n = space.slots_per_block // 2, space.num_blocks
    out: list[Baseline] = []
    seen: set[Arch] = set()
    for mode in modes:
        for k in range(1, n * per_block):
            arch = _stacked(space, space.teacher.hidden_size, layer_counts(k, n, per_block, mode))
            if arch not in seen:
                seen.add(arch)
                out.append(Baseline(f"layerdrop-{mode}{k}", "layerdrop", arch))
    return out


def uniform_baselines(space: SearchSpace) -> list[Baseline]:
    """Every uniform model of the space: l = 1..L layers of MHA + FFN at each width of ``hidden_choices``,
    spread over the blocks (the teacher's own architecture excluded)."""
    _check_space(space, ("mha", "ffn", "identity"))
    per_block, n = space.slots_per_block // 2, space.num_blocks
    out = []
    for width in space.hidden_choices:
        for layers in range(1, n * per_block + 1):
            arch = _stacked(space, width, layer_counts(layers, n, per_block, "spread"))
            if arch != space.teacher_arch():
                out.append(Baseline(f"uniform-L{layers}-H{width}", "uniform", arch))
    return out


def build_raw(baseline: Baseline, *, teacher_supernet, trained_supernet):
    """The untrained baseline model: a layer-dropped teacher from ``teacher_supernet`` (``SuperNet.from_teacher(
    ..., reorder=False)``, no adapters), a uniform model sliced from ``trained_supernet``."""
    if baseline.kind == "layerdrop":
        model = teacher_supernet.extract(baseline.arch, drop_identity_adapters=True)
        if model.config.adapters:
            raise ValueError(f"{baseline.name}: the teacher supernet's adapters are not identities; build it with "
                             "SuperNet.from_teacher(space, teacher, reorder=False)")
        return model
    return trained_supernet.extract(baseline.arch)


def _rank(baseline: Baseline, latency_ms: float, space: SearchSpace) -> float:
    """What makes a baseline the one to take: the most teacher layers for a layer-dropped teacher (of two with
    as many layers, the first listed: bottom before spread, which kept more of the teacher's quality where it
    was measured); the most measured time for a uniform model."""
    return baseline_params(baseline, space) if baseline.kind == "layerdrop" else latency_ms


def baseline_params(baseline: Baseline, space: SearchSpace) -> int:
    """The baseline model's parameters: a layer-dropped teacher has no adapters."""
    return space.num_params(baseline.arch, adapters=False if baseline.kind == "layerdrop" else None)


def serves(budget, latency_ms: float, params: int, teacher_latency_ms: float,
           tolerance: float = SERVES_TOLERANCE) -> bool:
    """Whether a model timed at ``latency_ms`` serves ``budget``: it meets it, or a latency or speed-up budget
    within ``tolerance`` (at most that fraction slower than its limit)."""
    slack = 1.0 if budget.kind == "params" else 1.0 - tolerance
    return budget.allows(latency_ms * slack, params, teacher_latency_ms)


def choose_baselines(candidates: Sequence[Baseline], latency_ms: dict[str, float], teacher_latency_ms: float,
                     budgets: Sequence, space: SearchSpace, *, tolerance: float = SERVES_TOLERANCE
                     ) -> dict[str, dict[str, Baseline]]:
    """``{budget name: {kind: baseline}}``: per budget and kind, among the candidates that serve the budget on
    measured latency (``latency_ms[name]``; :func:`serves`), the layer-dropped teacher with the most layers and
    the slowest uniform model (ties: the first listed). A kind with no candidate under a budget is left out of
    that budget."""
    chosen: dict[str, dict[str, Baseline]] = {}
    for budget in budgets:
        per_kind: dict[str, Baseline] = {}
        for b in candidates:
            ms = latency_ms[b.name]
            if not serves(budget, ms, baseline_params(b, space), teacher_latency_ms, tolerance):
                continue
            best = per_kind.get(b.kind)
            if best is None or _rank(b, ms, space) > _rank(best, latency_ms[best.name], space):
                per_kind[b.kind] = b
        chosen[budget.name] = per_kind
        for kind in KINDS:
            if kind in per_kind:
                logger.info("budget %s: %s baseline %s (%.2f ms, %.2fx)", budget.name, kind, per_kind[kind].name,
                            latency_ms[per_kind[kind].name], teacher_latency_ms / latency_ms[per_kind[kind].name])
            else:
                logger.info("budget %s: no %s baseline meets it", budget.name, kind)
    return chosen
