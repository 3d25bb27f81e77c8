"""Block-wise distillation of the supernet (NAS-BERT section 3.2).

One teacher forward per batch (on MLM-corrupted input) gives the hidden states at every block boundary. Student
block n reads the teacher's state at the end of block n-1 (block 0 reads the token ids) and is trained with MSE
to produce the teacher's state at the end of block n, under a path sampled for this step. Blocks do not depend
on each other's outputs, so their losses are independent and can be computed anywhere (``ray_blocks.py`` runs
them as parallel actors).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..modeling.modeling_nasbert import additive_attention_mask
from ..space import BlockArch, SearchSpace, op_params
from ..supernet import SuperNet
from .config import TrainConfig

__all__ = ["BlockBatch", "BlockLearner", "DataParallel", "block_batches", "block_loss", "score_paths",
           "sandwich_paths", "make_optimizer"]


@dataclass
class BlockBatch:
    """What block n needs from one teacher forward: its input, its target, and the masks (all on one device)."""

    inputs: torch.Tensor  # (B, T) token ids for block 0, (B, T, H) teacher hidden states otherwise
    target: torch.Tensor  # (B, T, H)
    attention_mask: torch.Tensor  # (B, T)
    token_type_ids: torch.Tensor  # (B, T)


@torch.no_grad()
def block_batches(teacher, space: SearchSpace, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  token_type_ids: torch.Tensor | None = None) -> list[BlockBatch]:
    """One teacher forward -> one :class:`BlockBatch` per block."""
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    hidden = teacher(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                     output_hidden_states=True).hidden_states  # L + 1 tensors of (B, T, H)
    out, start = [], None
    for n, end in enumerate(space.teacher_boundaries):
        inputs = input_ids if n == 0 else hidden[start]
        out.append(BlockBatch(inputs, hidden[end], attention_mask, token_type_ids))
        start = end
    return out


def masked_mse(output: torch.Tensor, target: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real (non-padding) tokens."""
    keep = attention_mask.bool()
    return F.mse_loss(output[keep], target[keep])


def block_loss(supernet: SuperNet, block: int, path: BlockArch, batch: BlockBatch) -> torch.Tensor:
    out = supernet.forward_block(block, batch.inputs, batch.attention_mask, batch.token_type_ids, path=path)
    return masked_mse(out, batch.target, batch.attention_mask)


def _path_params(space: SearchSpace, path: BlockArch) -> int:
    return sum(op_params(op, path.width, ffn_ratio=space.ffn_ratio, head_size=space.head_size) for op in path.layers)


def sandwich_paths(space: SearchSpace, candidates: Sequence[BlockArch]) -> tuple[BlockArch, BlockArch]:
    """The largest and the smallest non-empty candidate by parameters (ties: the first in order)."""
    non_empty = [p for p in candidates if p.layers] or list(candidates)
    sizes = [_path_params(space, p) for p in non_empty]
    return non_empty[int(np.argmax(sizes))], non_empty[int(np.argmin(sizes))]


@torch.no_grad()
def score_paths(supernet: SuperNet, block: int, paths: Sequence[BlockArch], batches: Sequence[BlockBatch]) -> list[float]:
    """Validation MSE of each path of ``block``, averaged over ``batches``.

    Paths that share a prefix share its computation: a path ``(a, b, identity, identity)`` is the prefix
    ``(a, b)`` of ``(a, b, c, d)``, so scoring all paths of a block costs one layer per distinct prefix instead
    of one per layer of every path (about 4x fewer layer evaluations on a full block).
    """
    was_training = supernet.training
    supernet.eval()
    slots = list(supernet.space.block_slots(block))
    totals = {i: 0.0 for i in range(len(paths))}
    for batch in batches:
        additive = additive_attention_mask(batch.attention_mask, batch.target.dtype)
        by_width: dict[int, list[int]] = {}
        for i, p in enumerate(paths):
            by_width.setdefault(p.width, []).append(i)
        for width, members in by_width.items():
            if block == 0:
                h0 = supernet.embeddings(batch.inputs, batch.token_type_ids, width)
            else:
                h0 = supernet.in_adapters[block - 1](batch.inputs, out_features=width)
            cache: dict[tuple[str, ...], torch.Tensor] = {(): h0}
            for i in sorted(members, key=lambda i: paths[i].layers):  # prefixes come before their extensions
                layers = paths[i].layers
                for depth in range(len(layers)):
                    key = layers[: depth + 1]
                    if key not in cache:
                        cache[key] = supernet.slots[slots[depth]](cache[layers[:depth]], layers[depth], additive,
                                                                  batch.attention_mask)
                out = supernet.out_adapters[block](cache[layers], in_features=width)
                totals[i] += float(masked_mse(out, batch.target, batch.attention_mask))
                # Only prefixes of later (lexicographically larger) paths can still be needed.
                for key in [k for k in cache if k and k != layers[: len(k)]]:
                    del cache[key]
    supernet.train(was_training)
    return [totals[i] / len(batches) for i in range(len(paths))]


