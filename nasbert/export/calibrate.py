"""Calibrating the pruned FFNs of a teacher cut on unlabelled text: which neurons to keep, and their output weights.

A teacher cut that prunes an FFN (:mod:`nasbert.export.cuts`) keeps the neurons that the weight-magnitude criterion
ranks first (:func:`nasbert.supernet.importance.neuron_order`) and their output weights as the teacher has them. On
real inputs neither is the best the teacher's own weights allow. Calibration, bottom-up over the cut's pruned FFNs,
each on the inputs the calibrated layers below give it:

1. **Neurons.** Keep the ``k`` neurons whose output contributes the most on the calibration tokens,
   ``||W_out[:, j]|| * rms(g_j)`` with ``g = act(x W_in^T + b_in)`` the whole FFN's activations (the structured form
   of Wanda's ``|W| * ||X||``; FLAP ranks by the same product with the variance).
2. **Output weights.** Refit ``W_out`` and ``b_out`` of the kept neurons by ridge-regularised least squares, so that
   on the same tokens the pruned FFN reproduces the whole FFN's output ``g W_out^T + b_out`` (the layer-wise
   reconstruction of Kwon et al., 2022, "A Fast Post-Training Pruning Framework for Transformers", with the whole
   output matrix refitted instead of one scale per neuron).

The input weights of the kept neurons stay the teacher's; the model keeps its shapes, so its latency does not
change. On the built-in teacher the relative error of the final states against the unpruned cut falls from 0.21 to
0.04 for the bottom 2 layers with both FFNs halved (docs/benchmarks.md).

>>> # model = SuperNet.from_teacher(space, teacher, reorder="units").extract(arch, drop_identity_adapters=True)
>>> # report = calibrate_cut(model, arch, space, teacher, corpus.train[:512])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch

from ..modeling.modeling_nasbert import feed_forward, residual_norm
from ..space import Arch, SearchSpace

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_RIDGE", "FfnCalibration", "calibrate_cut", "pruned_ffns"]

#: the ridge added to the least-squares system, as a fraction of the mean of its diagonal
DEFAULT_RIDGE = 1e-3


@dataclass(frozen=True)
class FfnCalibration:
    """What calibrating one pruned FFN did: the teacher layer it comes from, the neurons kept of that layer's, and
    the relative squared error of its output against the whole FFN's on the calibration tokens, before (the
    magnitude-ranked neurons, the teacher's output weights) and after."""

    op: int  # index of the layer in model.encoder.layer
    teacher_layer: int
    neurons: int
    teacher_neurons: int
    tokens: int
    error_before: float
    error_after: float

    def to_dict(self) -> dict:
        return asdict(self)


def pruned_ffns(model, arch: Arch, space: SearchSpace, teacher) -> list[tuple[int, int]]:
    """``(op index in model.encoder.layer, teacher layer)`` of every FFN of a teacher cut with fewer neurons than
    its teacher layer. Raises ValueError for a model that is not a teacher cut at the teacher's width without
    adapters (what :meth:`SuperNet.extract` gives with ``drop_identity_adapters`` from a supernet built with
    ``SuperNet.from_teacher(space, teacher, reorder="units")``)."""
    width = space.teacher.hidden_size
    if getattr(model.config, "adapters", True) is not False or any(b.width != width for b in arch.blocks):
        raise ValueError("calibration needs a teacher cut at the teacher's width without adapters: extract it from "
                         "SuperNet.from_teacher(space, teacher, reorder=\"units\") with drop_identity_adapters=True")
    layers = list(model.encoder.layer)
    ops = [(slot, op) for b, block in enumerate(arch.blocks) for slot, op in zip(space.block_slots(b), block.layers)]
    if len(ops) != len(layers):
        raise ValueError(f"the model has {len(layers)} layers, the architecture {len(ops)}: pass the arch it was "
                         "extracted from")
    found = []
    for n, (slot, op) in enumerate(ops):
        teacher_layer = slot // 2
        if op.startswith("ffn"):
            if slot % 2 != 1 or teacher_layer >= len(teacher.encoder.layer):
                raise ValueError(f"{arch}: the FFN in slot {slot} does not hold a teacher FFN's weights; only "
                                 "teacher cuts (nasbert.export.cuts.cut_arch) can be calibrated")
            if layers[n].intermediate.dense.out_features < \
                    teacher.encoder.layer[teacher_layer].intermediate.dense.out_features:
                found.append((n, teacher_layer))
    return found


class _Stop(Exception):
    pass


