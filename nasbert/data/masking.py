"""Masked-LM corruption and a resumable batch order over the packed corpus rows.

>>> import torch
>>> ids = torch.tensor([[2, 10, 11, 12, 13, 3]])  # [CLS] ... [SEP]
>>> g = torch.Generator().manual_seed(0)
>>> corrupted, labels = mask_tokens(ids, vocab_size=99, mask_token_id=4, special_ids=[0, 1, 2, 3, 4], generator=g)
>>> bool(((labels == -100) | (labels == ids)).all())
True
>>> batches = BatchIterator(num_rows=10, batch_size=4, seed=0)
>>> len(batches.next_indices())
4
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["IGNORE_INDEX", "BatchIterator", "mask_tokens"]

#: The label of a position that is not predicted (PyTorch's cross-entropy default ``ignore_index``).
IGNORE_INDEX = -100


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    vocab_size: int,
    mask_token_id: int,
    special_ids: Sequence[int],
    generator: torch.Generator,
    mlm_probability: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masked-LM corruption (Devlin et al. 2019, section 3.1). Returns ``(corrupted_ids, labels)``.

    Each position whose token is not in ``special_ids`` is chosen with probability ``mlm_probability``; a chosen
    token becomes ``[MASK]`` 80% of the time, a random non-special token 10% and stays unchanged 10%. ``labels``
    hold the original token at chosen positions and ``-100`` elsewhere. All randomness comes from ``generator``
    (on any device; the results move to ``input_ids``' device), so equal generator states give equal results.
    ``input_ids`` is not modified.

    >>> ids = torch.full((2, 8), 20)
    >>> a = mask_tokens(ids, vocab_size=99, mask_token_id=4, special_ids=[0, 4],
    ...                 generator=torch.Generator().manual_seed(1), mlm_probability=0.5)
    >>> b = mask_tokens(ids, vocab_size=99, mask_token_id=4, special_ids=[0, 4],
    ...                 generator=torch.Generator().manual_seed(1), mlm_probability=0.5)
    >>> all(torch.equal(x, y) for x, y in zip(a, b))
    True
    """
    if not 0.0 < mlm_probability <= 1.0:
        raise ValueError(f"mlm_probability must be in (0, 1], got {mlm_probability}")
    excluded = sorted(set(int(i) for i in special_ids) | {int(mask_token_id)})
    if not 0 <= mask_token_id < vocab_size or any(not 0 <= i < vocab_size for i in excluded):
        raise ValueError(f"mask_token_id {mask_token_id} and special_ids {list(special_ids)} must lie in "
                         f"[0, vocab_size={vocab_size})")
    if len(excluded) >= vocab_size:
        raise ValueError("every token of the vocabulary is special: there is no token to draw at random")

    device, shape = input_ids.device, input_ids.shape
    special = torch.isin(input_ids, torch.tensor([int(i) for i in special_ids], dtype=input_ids.dtype, device=device))
    chosen = (torch.rand(shape, generator=generator, device=generator.device).to(device) < mlm_probability) & ~special
    action = torch.rand(shape, generator=generator, device=generator.device).to(device)
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[excluded] = False
    candidates = allowed.nonzero().squeeze(1).to(device)  # (V - specials,)
    draws = torch.randint(len(candidates), shape, generator=generator, device=generator.device).to(device)

    corrupted = input_ids.clone()
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)  # the last 10% keep their token
    corrupted[to_mask] = mask_token_id
    corrupted[to_random] = candidates[draws[to_random]].to(corrupted.dtype)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return corrupted, labels


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 64-bit seed for one epoch's permutation, well mixed from ``(seed, epoch)``."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0])


class BatchIterator:
    """An infinite, deterministic, resumable order over ``num_rows`` rows, in batches of row indices.

    Each epoch is a fresh permutation drawn from a generator seeded by ``(seed, epoch)``. With ``drop_last``
    the ``num_rows % batch_size`` rows left at the end of an epoch's permutation are skipped (other rows each
    epoch), so every batch has ``batch_size`` rows. :meth:`state_dict` / :meth:`load_state_dict` resume at the
    exact batch where the iterator stopped.

    >>> it = BatchIterator(num_rows=10, batch_size=4, seed=3)
    >>> first = [it.next_indices() for _ in range(3)]
    >>> state = it.state_dict()
    >>> later = it.next_indices()
    >>> resumed = BatchIterator(num_rows=10, batch_size=4, seed=3)
    >>> resumed.load_state_dict(state)
    >>> torch.equal(resumed.next_indices(), later)
    True
    """

    def __init__(self, num_rows: int, batch_size: int, *, seed: int, drop_last: bool = True) -> None:
        for key, value in (("num_rows", num_rows), ("batch_size", batch_size), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{key} must be an integer, got {value!r}")
        if num_rows < 1 or batch_size < 1 or seed < 0:
            raise ValueError(f"need num_rows >= 1, batch_size >= 1 and seed >= 0, got {num_rows}, {batch_size}, {seed}")
        if drop_last and batch_size > num_rows:
            raise ValueError(f"batch_size={batch_size} is larger than the {num_rows} rows, and drop_last leaves no "
                             "batch: lower batch_size, pass drop_last=False, or use a larger corpus")
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # rows of this epoch's permutation already handed out
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, permutation), cached

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.num_rows, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    @property
    def _epoch_rows(self) -> int:
        return (self.num_rows // self.batch_size) * self.batch_size if self.drop_last else self.num_rows

    def permutation(self, epoch: int) -> torch.Tensor:
        """The row order of ``epoch`` (int64, ``num_rows``), the same on every machine for equal seeds."""
        if self._order is None or self._order[0] != epoch:
            g = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
            self._order = (epoch, torch.randperm(self.num_rows, generator=g))
        return self._order[1]

    def next_indices(self) -> torch.Tensor:
        """The next batch of row indices (int64), moving on to the next epoch when this one is done."""
        order = self.permutation(self.epoch)
        indices = order[self.position:self.position + self.batch_size].clone()
        self.position += len(indices)
        if self.position >= self._epoch_rows:
            self.epoch += 1
            self.position = 0
        return indices

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        return self.next_indices()

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "num_rows": self.num_rows, "batch_size": self.batch_size,
                "drop_last": self.drop_last, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`; the state must come from an iterator with the same settings."""
        missing = {"seed", "num_rows", "batch_size", "drop_last", "epoch", "position"} - set(state)
        if missing:
            raise ValueError(f"batch iterator state lacks {', '.join(sorted(missing))}")
        for key in ("seed", "num_rows", "batch_size", "drop_last"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"batch iterator state has {key}={state[key]!r} but this iterator has {getattr(self, key)!r}: "
                    "resume with the same corpus, batch size and seed"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self._epoch_rows:
            raise ValueError(f"batch iterator state has epoch={epoch}, position={position}, out of range")
        self.epoch, self.position = epoch, position
