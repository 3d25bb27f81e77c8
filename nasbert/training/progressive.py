"""Progressive knowledge transfer (MobileBERT, Sun et al. 2020, section 3.5), as a training mode of the supernet.

Block-wise training (NAS-BERT) feeds every student block the *teacher's* state at the previous boundary, so all
blocks train at once and independently. Progressive transfer trains them one after another instead:

* **stage n** (one per block): block n reads what the student's own blocks 0..n-1 produce (frozen, under paths
  sampled for the step) and is trained to match the teacher at its boundary, with two terms: the feature-map
  MSE (as block-wise training) and the KL divergence between the teacher's attention distributions and those of
  every attention op of the block (``mha`` and bottleneck ops);
* **final stage**: whole-model distillation, every block trained at once on a sampled chained architecture, with
  the same two terms summed over all blocks.

The unit of a stage is a block, because block boundaries are where the student's width meets the teacher's
(through the block's output adapter). A space with one block per teacher layer (``num_blocks`` = the teacher's
layers) makes the stages MobileBERT's, layer by layer.

Layers and heads: slot s of the chain sits at teacher layer ``s // (num_slots / L)``, and its attention is
compared with that layer's. Student and teacher may have different head counts (a width-256 ``mha`` has 8 heads
of 32, the teacher's layer 12), so the distributions are averaged over heads before the KL, on both sides.

Budget: ``train.steps`` is the number of updates *each block* gets, as in block-wise training. A stage has
``steps * (1 - progressive_final_fraction)`` updates and the final stage the rest, so the loop runs
``num_blocks * stage + final`` steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..space import Arch, BlockArch, SearchSpace
from ..supernet import SuperNet
from .blockwise import masked_mse

__all__ = ["ProgressiveSchedule", "TeacherTargets", "attention_kl", "teacher_targets", "stage_loss",
           "whole_model_loss"]


@dataclass(frozen=True)
class ProgressiveSchedule:
    """Which stage a step of the progressive loop belongs to."""

    num_blocks: int
    steps: int
    final_fraction: float

    @property
    def stage_steps(self) -> int:
        return max(1, round(self.steps * (1.0 - self.final_fraction)))

    @property
    def final_steps(self) -> int:
        return max(0, self.steps - self.stage_steps)

    @property
    def total_steps(self) -> int:
        """Steps of the whole loop."""
        return self.num_blocks * self.stage_steps + self.final_steps

    def stage(self, step: int) -> int | None:
        """The block trained at ``step`` (0-based), or None in the final, whole-model stage."""
        block = step // self.stage_steps
        return block if block < self.num_blocks else None

    @property
    def updates_per_block(self) -> int:
        """Optimiser updates of each block over the whole loop (the length of its schedule): ``steps``."""
        return self.stage_steps + self.final_steps


@dataclass
class TeacherTargets:
    """One teacher forward: the hidden states at the block boundaries and the head-averaged attention
    distribution of each teacher layer."""

    states: list[torch.Tensor]  # per block, (B, T, H)
    attention: list[torch.Tensor]  # per teacher layer, (B, T, T)
    attention_mask: torch.Tensor  # (B, T)
    token_type_ids: torch.Tensor  # (B, T)


@torch.no_grad()
def teacher_targets(teacher, space: SearchSpace, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> TeacherTargets:
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    if getattr(teacher.config, "_attn_implementation", "eager") != "eager":
        teacher.set_attn_implementation("eager")  # fused kernels return no attention distributions; same numbers
    out = teacher(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                  output_hidden_states=True, output_attentions=True)
    return TeacherTargets(states=[out.hidden_states[end] for end in space.teacher_boundaries],
                          attention=[a.mean(dim=1) for a in out.attentions],
                          attention_mask=attention_mask, token_type_ids=token_type_ids)


def attention_kl(student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of head-averaged attention distributions, averaged over real query tokens.

    ``student`` (B, heads, T, T); ``teacher`` (B, T, T), already averaged over its heads.
    """
    p_student = student.mean(dim=1).clamp_min(1e-12)  # (B, T, T)
    p_teacher = teacher.clamp_min(1e-12)
    kl = (teacher * (p_teacher.log() - p_student.log())).sum(-1)  # (B, T)
    keep = attention_mask.bool()
    return kl[keep].mean()


def _teacher_layer(space: SearchSpace, slot: int) -> int:
    return slot // (space.num_slots // space.teacher.num_hidden_layers)


def _attention_term(space: SearchSpace, probs: Sequence[tuple[int, torch.Tensor]], targets: TeacherTargets,
                    device) -> torch.Tensor:
    if not probs:
        return torch.zeros((), device=device)
    terms = [attention_kl(p, targets.attention[_teacher_layer(space, slot)], targets.attention_mask)
             for slot, p in probs]
    return torch.stack(terms).mean()


def stage_loss(supernet: SuperNet, block: int, paths: Sequence[BlockArch], input_ids: torch.Tensor,
               targets: TeacherTargets, *, attention_weight: float) -> tuple[torch.Tensor, float, float]:
    """Stage ``block``'s loss: blocks 0..block-1 (frozen, eval mode, under ``paths[:block]``) feed block
    ``block`` (under ``paths[block]``). Returns (loss, feature MSE, attention KL)."""
    mask, types = targets.attention_mask, targets.token_type_ids
    was_training = supernet.training
    h = input_ids
    if block:
        supernet.eval()
        with torch.no_grad():
            for m in range(block):
                h = supernet.forward_block(m, h, mask, types, path=paths[m])  # (B, T, H)
        supernet.train(was_training)
    probs: list = []
    out = supernet.forward_block(block, h, mask, types, path=paths[block],
                                 attention_probs=probs if attention_weight else None)
    mse = masked_mse(out, targets.states[block], mask)
    kl = _attention_term(supernet.space, probs, targets, out.device)
    return mse + attention_weight * kl, mse.item(), kl.item()


def whole_model_loss(supernet: SuperNet, arch: Arch, input_ids: torch.Tensor, targets: TeacherTargets, *,
                     attention_weight: float) -> tuple[torch.Tensor, float, float]:
    """The final stage's loss: the chained ``arch``, MSE at every block boundary (mean over blocks) plus the
    attention KL of every attention op. Returns (loss, feature MSE, attention KL)."""
    mask = targets.attention_mask
    probs: list = []
    _, states = supernet(input_ids, mask, targets.token_type_ids, arch=arch, output_block_states=True,
                         attention_probs=probs if attention_weight else None)
    mse = torch.stack([masked_mse(s, t, mask) for s, t in zip(states, targets.states)]).mean()
    kl = _attention_term(supernet.space, probs, targets, mse.device)
    return mse + attention_weight * kl, mse.item(), kl.item()
