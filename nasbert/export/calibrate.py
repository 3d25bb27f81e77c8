"""Calibrating a model of the teacher's own sub-layers on unlabelled text: which heads and neurons to keep, and
the output weights that make up for the rest.

An architecture of an elastic teacher space (:meth:`nasbert.space.SearchSpace.elastic_for`; a teacher cut is one)
keeps each teacher layer's attention with h of its heads and its FFN with n of its neurons, or skips them. Extracted
from ``SuperNet.from_teacher(space, teacher, reorder="units")`` it keeps the heads and neurons that the weight
magnitudes rank first (:mod:`nasbert.supernet.importance`) and their output weights as the teacher has them: the
magnitude-pruned model. On real inputs neither is the best the teacher's own weights allow. Calibration walks the
model bottom-up, once, each pruned sub-layer on the inputs the calibrated layers below give it:

1. **Units.** Keep the ``k`` units (FFN neurons, or attention heads) whose output contributes the most on the
   calibration tokens: ``||W_out[:, j]|| * rms(g_j)`` for a neuron with activation ``g_j`` (the structured form of
   Wanda's ``|W| * ||X||``; FLAP ranks by the same product with the variance), and the rms of ``ctx_h W_o[:, h]^T``
   for a head with context ``ctx_h``.
2. **Output weights.** Refit the output dense (``W_out``, ``b_out``; ``W_o``, ``b_o``) of the kept units by
   ridge-regularised least squares, so that on the same tokens the pruned sub-layer reproduces the whole one's
   output (the layer-wise reconstruction of Kwon et al., 2022, "A Fast Post-Training Pruning Framework for
   Transformers", with the whole output matrix refitted instead of one scale per unit).

The input weights of the kept units stay the teacher's and the model keeps its shapes, so its latency does not
change. One pass costs about one forward of the model and one least-squares solve per pruned sub-layer, which is
cheap enough to run on every candidate of a search (:mod:`nasbert.search.calibrated`).

>>> # model = SuperNet.from_teacher(space, teacher, reorder="units").extract(arch, drop_identity_adapters=True)
>>> # records = calibrate(model, arch, space, teacher, corpus.train[:128])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch

from ..modeling.configuration_nasbert import op_spec
from ..modeling.modeling_nasbert import additive_attention_mask, multi_head_attention
from ..space import Arch, SearchSpace

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_RIDGE", "Calibration", "TeacherCalibration", "calibrate", "teacher_sublayers"]

#: the ridge added to the least-squares system, as a fraction of the mean of its diagonal: enough to keep the
#: system well-posed when kept units are nearly collinear on a few thousand tokens, small next to its signal
DEFAULT_RIDGE = 1e-3


@dataclass(frozen=True)
class Calibration:
    """What calibrating one pruned sub-layer did: its kind (``mha`` or ``ffn``), the teacher layer it comes from,
    the units (heads or neurons) kept of that layer's, and the relative squared error of its output against the
    whole sub-layer's on the calibration tokens, before (the magnitude-ranked units, the teacher's output weights)
    and after."""

    op: int  # index of the layer in model.encoder.layer
    kind: str
    teacher_layer: int
    units: int
    teacher_units: int
    tokens: int
    error_before: float
    error_after: float

    def to_dict(self) -> dict:
        return asdict(self)


def teacher_sublayers(model, arch: Arch, space: SearchSpace) -> list[tuple[int, str, int]]:
    """``(op index in model.encoder.layer, kind, teacher layer)`` of every layer of ``model``: slot ``s`` of the
    space holds teacher layer ``s // 2``'s attention and FFN (:meth:`SuperNet.from_teacher`). Raises ValueError for
    a model that is not made of the teacher's sub-layers at its width without adapters (what
    :meth:`SuperNet.extract` gives with ``drop_identity_adapters`` from a supernet built with
    ``SuperNet.from_teacher(space, teacher, reorder="units")``)."""
    width = space.teacher.hidden_size
    if getattr(model.config, "adapters", True) is not False or any(b.width != width for b in arch.blocks):
        raise ValueError("calibration needs a model of the teacher's sub-layers at the teacher's width without "
                         "adapters: extract it from SuperNet.from_teacher(space, teacher, reorder=\"units\") with "
                         "drop_identity_adapters=True")
    ops = [(slot, op) for b, block in enumerate(arch.blocks) for slot, op in zip(space.block_slots(b), block.layers)]
    if len(ops) != len(model.encoder.layer):
        raise ValueError(f"the model has {len(model.encoder.layer)} layers, the architecture {len(ops)}: pass the "
                         "arch it was extracted from")
    out = []
    for n, (slot, op) in enumerate(ops):
        kind = op_spec(op).kind
        if kind not in ("mha", "ffn") or slot // 2 >= space.teacher.num_hidden_layers:
            raise ValueError(f"{arch}: {op} in slot {slot} is not one of the teacher's sub-layers; only "
                             "architectures of the teacher's own attentions and FFNs can be calibrated")
        out.append((n, kind, slot // 2))
    return out


def _solve(gram: torch.Tensor, cross: torch.Tensor, ridge: float) -> torch.Tensor:
    gram = gram + ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    return torch.linalg.solve(gram, cross)


class _Sublayer:
    """One pruned sub-layer's teacher weights in float64, as ``features(x) -> g`` (per-unit activations, units
    of ``unit`` columns) and the output dense ``g W^T + b``."""

    def __init__(self, kind: str, source, head_size: int, act):
        self.kind, self.head_size, self.act = kind, head_size, act
        if kind == "ffn":
            self.w_in = source.intermediate.dense.weight.double()
            self.b_in = source.intermediate.dense.bias.double()
            self.w_out = source.output.dense.weight.double()  # (H, I)
            self.b_out = source.output.dense.bias.double()
            self.unit = 1
        else:
            a = source.attention
            self.qkv = [(m.weight.double(), m.bias.double()) for m in (a.self.query, a.self.key, a.self.value)]
            self.w_out, self.b_out = a.output.dense.weight.double(), a.output.dense.bias.double()  # (H, heads*hs)
            self.unit = head_size
        self.units = self.w_out.shape[1] // self.unit

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B * T, units * unit): the FFN's activations, or the attention heads' contexts, in the dtype
        of ``x``."""
        if self.kind == "ffn":
            return self.act(x.reshape(-1, x.shape[-1]) @ self.w_in.T.to(x.dtype) + self.b_in.to(x.dtype))
        q, k, v = (x @ w.T.to(x.dtype) + b.to(x.dtype) for w, b in self.qkv)
        mask = additive_attention_mask(torch.ones(x.shape[:2], dtype=torch.long), x.dtype)
        ctx = multi_head_attention(q, k, v, mask, head_size=self.head_size, dropout=0.0, training=False)
        return ctx.reshape(-1, ctx.shape[-1])

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        """``[g, 1]^T [g, 1]`` (float64) of the features on ``x``: every statistic calibration needs, since the
        whole sub-layer's output is ``[g, 1] @ target`` (:attr:`target`)."""
        g = self.features(x.float())
        a = torch.cat([g, torch.ones(len(g), 1, dtype=g.dtype)], dim=1)
        return (a.T @ a).double()

    @property
    def target(self) -> torch.Tensor:
        """(units * unit + 1, H): the whole output dense, ``[W^T; b]``."""
        return torch.cat([self.w_out.T, self.b_out[None]])

    def scores(self, gram: torch.Tensor) -> torch.Tensor:
        """Per unit, the summed squared norm of its share of the output over the tokens, from their Gram matrix:
        ``||g_j||^2 ||W[:, j]||^2`` for a neuron, ``tr(W_h G_hh W_h^T)`` for a head."""
        d = self.units * self.unit
        w = self.w_out.view(-1, self.units, self.unit)  # (H, units, unit)
        blocks = gram[:d, :d].view(self.units, self.unit, self.units, self.unit).diagonal(dim1=0, dim2=2)
        blocks = blocks.permute(2, 0, 1)  # (units, unit, unit): each unit's own block
        return torch.einsum("hui,uij,huj->u", w, blocks, w)

    def error(self, gram: torch.Tensor, rows: torch.Tensor, solution: torch.Tensor) -> float:
        """Relative squared error of ``[g, 1][:, rows] @ solution`` against the whole output, from the Gram matrix."""
        t = self.target
        cross = gram[rows] @ t  # (r, H)
        fit = (solution * (gram[rows][:, rows] @ solution)).sum() - 2 * (solution * cross).sum()
        norm = (t * (gram @ t)).sum()
        return float((fit + norm) / norm)

    def columns(self, units: torch.Tensor) -> torch.Tensor:
        return (units[:, None] * self.unit + torch.arange(self.unit)[None, :]).reshape(-1)

    def magnitude(self) -> torch.Tensor:
        """The criterion the supernet's unit order uses (:mod:`nasbert.supernet.importance`)."""
        if self.kind == "ffn":
            return self.w_in.norm(dim=1) * self.w_out.norm(dim=0)
        v, hs = self.qkv[2][0], self.unit
        return v.view(self.units, hs, -1).pow(2).sum(dim=(1, 2)).sqrt() * \
            self.w_out.view(-1, self.units, hs).pow(2).sum(dim=(0, 2)).sqrt()

    @torch.no_grad()
    def load(self, layer, keep: torch.Tensor, solution: torch.Tensor) -> None:
        """Copy the kept units' input weights and the refitted output dense into ``layer`` (the model's)."""
        cols = self.columns(keep)
        if self.kind == "ffn":
            pairs = [(layer.intermediate.dense.weight, self.w_in[cols]), (layer.intermediate.dense.bias, self.b_in[cols])]
            out = layer.output.dense
        else:
            s = layer.self
            pairs = [(p, src) for m, (w, b) in zip((s.query, s.key, s.value), self.qkv)
                     for p, src in ((m.weight, w[cols]), (m.bias, b[cols]))]
            out = layer.output.dense
        pairs += [(out.weight, solution[:-1].T), (out.bias, solution[-1])]
        for param, value in pairs:
            param.copy_(value.to(param.dtype))


