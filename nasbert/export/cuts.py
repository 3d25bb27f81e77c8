"""Teacher cuts: the teacher's own bottom sub-layers as an architecture, and what timing one can be trusted for.

A cut is a point of the elastic teacher space (:meth:`nasbert.space.SearchSpace.elastic_for`) and, where the slots
allow it, of a NAS-BERT space: sub-layer ``j`` of the teacher is the MHA (even ``j``) or the FFN (odd ``j``) of layer
``j // 2``; the supernet's global slot ``s`` starts from teacher layer ``s // 2`` (:meth:`SuperNet.from_teacher`),
and a block's kept ops sit in its first slots (identity ops last). :func:`cut_arch` places kept sub-layers on slots
that hold their own layer's weights; :func:`work_speedup` bounds how much faster than the teacher any model of the
teacher's own sub-layers can run, which the export and ``nasbert pick`` use to tell a busy host from a fast model.

>>> from nasbert.space import SearchSpace
>>> space = SearchSpace.load("search_spaces/minilm_l6.yaml")
>>> str(cut_arch(space, range(5)))
'384:mha,ffn,mha,ffn|384:mha,identity,identity,identity|384:identity,identity,identity,identity'
"""

from __future__ import annotations

from collections.abc import Iterable

from ..modeling.configuration_nasbert import op_spec
from ..space import Arch, BlockArch, SearchSpace

__all__ = ["BUSY_MARGIN", "busy", "cut_arch", "cut_name", "judged_ms", "work_speedup"]

#: a cut timed over its work bound (:func:`work_speedup`) by more than this says the host was busy; less is the
#: timing's own noise on an idle host (single timings 1% over, bench/busy_host.json)
BUSY_MARGIN = 0.03


def _sublayer(j: int) -> str:
    return f"{'mha' if j % 2 == 0 else 'ffn'}{j // 2}"


def cut_name(kept: Iterable[int], *, pruned: int | None = None, every: bool = False) -> str:
    """``teacher-L{k}`` for the bottom k layers, ``+mha{k}`` when layer k's attention is kept too, then
    ``-{sub-layer}`` for a dropped one below the top (``teacher-L3-mha1``: layers 0-2 without layer 1's MHA).
    With the top FFN ``pruned`` to that many neurons, its layer is named by its parts:
    ``teacher-L2+mha2+ffn2@768`` (``teacher-L2+ffn2@768`` without layer 2's MHA); with ``every`` FFN pruned,
    ``@ffn{pruned}`` follows the plain name: ``teacher-L2+mha2@ffn768``."""
    kept = set(kept)
    top = max(kept)
    if every:
        if pruned is None or not any(j % 2 for j in kept):
            raise ValueError("a cut with every FFN pruned needs the neurons to keep (pruned=) and an FFN")
        return cut_name(kept) + f"@ffn{pruned}"
    if pruned is None:
        name = f"teacher-L{(top + 1) // 2}" + (f"+{_sublayer(top)}" if top % 2 == 0 else "")
        return name + "".join(f"-{_sublayer(j)}" for j in range(top) if j not in kept)
    if top % 2 == 0:
        raise ValueError(f"only a cut that ends on an FFN can prune it; this one ends on {_sublayer(top)}")
    name = f"teacher-L{top // 2}" + "".join(f"+{_sublayer(j)}" for j in (top - 1,) if j in kept)
    return name + f"+{_sublayer(top)}@{pruned}" + "".join(f"-{_sublayer(j)}" for j in range(top - 1) if j not in kept)


def cut_arch(space: SearchSpace, kept: Iterable[int], *, pruned: int | None = None,
             every: bool = False) -> Arch | None:
    """The architecture that computes exactly the teacher sub-layers ``kept`` (in order), or None where the
    space cannot place them on slots that hold their own layer's weights. ``pruned``: the top sub-layer, an FFN,
    keeps only its first ``pruned`` neurons (op ``ffn{pruned}``); with ``every``, every FFN of the cut does."""
    kept = set(kept)
    top = max(kept)
    k, width = space.slots_per_block, space.teacher.hidden_size
    blocks = []
    for b in range(space.num_blocks):
        mine = sorted(j for j in kept if j // k == b)
        ops = []
        for i, j in enumerate(mine):
            if (b * k + i) // 2 != j // 2:  # the slot holds another layer's weights
                return None
            prune = pruned is not None and (every or j == top)
            ops.append("mha" if j % 2 == 0 else f"ffn{pruned}" if prune else "ffn")
        blocks.append(BlockArch(width, tuple(ops) + ("identity",) * (k - len(ops))))
    return Arch(tuple(blocks))


def _specs(arch: Arch) -> list[tuple]:
    return [(op_spec(op), block.width) for block in arch.blocks for op in block.layers]


def work_speedup(space: SearchSpace, arch: Arch, seq_len: int) -> float | None:
    """The most a cut can be faster than the teacher: the ratio of the work they do on ``seq_len`` tokens, or
    None for a cut that keeps more FFN than attention (below).

    A cut runs a subset of the teacher's sub-layers (a pruned FFN: a narrower one) with the same kernels, and the
    teacher's embeddings too: the sum of three lookups and its LayerNorm, counted here as 7 operations per element,
    the layers as their FLOPs (:meth:`SearchSpace.flops`, no adapters). Small kernels do less per second than
    large ones, and an attention sub-layer (softmax, reshapes) less than an FFN, so a cut that keeps at least as
    much attention as FFN (every gap-free cut) is timed below this ratio on an idle machine. A speed-up timed
    above it says the host was busy while the cut and the
    teacher were timed (the teacher slows more than a small model), and the export judges the cut at this ratio
    instead. The bottom half of the layers stays just under 2x, as it does when timed on an idle host. A cut that
    drops attention and keeps the FFN can legitimately beat the ratio, so it has no bound.

    >>> space = SearchSpace.load("search_spaces/minilm_l6.yaml")
    >>> round(work_speedup(space, cut_arch(space, range(6)), 128), 4)
    1.9998
    >>> work_speedup(space, cut_arch(space, {0, 1, 3}), 128) is None  # layers 0 and 1 without layer 1's MHA
    True
    """
    specs = _specs(arch)
    attention = sum(1 for spec, _ in specs if spec.kind == "mha")
    ffn = sum(spec.ffn_inner(width, space.ffn_ratio) / (space.ffn_ratio * width) for spec, width in specs
              if spec.kind == "ffn")
    if ffn > attention:
        return None
    shared = 7 * seq_len * space.teacher.hidden_size
    teacher = space.flops(space.teacher_arch(), seq_len, adapters=False)
    return (teacher + shared) / (space.flops(arch, seq_len, adapters=False) + shared)


def judged_ms(timed_ms: float, teacher_ms: float, bound: float | None) -> float:
    """The latency a cut is judged at: as timed, or at its work bound (``bound``, :func:`work_speedup`) where it was
    timed faster than that allows; as timed without a bound.

    >>> judged_ms(10.0, 40.0, 2.0), judged_ms(25.0, 40.0, 2.0), judged_ms(10.0, 40.0, None)
    (20.0, 25.0, 10.0)
    """
    return max(timed_ms, teacher_ms / bound) if bound else timed_ms


def busy(timed_ms: float, judged: float) -> bool:
    """Whether a cut timed at ``timed_ms`` and judged at ``judged`` (:func:`judged_ms`) was over its bound by more
    than :data:`BUSY_MARGIN`: the host was busy, not just noisy."""
    return judged / timed_ms > 1.0 + BUSY_MARGIN
