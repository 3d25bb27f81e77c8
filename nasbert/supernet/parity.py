"""Checking that the supernet, under the teacher's architecture, reproduces the teacher it was built from.

With the teacher's own embeddings (a plain token table and LayerNorm) the whole supernet is compared with the
teacher's last layer. A space whose embeddings are not the teacher's (MobileBERT's factorised table, or NoNorm
after it) cannot reproduce the teacher's embedding output, so there each block's layers are checked alone on
the teacher's own states: block 0's on the teacher's embedding output (put in the supernet's channel order),
block n's on the teacher's state at the end of block n - 1. Either way at least one comparison is made; a
check with nothing to compare raises rather than passing.

>>> error = check_teacher_parity(supernet, teacher, tokenizer)  # doctest: +SKIP
"""

from __future__ import annotations

import math

import torch

from ..data import builtin_documents
from ..modeling.modeling_nasbert import additive_attention_mask

__all__ = ["PARITY_ATOL", "TeacherParityError", "check_teacher_parity", "teacher_parity"]

#: largest |supernet - teacher| accepted, in the teacher's float32 hidden states
PARITY_ATOL = 1e-4


class TeacherParityError(RuntimeError):
    """The supernet under the teacher's architecture does not reproduce the teacher, or nothing was compared."""


def teacher_parity(supernet, teacher, tokenizer, *, max_docs: int = 8, seq_len: int = 128) -> float:
    """Largest |supernet(teacher_arch) - teacher| over the real tokens of a few built-in documents."""
    space = supernet.space
    seq_len = min(seq_len, space.teacher.max_position_embeddings)
    batch = tokenizer(builtin_documents()[:max_docs], padding=True, truncation=True, max_length=seq_len,
                      return_tensors="pt")
    mask = batch["attention_mask"]
    keep = mask.bool()
    if not keep.any():
        raise TeacherParityError("no tokens to compare the supernet with the teacher on")
    types = batch.get("token_type_ids")
    paths = space.teacher_arch().blocks
    with torch.no_grad():
        if space.factorized_embedding_size is None and space.embedding_norm == "layernorm":
            expected = teacher(**batch).last_hidden_state
            got = supernet(batch["input_ids"], mask, types, arch=space.teacher_arch())
            return float((got - expected)[keep].abs().max())
        hidden = teacher(**batch, output_hidden_states=True).hidden_states
        bounds = (0, *space.teacher_boundaries)
        errors = [_block0_layers_error(supernet, paths[0], hidden[0], hidden[bounds[1]], mask)]
        errors += [float((supernet.forward_block(n, hidden[bounds[n]], mask, types, path=paths[n])
                          - hidden[bounds[n + 1]])[keep].abs().max()) for n in range(1, space.num_blocks)]
    return max(errors)


def _block0_layers_error(supernet, path, embedded: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """Block 0's layers (not its embeddings) on the teacher's embedding output, against the teacher's state at
    the end of block 0. The output adapter maps the supernet's channels to the teacher's (``y = h W^T + b``, a
    permutation when freshly built); the teacher's embedding output is mapped back through its inverse."""
    adapter = supernet.out_adapters[0]
    w = adapter.weight[:, : path.width]
    y = (embedded - adapter.bias).reshape(-1, embedded.shape[-1])
    h = torch.linalg.solve(w, y.T).T.reshape(*embedded.shape[:-1], path.width)  # h w^T = y
    additive = additive_attention_mask(mask, supernet.embeddings.word_embeddings.weight.dtype)
    h = supernet._run_layers(0, path, h, additive, mask)
    got = adapter(h, in_features=path.width)
    return float((got - target)[mask.bool()].abs().max())


def check_teacher_parity(supernet, teacher, tokenizer, *, atol: float = PARITY_ATOL, **kwargs) -> float:
    """:func:`teacher_parity`, raising :class:`TeacherParityError` above ``atol`` (or on NaN); returns it."""
    error = teacher_parity(supernet, teacher, tokenizer, **kwargs)
    if not (math.isfinite(error) and error <= atol):
        raise TeacherParityError(
            f"the supernet does not reproduce the teacher (max |diff| = {error:.2e}, more than {atol:.0e}); the "
            "teacher's layout is not supported, please report it with the teacher's config.json"
        )
    return error