def make_optimizer(named_parameters, config: TrainConfig, total_steps: int):
    """AdamW (no decay on biases and LayerNorms) and a warm-up + linear / cosine / constant schedule."""
    decay, no_decay = [], []
    for name, p in named_parameters:
        (no_decay if p.dim() < 2 or "LayerNorm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:  # the fused kernel is about 10x faster on CPU (a step updates every sliced tensor in full)
        optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), fused=True)
    except (RuntimeError, TypeError):
        optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas))

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        if config.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass(frozen=True)
class DataParallel:
    """This process's place among ``world`` data-parallel replicas of the trainer, joined by a
    ``torch.distributed`` process group (Ray Train sets it up: gloo on CPU, NCCL on GPU).

    Every replica draws the same batch indices, masking and paths (same seed); each runs the teacher and the
    blocks on its own equal share of the batch's rows, and the gradients are averaged before the optimiser step.
    The losses are means over tokens and every row has the same number of tokens, so the average of the shards'
    gradients is the whole batch's: a step is the single-process step, up to the order of floating-point sums.
    """

    rank: int
    world: int

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is not in [0, {self.world})")

    def shard(self, rows):
        """This replica's rows of a batch (every ``world``-th, from ``rank``)."""
        return rows[self.rank :: self.world]

    def average_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Replace each tensor by its mean over the replicas, in place (one all-reduce)."""
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.zeros(0)
        # Replicas that diverged (other paths, so other tensors) would make gloo abort the process; say so instead.
        size = torch.tensor([flat.numel(), -flat.numel()], device=flat.device)
        dist.all_reduce(size, op=dist.ReduceOp.MAX)
        if int(size[0]) != flat.numel() or -int(size[1]) != flat.numel():
            raise RuntimeError(f"data-parallel replica {self.rank} of {self.world} averages {flat.numel()} values, "
                               f"another {int(size[0]) if int(size[0]) != flat.numel() else -int(size[1])}: the "
                               "replicas diverged (they must draw the same paths from the same seed)")
        if not tensors:
            return
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def mean(self, value: float, device: torch.device | str = "cpu") -> float:
        out = torch.tensor([value], dtype=torch.float64 if torch.device(device).type == "cpu" else torch.float32,
                           device=device)
        self.average_([out])
        return float(out)


class BlockLearner:
    """Trains one block: its own parameters (``SuperNet.block_parameters``), optimiser, schedule and clipping.

    The in-process trainer holds one per block over a shared supernet; the Ray trainer holds one per actor over
    the actor's own copy. Either way a step is the same computation. With ``data_parallel``, the gradients (and
    the reported loss) are averaged over the replicas before clipping.
    """

    def __init__(self, supernet: SuperNet, block: int, config: TrainConfig, *,
                 data_parallel: DataParallel | None = None):
        self.supernet, self.block, self.config = supernet, block, config
        self.data_parallel = data_parallel
        named = supernet.block_parameters(block)
        self.parameters = [p for _, p in named]
        self.optimizer, self.scheduler = make_optimizer(named, config, config.steps)

    def step(self, batch: BlockBatch, paths: Sequence[BlockArch]) -> float:
        """One optimiser step on the mean loss of ``paths``. Returns that loss."""
        self.supernet.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for path in paths:
            loss = block_loss(self.supernet, self.block, path, batch) / len(paths)
            loss.backward()  # one path at a time: activations of only one path are alive
            total += loss.item()
        if self.data_parallel is not None:  # every replica ran the same paths, so the same parameters have grads
            self.data_parallel.average_([p.grad for p in self.parameters if p.grad is not None])
            total = self.data_parallel.mean(total, self.parameters[0].device)
        torch.nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return total

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