def _inputs(model, op: int, input_ids: torch.Tensor, batch_size: int, unpruned: dict | None = None):
    """The inputs of ``model.encoder.layer[op]`` on ``input_ids`` (every token real), batch by batch, as (tokens,
    width) float64 matrices. ``unpruned``: {op index: the teacher layer whose whole FFN replaces that pruned FFN}
    (those below ``op`` matter), to get the inputs the unpruned cut gives that layer instead."""
    captured = []

    def hook(_module, args):
        captured.append(args[0])
        raise _Stop

    def whole(layer):
        def replace(module, args, _output):
            x = args[0]
            branch = feed_forward(x, layer.intermediate.dense.weight, layer.intermediate.dense.bias,
                                  layer.output.dense.weight, layer.output.dense.bias, act=module.act)
            norm = module.output.LayerNorm
            return residual_norm(x, branch, norm.weight, norm.bias, eps=norm.eps, dropout=0.0, training=False)
        return replace

    handles = [model.encoder.layer[op].register_forward_pre_hook(hook)]
    handles += [model.encoder.layer[n].register_forward_hook(whole(layer)) for n, layer in (unpruned or {}).items()
                if n < op]
    try:
        for start in range(0, len(input_ids), batch_size):
            ids = input_ids[start : start + batch_size]
            try:
                model(input_ids=ids, attention_mask=torch.ones_like(ids))
            except _Stop:
                pass
            x = captured.pop()
            yield x.reshape(-1, x.shape[-1]).double()
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def calibrate_cut(model, arch: Arch, space: SearchSpace, teacher, input_ids: torch.Tensor, *,
                  ridge: float = DEFAULT_RIDGE, batch_size: int = 32, neurons: str = "output",
                  refit: bool = True, target: str = "ffn") -> list[FfnCalibration]:
    """Calibrate every pruned FFN of the teacher cut ``model`` (extracted from ``arch``) in place, bottom-up, on
    ``input_ids`` (N, T) of unlabelled text with no padding (e.g. rows of a :class:`TokenizedCorpus`), against
    the FFNs of ``teacher`` (a ``BertModel``, whose hidden channels the cut keeps). Returns one record per FFN;
    none for a cut without a pruned FFN.

    ``neurons="magnitude"`` keeps the neurons the weight magnitudes rank first (those the cut has) and
    ``refit=False`` the teacher's output weights: the two steps can be measured apart (bench/calibration.py).

    ``target``: what the refitted FFN reproduces on the cut's inputs: ``"ffn"``, the whole FFN's output on those
    inputs; ``"states"``, what the unpruned cut has after that FFN (before its LayerNorm), so that the refit also
    makes up for what the pruned layers below changed."""
    if input_ids.dim() != 2 or len(input_ids) == 0:
        raise ValueError(f"calibration needs token ids of shape (rows, seq_len), got {tuple(input_ids.shape)}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    if neurons not in ("output", "magnitude"):
        raise ValueError(f"neurons must be 'output' or 'magnitude', got {neurons!r}")
    if target not in ("ffn", "states"):
        raise ValueError(f"target must be 'ffn' or 'states', got {target!r}")
    todo = pruned_ffns(model, arch, space, teacher)
    unpruned = {op: teacher.encoder.layer[layer] for op, layer in todo}
    was_training = model.training
    model.eval()
    out = []
    for op, layer in todo:
        ffn, source = model.encoder.layer[op], teacher.encoder.layer[layer]
        w_in, b_in = source.intermediate.dense.weight.double(), source.intermediate.dense.bias.double()
        w_out, b_out = source.output.dense.weight.double(), source.output.dense.bias.double()  # (H, I), (H,)
        act = ffn.act
        k = ffn.intermediate.dense.out_features

        def whole(x):
            g = act(x @ w_in.T + b_in)  # (tokens, I)
            return g, g @ w_out.T + b_out

        inputs = list(_inputs(model, op, input_ids, batch_size))  # the layers below run once per FFN
        # what the FFN's branch should give on each batch of inputs (kept only for "states": its inputs differ)
        drifts = [r + whole(r)[1] - x for r, x in zip(_inputs(model, op, input_ids, batch_size, unpruned), inputs)] \
            if target == "states" else None

        def goal(i, full):  # full: the whole FFN's output on the i-th batch of inputs
            return drifts[i] if drifts is not None else full

        tokens = sum(len(x) for x in inputs)
        power = torch.zeros(w_in.shape[0], dtype=torch.float64)
        for x in inputs:
            power += whole(x)[0].pow(2).sum(0)
        score = w_out.norm(dim=0) * (power / tokens).sqrt() if neurons == "output" else \
            w_in.norm(dim=1) * w_out.norm(dim=0)  # importance.neuron_order's criterion
        keep = torch.argsort(-score, stable=True)[:k]  # most important first, as the supernet orders units

        solution = torch.cat([w_out[:, keep].T, b_out[None]])  # (k + 1, H): the teacher's output weights
        if refit:
            gram = torch.zeros(k + 1, k + 1, dtype=torch.float64)
            cross = torch.zeros(k + 1, w_out.shape[0], dtype=torch.float64)
            for i, x in enumerate(inputs):
                g, full = whole(x)
                a = torch.cat([g[:, keep], torch.ones(len(g), 1, dtype=g.dtype)], dim=1)
                gram += a.T @ a
                cross += a.T @ goal(i, full)
            gram += ridge * gram.diagonal().mean() * torch.eye(k + 1, dtype=gram.dtype)
            solution = torch.linalg.solve(gram, cross)

        old = [p.detach().double() for p in (ffn.intermediate.dense.weight, ffn.intermediate.dense.bias,
                                             ffn.output.dense.weight, ffn.output.dense.bias)]
        errors, norm = torch.zeros(2, dtype=torch.float64), 0.0
        for i, x in enumerate(inputs):
            g, full = whole(x)
            y = goal(i, full)
            before = act(x @ old[0].T + old[1]) @ old[2].T + old[3]
            after = g[:, keep] @ solution[:-1] + solution[-1]
            errors += torch.stack([(before - y).pow(2).sum(), (after - y).pow(2).sum()])
            norm += float(y.pow(2).sum())
        dtype = ffn.output.dense.weight.dtype
        ffn.intermediate.dense.weight.copy_(w_in[keep].to(dtype))
        ffn.intermediate.dense.bias.copy_(b_in[keep].to(dtype))
        ffn.output.dense.weight.copy_(solution[:-1].T.to(dtype))
        ffn.output.dense.bias.copy_(solution[-1].to(dtype))
        record = FfnCalibration(op=op, teacher_layer=layer, neurons=k, teacher_neurons=w_in.shape[0], tokens=tokens,
                                error_before=float(errors[0]) / norm, error_after=float(errors[1]) / norm)
        logger.info("calibrated layer %d's FFN (%d of %d neurons) on %d tokens: relative error %.4f -> %.4f", layer,
                    k, record.teacher_neurons, tokens, record.error_before, record.error_after)
        out.append(record)
    model.train(was_training)
    return out
