"""Whole-model evaluation of a sub-network against the teacher: its final hidden states compared with the
teacher's (MSE, the distillation's loss; per-token cosine, the export's ranking), and the validation batches
they are computed on. Used by the post-search distillation, the export, the quality report and the Ray search.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data import mask_tokens
from ..space import Arch
from ..supernet import SuperNet

__all__ = ["TeacherStates", "plain_batches", "state_cosine", "validation_batches", "whole_model_loss"]


class TeacherStates:
    """The teacher's final hidden states per batch, computed once: pass it where a teacher is asked for, to compare
    many models with the teacher on the same batches (the export compares every candidate on the same two sets).

    >>> states = TeacherStates(teacher)                       # doctest: +SKIP
    >>> [state_cosine(m, states, None, batches) for m in models]  # doctest: +SKIP
    """

    def __init__(self, teacher, batches: Sequence[dict] = ()) -> None:
        self.teacher = teacher
        self._states: dict[int, tuple[dict, torch.Tensor]] = {}  # id(batch) -> (the batch, held: ids stay unique)
        for batch in batches:  # computed now: a copy for another process holds them without the teacher
            self.final_states(batch)

    @torch.no_grad()
    def final_states(self, batch: dict) -> torch.Tensor:
        key = id(batch)
        if key not in self._states:
            if self.teacher is None:
                raise ValueError("these teacher states were copied without the teacher: only the batches they were "
                                 "made with (TeacherStates(teacher, batches)) can be compared")
            self._states[key] = (batch, self.teacher(**batch).last_hidden_state)
        return self._states[key][1]

    def __getstate__(self) -> dict:
        """A copy for another process (a Ray worker) holds the states, not the teacher: a Hugging Face model that
        has returned its hidden states carries forward hooks that cannot be pickled."""
        return {"teacher": None, "_states": list(self._states.values())}

    def __setstate__(self, state: dict) -> None:
        # the batches were copied with the states, as the same objects the copy's caller holds: key them anew
        self.teacher, self._states = state["teacher"], {id(b): (b, s) for b, s in state["_states"]}


def _final_states(supernet: SuperNet, teacher, arch: Arch | None, batches: Sequence[dict]):
    """Per batch: the stitched sub-network's final hidden states and the teacher's (a model, or
    :class:`TeacherStates`), at the real tokens. With ``arch=None``, ``supernet`` is a standalone model (a
    :class:`NasBertModel`, e.g. a calibrated teacher cut)."""
    supernet.eval()
    for batch in batches:
        target = teacher.final_states(batch) if isinstance(teacher, TeacherStates) else \
            teacher(**batch).last_hidden_state
        out = supernet(**batch).last_hidden_state if arch is None else \
            supernet(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], arch=arch)
        keep = batch["attention_mask"].bool()
        yield out[keep], target[keep]


@torch.no_grad()
def whole_model_loss(supernet: SuperNet, teacher, arch: Arch | None, batches: Sequence[dict]) -> float:
    """MSE between the stitched sub-network's final hidden states and the teacher's, over real tokens."""
    losses = [float(torch.nn.functional.mse_loss(out, target))
              for out, target in _final_states(supernet, teacher, arch, batches)]
    return sum(losses) / len(losses)


@torch.no_grad()
def state_cosine(supernet: SuperNet, teacher, arch: Arch | None, batches: Sequence[dict]) -> float:
    """Mean per-token cosine similarity between the stitched sub-network's final hidden states and the teacher's,
    over real tokens: the export's ranking proxy (blind to the scale of the states, which MSE is not)."""
    cosines = [float(torch.nn.functional.cosine_similarity(out, target, dim=-1).mean())
               for out, target in _final_states(supernet, teacher, arch, batches)]
    return sum(cosines) / len(cosines)


def plain_batches(valid: torch.Tensor, *, batch_size: int, n_batches: int) -> list[dict]:
    """The first validation sequences as they are (no masking): what the cosine proxy is computed on."""
    ids = valid[: batch_size * n_batches]
    return [{"input_ids": ids[i : i + batch_size], "attention_mask": torch.ones_like(ids[i : i + batch_size]),
             "token_type_ids": torch.zeros_like(ids[i : i + batch_size])} for i in range(0, len(ids), batch_size)]


def validation_batches(valid: torch.Tensor, tokenizer, *, batch_size: int, n_batches: int, seed: int,
                       mlm_probability: float = 0.15) -> list[dict]:
    """Fixed, MLM-corrupted validation batches (as in training), for whole-model evaluation."""
    generator = torch.Generator().manual_seed(seed + 777)
    out = []
    for start in range(0, min(len(valid), batch_size * n_batches), batch_size):
        ids = valid[start : start + batch_size]
        corrupted, _ = mask_tokens(ids, vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.mask_token_id,
                                   special_ids=sorted(set(tokenizer.all_special_ids)), generator=generator,
                                   mlm_probability=mlm_probability)
        out.append({"input_ids": corrupted, "attention_mask": torch.ones_like(corrupted),
                    "token_type_ids": torch.zeros_like(corrupted)})
    return out
