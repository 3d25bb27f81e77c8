"""The teacher's states at the block boundaries, computed once per training sequence and kept on disk.

Block-wise training pays one teacher forward per batch (``block_batches``); over several epochs of one corpus,
and over several runs on it, that forward is recomputed for the same sequences. With ``train.teacher_cache``
each training sequence is MLM-masked once (from the run's seed: the same sequence always gets the same masking,
where the uncached trainer draws a new one at every visit) and the teacher's hidden states at the block
boundaries of that masked input are stored in fp16 in a memory-mapped file, filled as sequences are first
drawn. Later visits, later epochs and later runs on the same corpus read them instead of running the teacher.

::

    CACHE/teacher-states/<key>/
      meta.json        what the key hashes (teacher, corpus, sequence length, masking, boundaries)
      ids.npy          (N, T) int32, the masked input of every training sequence
      states.npy       (N, B, T, H) float16, the teacher's state at the end of each of the B blocks
      filled.npy       (N,) bool, rows of states.npy that are complete (replaced atomically after they are)

The key is a hash of the teacher's weights, the corpus's token ids, the sequence length, the masking settings
and seed, and the block boundaries: a change to any of them is another directory. A row counts only once
``filled.npy`` says so, and ``filled.npy`` is replaced only after the row's states are flushed, so a process
killed mid-write leaves rows that are recomputed, never half-written ones that are read.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..data import mask_tokens
from ..io import atomic_dir, atomic_write_bytes
from ..space import SearchSpace
from .blockwise import BlockBatch

__all__ = ["TeacherStateCache", "cache_key"]

logger = logging.getLogger(__name__)


def _tensor_digest(tensors: Sequence[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(teacher: torch.nn.Module, space: SearchSpace, train_ids: torch.Tensor, *, mlm_probability: float,
              seed: int, mask_token_id: int, special_ids: Sequence[int], vocab_size: int) -> dict:
    """What the cache's contents depend on (``meta.json``); its sha256 names the cache directory."""
    return {
        "teacher": _tensor_digest([p for _, p in sorted(teacher.state_dict().items())]),
        "corpus": _tensor_digest([train_ids]),
        "sequences": int(train_ids.shape[0]),
        "seq_len": int(train_ids.shape[1]),
        "boundaries": list(space.teacher_boundaries),
        "hidden_size": int(space.teacher.hidden_size),
        "masking": {"mlm_probability": mlm_probability, "seed": seed, "mask_token_id": mask_token_id,
                    "special_ids": sorted(int(i) for i in special_ids), "vocab_size": vocab_size},
        "dtype": "float16",
    }


class TeacherStateCache:
    """The teacher-state cache of one corpus and teacher under ``root`` (created on first use)."""

    def __init__(self, root: str | os.PathLike, teacher: torch.nn.Module, space: SearchSpace,
                 train_ids: torch.Tensor, *, mlm_probability: float, seed: int, mask_token_id: int,
                 special_ids: Sequence[int], vocab_size: int, device: torch.device | str = "cpu"):
        self.teacher, self.space, self.device = teacher, space, torch.device(device)
        self.meta = cache_key(teacher, space, train_ids, mlm_probability=mlm_probability, seed=seed,
                              mask_token_id=mask_token_id, special_ids=special_ids, vocab_size=vocab_size)
        digest = hashlib.sha256(json.dumps(self.meta, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(root) / digest
        if not (self.path / "meta.json").is_file():
            self._create(train_ids)
        if json.loads((self.path / "meta.json").read_text()) != self.meta:
            raise ValueError(f"{self.path} holds another teacher-state cache (its meta.json differs): remove it")
        self.ids = torch.from_numpy(np.load(self.path / "ids.npy").astype(np.int64))
        self.states = np.load(self.path / "states.npy", mmap_mode="r+")
        self.filled = np.load(self.path / "filled.npy")
        #: rows read from the cache and rows computed by the teacher in this process
        self.hits = self.misses = 0

    def _create(self, train_ids: torch.Tensor) -> None:
        m = self.meta["masking"]
        corrupted, _ = mask_tokens(train_ids, vocab_size=m["vocab_size"], mask_token_id=m["mask_token_id"],
                                   special_ids=m["special_ids"], generator=torch.Generator().manual_seed(m["seed"]),
                                   mlm_probability=m["mlm_probability"])
        n, t = train_ids.shape
        shape = (n, len(self.meta["boundaries"]), t, self.meta["hidden_size"])
        logger.info("teacher-state cache %s: %d sequences, %.0f MB when full", self.path, n,
                    np.prod(shape) * 2 / 2**20)
        with atomic_dir(self.path) as tmp:
            np.save(tmp / "ids.npy", corrupted.numpy().astype(np.int32))
            np.lib.format.open_memmap(tmp / "states.npy", mode="w+", dtype=np.float16, shape=shape).flush()
            np.save(tmp / "filled.npy", np.zeros(n, dtype=bool))
            (tmp / "meta.json").write_text(json.dumps(self.meta, indent=2, sort_keys=True) + "\n")

    @torch.no_grad()
    def _fill(self, rows: np.ndarray) -> None:
        ids = self.ids[rows].to(self.device)
        mask = torch.ones_like(ids)
        hidden = self.teacher(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids),
                              output_hidden_states=True).hidden_states
        states = torch.stack([hidden[end] for end in self.meta["boundaries"]], dim=1)  # (b, B, T, H)
        self.states[rows] = states.to(torch.float16).cpu().numpy()
        self.states.flush()
        self.filled[rows] = True
        buffer = io.BytesIO()
        np.save(buffer, self.filled)
        atomic_write_bytes(self.path / "filled.npy", buffer.getvalue())  # only after the rows are on disk

    def batches(self, indices: Sequence[int]) -> list[BlockBatch]:
        """:func:`~nasbert.training.blockwise.block_batches` of these training sequences, from the cache (the
        teacher runs only for sequences not cached yet)."""
        rows = np.asarray(indices)
        missing = np.unique(rows[~self.filled[rows]])
        if len(missing):
            self._fill(missing)
        self.misses += len(missing)
        self.hits += len(rows) - len(missing)
        ids = self.ids[rows].to(self.device)
        mask, types = torch.ones_like(ids), torch.zeros_like(ids)
        states = torch.from_numpy(np.asarray(self.states[rows]))
        states = states.to(self.device, torch.float32)
        out, inputs = [], ids
        for n in range(len(self.meta["boundaries"])):
            out.append(BlockBatch(inputs, states[:, n], mask, types))
            inputs = states[:, n]
        return out