@torch.no_grad()
def calibrate(model, arch: Arch, space: SearchSpace, teacher, input_ids: torch.Tensor, *,
              ridge: float = DEFAULT_RIDGE, batch_size: int = 32, units: str = "output",
              refit: bool = True) -> list[Calibration]:
    """Calibrate every pruned attention and FFN of ``model`` (extracted from ``arch``, made of the teacher's own
    sub-layers) in place, bottom-up in one pass, on ``input_ids`` (N, T) of unlabelled text with no padding (e.g.
    rows of a :class:`TokenizedCorpus`), against the sub-layers of ``teacher`` (a ``BertModel``). Returns one record
    per pruned sub-layer; none for a model with none.

    ``units="magnitude"`` keeps the units the weight magnitudes rank first (those the model has) and ``refit=False``
    the teacher's output weights, so the two steps can be measured apart."""
    if input_ids.dim() != 2 or len(input_ids) == 0:
        raise ValueError(f"calibration needs token ids of shape (rows, seq_len), got {tuple(input_ids.shape)}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    if units not in ("output", "magnitude"):
        raise ValueError(f"units must be 'output' or 'magnitude', got {units!r}")
    layers = teacher_sublayers(model, arch, space)
    was_training = model.training
    model.eval()
    ones = torch.ones_like(input_ids[:batch_size])
    additive = additive_attention_mask(ones, torch.float32)
    xs = [model.embeddings(ids, torch.zeros_like(ids), torch.ones_like(ids))
          for ids in input_ids.split(batch_size)]  # (B, T, H) per batch: the current layer's inputs
    out = []
    for n, kind, t_layer in layers:
        layer = model.encoder.layer[n]
        source = teacher.encoder.layer[t_layer]
        sub = _Sublayer(kind, source, space.head_size, getattr(layer, "act", None))
        kept = (layer.intermediate.dense.out_features if kind == "ffn"
                else layer.self.query.out_features // space.head_size)
        if kept < sub.units:
            out.append(_calibrate_sublayer(sub, layer, n, t_layer, kept, xs, ridge=ridge, units=units, refit=refit))
        xs = [layer(x, additive[: len(x)], ones[: len(x)]) for x in xs]
    model.train(was_training)
    return out


def _calibrate_sublayer(sub: _Sublayer, layer, n: int, t_layer: int, kept: int, xs: list[torch.Tensor], *,
                        ridge: float, units: str, refit: bool) -> Calibration:
    """One pass over the sub-layer's inputs for the Gram matrix of its units' outputs; the units to keep, the
    refitted output dense and both errors follow from it."""
    tokens = sum(x.shape[0] * x.shape[1] for x in xs)
    gram = sum(sub.gram(x) for x in xs)
    bias = torch.tensor([len(gram) - 1])
    score = sub.scores(gram) if units == "output" else sub.magnitude()
    keep = torch.argsort(-score, stable=True)[:kept]  # most important first, as the supernet orders units
    rows = torch.cat([sub.columns(keep), bias])
    solution = _solve(gram[rows][:, rows], gram[rows] @ sub.target, ridge) if refit else sub.target[rows]
    # before: the magnitude-ranked units with the teacher's output weights (what the extracted model holds)
    before = torch.cat([sub.columns(torch.argsort(-sub.magnitude(), stable=True)[:kept]), bias])
    error_before = sub.error(gram, before, sub.target[before])
    sub.load(layer, keep, solution)
    record = Calibration(op=n, kind=sub.kind, teacher_layer=t_layer, units=kept, teacher_units=sub.units,
                         tokens=tokens, error_before=error_before, error_after=sub.error(gram, rows, solution))
    logger.debug("calibrated layer %d's %s (%d of %d units) on %d tokens: relative error %.4f -> %.4f", t_layer,
                 sub.kind, kept, sub.units, tokens, record.error_before, record.error_after)
    return record


class TeacherCalibration:
    """Calibration of every teacher sub-layer at every size, fitted once on the *teacher's* inputs to that
    sub-layer, so that a search trial only looks it up.

    :func:`calibrate` fits each pruned sub-layer on the inputs the model's own calibrated layers below give it,
    which costs a forward pass and a least-squares system per pruned sub-layer of every candidate. Here the inputs
    are the teacher's (its hidden states on ``input_ids``), the same for every candidate, so per sub-layer one Gram
    matrix of its units' outputs serves every size: the units kept at size k are the k that contribute the most, and
    their least-squares system is a sub-matrix of the whole one. A trial then costs a few cached solves, and the
    export recalibrates its chosen models bottom-up with :func:`calibrate`.

    >>> # calib = TeacherCalibration(teacher, space, corpus.train[:128])
    >>> # calib.apply(model, arch)   # model: extracted from SuperNet.from_teacher(..., reorder="units")
    """

    @torch.no_grad()
    def __init__(self, teacher, space: SearchSpace, input_ids: torch.Tensor, *, ridge: float = DEFAULT_RIDGE,
                 batch_size: int = 32):
        if input_ids.dim() != 2 or len(input_ids) == 0:
            raise ValueError(f"calibration needs token ids of shape (rows, seq_len), got {tuple(input_ids.shape)}")
        self.space, self.ridge = space, ridge
        teacher = teacher.eval()
        act = teacher.encoder.layer[0].intermediate.intermediate_act_fn
        self._subs = {(layer, kind): _Sublayer(kind, source, space.head_size, act)
                      for layer, source in enumerate(teacher.encoder.layer) for kind in ("mha", "ffn")}
        self._grams: dict[tuple[int, str], torch.Tensor] = {}
        self._solved: dict[tuple[int, str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        for ids in input_ids.split(batch_size):
            states = teacher(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
            for layer, source in enumerate(teacher.encoder.layer):
                x = states.hidden_states[layer]  # (B, T, H): the input of layer's attention
                mha = self._subs[layer, "mha"]
                norm = source.attention.output.LayerNorm
                y = torch.nn.functional.layer_norm(x + mha.features(x).view(x.shape[0], x.shape[1], -1)
                                                   @ mha.w_out.T.float() + mha.b_out.float(), (x.shape[-1],),
                                                   norm.weight, norm.bias, norm.eps)  # the input of layer's FFN
                for kind, inputs in (("mha", x), ("ffn", y)):
                    gram = self._subs[layer, kind].gram(inputs)
                    self._grams[layer, kind] = self._grams.get((layer, kind), 0) + gram

    def solve(self, layer: int, kind: str, units: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(kept units, output weights and bias (k + 1, H))`` of teacher ``layer``'s ``kind`` sub-layer at
        ``units`` heads or neurons."""
        key = (layer, kind, units)
        if key not in self._solved:
            sub, gram = self._subs[layer, kind], self._grams[layer, kind]
            keep = torch.argsort(-sub.scores(gram), stable=True)[:units]
            rows = torch.cat([sub.columns(keep), torch.tensor([len(gram) - 1])])  # the kept columns and the bias
            self._solved[key] = (keep, _solve(gram[rows][:, rows], gram[rows] @ sub.target, self.ridge))
        return self._solved[key]

    @torch.no_grad()
    def apply(self, model, arch: Arch) -> int:
        """Load the calibrated weights of every pruned sub-layer of ``model`` (extracted from ``arch``, made of the
        teacher's own sub-layers, as :func:`calibrate` needs); returns how many it changed."""
        changed = 0
        for n, kind, t_layer in teacher_sublayers(model, arch, self.space):
            layer, sub = model.encoder.layer[n], self._subs[t_layer, kind]
            kept = (layer.intermediate.dense.out_features if kind == "ffn"
                    else layer.self.query.out_features // self.space.head_size)
            if kept < sub.units:
                sub.load(layer, *self.solve(t_layer, kind, kept))
                changed += 1
        return changed

