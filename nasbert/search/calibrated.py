"""The objective of an elastic teacher space: every candidate extracted, calibrated and compared with the teacher.

An architecture of an elastic space (:meth:`nasbert.space.SearchSpace.elastic_for`) is made of the teacher's own
sub-layers, some with fewer heads or neurons, some skipped. A trial extracts it from the teacher's weights (no adapters),
calibrates it on rows of unlabelled text (:class:`nasbert.export.calibrate.TeacherCalibration`: which heads and
neurons to keep, output weights refitted, each sub-layer on the teacher's inputs to it, fitted once for every size
so that a trial only looks it up; the export recalibrates its chosen models bottom-up), and scores
the calibrated model against the teacher's final hidden states on fixed, unmasked validation sequences. The proxy
loss the search minimises is ``1 - cosine`` (the mean per-token cosine to the teacher's states; ``proxy="mse"``: the
MSE). Latency is predicted on the profiled device and parameters and FLOPs are counted exactly, as in
:class:`~nasbert.search.objective.Objective`, which this replaces for elastic spaces; the in-process search and the
Ray workers call it the same way.

Why the cosine: it is blind to the scale of the states, which a pruned model that skips sub-layers changes while
keeping their direction, and which a fine-tuned classifier does not read through its LayerNorm and pooler; the MSE
charges a model for that scale. It is the cheap proxy that lets a search afford hundreds of trials, not the one
that decides: within a budget it does not rank fine-tuned quality (it rewards keeping a little of every layer up to
the last, which reads sentence pairs badly; docs/benchmarks.md), so the export ranks each budget's shortlist, the
best trials and the best starting points, by a short fine-tune (:mod:`nasbert.search.probe`).

>>> objective = CalibratedObjective(space, predictor, teacher, calibration=rows, batches=batches)  # doctest: +SKIP
>>> objective(arch)  # doctest: +SKIP
Evaluation(proxy_loss=0.12, latency_ms=14.1, params=11324160, flops=1450000000)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import torch

from ..export.calibrate import TeacherCalibration, calibrate
from ..latency.predictor import LatencyPredictor
from ..modeling.configuration_nasbert import op_spec
from ..space import Arch, SearchSpace, SpaceError
from ..supernet import SuperNet
from ..training.evaluation import TeacherStates, state_cosine, whole_model_loss
from .objective import Evaluation, Objective

__all__ = ["PROXIES", "CalibratedObjective", "calibrated_model"]

logger = logging.getLogger(__name__)

#: what a calibrated candidate is compared with the teacher by
PROXIES = ("cosine", "mse")


def calibrated_model(source: SuperNet, arch: Arch, teacher, calibration: torch.Tensor | None):
    """``arch`` extracted from ``source`` (a supernet of the teacher's weights, ``reorder="units"``) without adapters
    and calibrated bottom-up on ``calibration`` (token ids (rows, seq_len); None: magnitude-pruned, as extracted).
    Returns the model and the calibration records."""
    model = source.extract(arch, drop_identity_adapters=True)
    records = calibrate(model, arch, source.space, teacher, calibration) if calibration is not None else []
    return model, records


class CalibratedObjective(Objective):
    """``objective(arch) -> Evaluation`` for an elastic space: the proxy loss of the candidate calibrated on
    ``calibration`` (token ids (rows, seq_len)), against the teacher's final states on ``batches`` (unmasked
    validation batches, :func:`~nasbert.training.evaluation.plain_batches`). ``source``: the supernet of the
    teacher's own weights (default: built from ``teacher`` with ``reorder="units"``)."""

    def __init__(self, space: SearchSpace, predictor: LatencyPredictor, teacher, *, calibration: torch.Tensor,
                 batches: Sequence[dict], proxy: str = "cosine", source: SuperNet | None = None,
                 seq_len: int | None = None):
        if not space.elastic:
            raise SpaceError(f"space {space.name!r} is not an elastic teacher space: its candidates are not the "
                             "teacher's own sub-layers, so they cannot be calibrated (use Objective)")
        if proxy not in PROXIES:
            raise ValueError(f"proxy must be one of {', '.join(PROXIES)}, got {proxy!r}")
        if not batches:
            raise ValueError("the calibrated objective needs at least one validation batch")
        if space.candidates is None:  # an untrained run: every path of the space
            space = space.with_candidates([tuple(space.iter_block_paths(n)) for n in range(space.num_blocks)])
        super().__init__(space, [{str(p): 0.0 for p in c} for c in space.candidates], predictor, seq_len=seq_len)
        self.teacher = teacher.eval()
        self.source = (source or SuperNet.from_teacher(space.without_candidates(), teacher, reorder="units")).eval()
        self.batches, self.proxy = list(batches), proxy
        self.calibration = TeacherCalibration(teacher, self.source.space, calibration)
        self.targets = TeacherStates(teacher, self.batches)
        self._cache: dict[str, float] = {}

    def __getstate__(self) -> dict:
        """A copy for another process (a Ray search worker) leaves the teacher behind: a trial needs only its
        calibration statistics, the teacher's states (which travel without it) and the source supernet, and a
        Hugging Face model that has returned its hidden states carries forward hooks that cannot be pickled."""
        return {**self.__dict__, "teacher": None}

    def __call__(self, arch: Arch) -> Evaluation:
        """As :meth:`Objective.__call__`, with the parameters and FLOPs of the model this objective scores and the
        export writes: the teacher's sub-layers without adapters (``drop_identity_adapters``)."""
        ev = super().__call__(arch)
        return dataclasses.replace(ev, params=self.space.num_params(arch, adapters=False),
                                   flops=self.space.flops(arch, self.seq_len, adapters=False))

    # ---------------------------------------------------------------- sampler encoding: per layer, two counts

    def _options(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        space = self.space
        return ("identity", *space._elastic_ops("mha")), ("identity", *space._elastic_ops("ffn"))

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(f"layer{n}.{part}" for n in range(self.space.num_blocks) for part in ("attention", "ffn"))

    def choice_counts(self) -> dict[str, int]:
        """Per layer, the attention's sizes and the FFN's, each with "skipped" (index 0) first, then by size: an
        ordinal choice, which samplers can exploit better than one categorical over their 117 pairs."""
        attention, ffn = self._options()
        return {name: len(attention if name.endswith("attention") else ffn) for name in self.param_names}

    def suggest_params(self, trial) -> dict[str, int]:
        return {key: trial.suggest_int(key, 0, n - 1) for key, n in self.choice_counts().items()}

    def arch_from_params(self, params) -> Arch:
        attention, ffn = self._options()
        blocks = []
        for n in range(self.space.num_blocks):
            a, f = params[f"layer{n}.attention"], params[f"layer{n}.ffn"]
            if not (0 <= a < len(attention) and 0 <= f < len(ffn)):
                raise ValueError(f"layer {n}: attention {a!r} / ffn {f!r} are not indices into its "
                                 f"{len(attention)} / {len(ffn)} sizes")
            blocks.append(self.space._elastic_path(attention[int(a)], ffn[int(f)]))
        return Arch(tuple(blocks))

    def params_from_arch(self, arch: Arch) -> dict[str, int]:
        self.space.validate(arch)
        attention, ffn = self._options()
        out = {}
        for n, block in enumerate(arch.blocks):
            kinds = {op_spec(op).kind: op for op in block.layers}
            mha, fc = kinds.get("mha", "identity"), kinds.get("ffn", "identity")
            out[f"layer{n}.attention"], out[f"layer{n}.ffn"] = attention.index(mha), ffn.index(fc)
        return out

    def starting_points(self) -> list[Arch]:
        """Architectures a new search evaluates first, so that it starts from every size: the teacher's bottom k
        layers for every k (what a user gets for free), then each with every FFN at each offered size and with or
        without the next layer's attention (the teacher cuts of earlier releases), in an order that spreads over
        predicted latency. The search keeps them only where its proxy agrees."""
        cuts = self.space.teacher_cuts()
        dropped = cuts[: self.space.num_blocks - 1]
        rest = cuts[len(dropped):]
        rest.sort(key=self.predictor.predict)
        return dropped + [rest[i] for i in _spread_order(len(rest))]

    @torch.no_grad()
    def proxy_loss(self, arch: Arch) -> float:
        key = str(arch)
        if key not in self._cache:
            model = self.source.extract(arch, drop_identity_adapters=True)
            self.calibration.apply(model, arch)
            self._cache[key] = self.score(model)
        return self._cache[key]

    def score(self, model) -> float:
        """The proxy loss of a standalone model (e.g. a calibrated candidate) against the teacher's states."""
        if self.proxy == "cosine":
            return 1.0 - state_cosine(model, self.targets, None, self.batches)
        return whole_model_loss(model, self.targets, None, self.batches)


def _spread_order(n: int) -> list[int]:
    """0..n-1 in the order of the van der Corput sequence (0, 1/2, 1/4, 3/4, ...) over [0, n): every prefix spreads
    over the range.

    >>> _spread_order(8)
    [0, 4, 2, 6, 1, 5, 3, 7]
    """
    order, seen, k = [], set(), 0
    while len(order) < n:
        x, denominator, i = 0.0, 1.0, k
        while i:
            denominator *= 2
            x += (i % 2) / denominator
            i //= 2
        k += 1
        j = int(x * n)
        while j in seen:
            j = (j + 1) % n
        seen.add(j)
        order.append(j)
    return order
