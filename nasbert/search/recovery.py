"""How far a pruned candidate recovers under a short distillation: a proxy for how well it will fine-tune.

A calibrated candidate's distance to the teacher measures what it keeps with no training at all. Two candidates of one
size can be equally far from the teacher and still differ in how quickly training moves them back: one that keeps a
coherent stack of the teacher's bottom layers adapts its top layer in a few steps, one made of scattered thin
sub-layers does not. Fine-tuning is training from the same start, so the distance *after* a few distillation steps is
the signal with a reason to rank candidates of one budget. Minitron (Muralidharan et al. 2024, "Compact Language
Models via Pruning and Knowledge Distillation", sec. 3) finds the same for pruned LLMs: the zero-shot loss of pruned
candidates ranks them poorly, their loss after a short retraining ranks them as the full retraining does.

>>> states = teacher_states(teacher, rows, batch_size=16)                  # doctest: +SKIP
>>> recovered_cosine(model, rows, states, batches, teacher, steps=100)     # doctest: +SKIP
0.83
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from ..training.evaluation import state_cosine

__all__ = ["recovered_cosine", "teacher_states"]


@torch.no_grad()
def teacher_states(teacher, input_ids: torch.Tensor, *, batch_size: int = 16) -> torch.Tensor:
    """The teacher's final hidden states of ``input_ids`` (rows, seq_len), computed once for every candidate's
    short distillation: (rows, seq_len, hidden), float32."""
    teacher.eval()
    out = []
    for start in range(0, len(input_ids), batch_size):
        ids = input_ids[start : start + batch_size]
        out.append(teacher(input_ids=ids, attention_mask=torch.ones_like(ids),
                           token_type_ids=torch.zeros_like(ids)).last_hidden_state.float())
    return torch.cat(out)


def recovered_cosine(model, input_ids: torch.Tensor, targets: torch.Tensor, batches: Sequence[dict], teacher, *,
                     steps: int = 100, batch_size: int = 16, lr: float = 1e-4, seed: int = 0) -> float:
    """The mean per-token cosine of a copy of ``model`` to the teacher's final states on ``batches`` after ``steps``
    AdamW steps minimising ``1 - cosine`` to ``targets`` (the teacher's states of ``input_ids``,
    :func:`teacher_states`), on batches of ``batch_size`` rows drawn with ``seed``. ``model`` itself is untouched.

    Defaults are priors, not tuned: 1e-4 is the learning rate BERT-size models are distilled with; 100 steps of 16
    rows is the short retraining Minitron ranks by, scaled to a CPU trial (a few seconds to a few tens of seconds)."""
    if len(input_ids) != len(targets):
        raise ValueError(f"recovered_cosine: {len(input_ids)} rows of input ids but {len(targets)} rows of teacher "
                         "states; compute the states with teacher_states() on the same rows")
    if steps < 0 or batch_size < 1:
        raise ValueError(f"recovered_cosine: steps must be >= 0 and batch_size >= 1 (got {steps}, {batch_size})")
    student = copy.deepcopy(model)
    student.eval()  # no dropout: the proxy is deterministic given the seed
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randint(len(input_ids), (batch_size,), generator=generator)
        ids = input_ids[rows]
        out = student(input_ids=ids, attention_mask=torch.ones_like(ids),
                      token_type_ids=torch.zeros_like(ids)).last_hidden_state
        loss = 1.0 - torch.nn.functional.cosine_similarity(out, targets[rows], dim=-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return state_cosine(student, teacher, None, batches)
