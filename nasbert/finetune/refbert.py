"""RefBERT reference samples (Wang et al., "RefBERT: Compressing BERT by Referencing to Pre-computed
Representations", IJCNN 2021, arXiv 2106.08898).

A compressed student forgets part of what its teacher knew. RefBERT gives some of it back at inference time
without running the teacher: for each input it retrieves a *reference sample*, the most similar other sample of
a pool, and feeds the teacher's representation of that sample, computed once in advance, to the student. Here:

* **The pool** (:class:`ReferencePool`) is built once from a list of texts (a task's training set, or any
  corpus) with a teacher (any Hugging Face BERT: the built-in one, a local directory, or a fine-tuned classifier
  directory, whose encoder is used). It keeps, per sample, the teacher's last-layer token states of the first
  ``max_reference_tokens`` tokens ([CLS] included; float16) and a retrieval index.
* **Retrieval** is TF-IDF cosine over WordPiece token ids, because it must be cheap at inference (running the
  teacher on the input would defeat the compression). Special tokens and padding carry no weight; term
  frequencies are raw counts; idf is the smoothed ``ln((1 + N) / (1 + df)) + 1``; pool rows and queries are
  L2-normalised. The best row wins, ties go to the lowest pool index; a query that shares no token with any
  row scores 0 everywhere and so gets the lowest allowed index (row 0 unless excluded). The index is the pool's
  sparse rows (CSR), turned into per-token postings at load time, so a query costs the postings of its tokens.
* **Exclusion** (training): with ``exclude`` a query never retrieves the pool row given for it, nor any row
  whose token sequence is identical to its own (compared by a 64-bit hash of the non-padding token ids, special
  tokens included). Without it, a training sentence would reference itself (or its duplicate) and the student
  would learn to copy the teacher's view of the very input, which it never gets at inference.
* **The student** (``NasBertConfig.reference_size``) projects the reference states to the width of its first
  ``mha`` layer (``reference_proj``), and that layer attends over its input's keys and values followed by the
  references' (queries only from the input); ``reference_mask`` masks padded reference tokens.
  See :mod:`nasbert.modeling.modeling_nasbert`.

On disk a pool is a folder, written atomically::

    references.safetensors   states (sum of lengths, H) float16, packed row after row; lengths (N,);
                             idf (V,); indptr (N+1,), indices, values: the L2-normalised TF-IDF rows (CSR);
                             sequence_hash (N,): the identity of each row's token sequence
    references.json          format version, teacher, hidden size, max tokens, tokenisation length, number of
                             samples, vocabulary size and digest, corpus, build time, sha256 of the tensors

>>> pool = ReferencePool.build(["a good film", "a bad film", "dull"], teacher="builtin")  # doctest: +SKIP
>>> pool.save("refs/sst2")  # doctest: +SKIP
>>> pool = ReferencePool.load("refs/sst2", hidden_size=model.config.reference_size)  # doctest: +SKIP
>>> states, mask = pool.lookup(batch["input_ids"], batch["attention_mask"])  # doctest: +SKIP
>>> logits = model(**batch, reference_states=states, reference_mask=mask).logits  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..io import atomic_dir, atomic_write_json, free_output

__all__ = ["ReferencePool", "ReferencePoolError", "Retrieved", "build_reference_pool", "copy_pool", "vocab_digest"]

logger = logging.getLogger(__name__)

FORMAT = "nasbert-references"
FORMAT_VERSION = 1
STATES_FILE = "references.safetensors"
META_FILE = "references.json"
_TENSORS = ("states", "lengths", "idf", "indptr", "indices", "values", "sequence_hash")
_BUILD_HINT = "build one with: nasbert references build --task TASK --teacher builtin --out DIR"


class ReferencePoolError(ValueError):
    """A reference pool cannot be built, loaded or used as asked (the message says what to change)."""


class Retrieved(NamedTuple):
    """The reference chosen for each query: its pool index and its TF-IDF cosine similarity."""

    indices: np.ndarray  # (B,) int64
    scores: np.ndarray  # (B,) float64


def vocab_digest(tokenizer) -> str:
    """A digest of a tokenizer's vocabulary (token -> id), to tell whether a pool's token ids mean the same."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()


def _sequence_hash(tokens: np.ndarray) -> int:
    """A stable 64-bit identity of a token sequence (the same in every process, unlike ``hash``)."""
    digest = hashlib.blake2b(np.ascontiguousarray(tokens, dtype="<i8").tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _as_numpy(x: Any, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


class ReferencePool:
    """Teacher states of reference samples and the TF-IDF index that finds them (see the module docstring).

    Build it with :meth:`build`, write it with :meth:`save`, read it with :meth:`load`; :meth:`lookup` gives
    the student's ``reference_states`` and ``reference_mask`` for a batch of token ids.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]):
        self.meta = dict(meta)
        self.states = tensors["states"]  # (sum of lengths, H) float16
        self.lengths = tensors["lengths"]  # (N,) int64
        self.idf = tensors["idf"]  # (V,) float32, 0 for special tokens
        self.indptr = tensors["indptr"]  # (N + 1,) int64
        self.indices = tensors["indices"]  # (nnz,) int64 token ids, sorted within a row
        self.values = tensors["values"]  # (nnz,) float32, each row L2-normalised
        self.sequence_hash = tensors["sequence_hash"]  # (N,) int64
        self.offsets = torch.zeros(len(self.lengths) + 1, dtype=torch.int64)
        self.offsets[1:] = torch.cumsum(self.lengths, 0)
        self._postings: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._by_hash: dict[int, list[int]] | None = None

    # ------------------------------------------------------------------------------------------ properties

    @property
    def num_samples(self) -> int:
        return int(self.lengths.shape[0])

    def __len__(self) -> int:
        return self.num_samples

    @property
    def hidden_size(self) -> int:
        return int(self.meta["hidden_size"])

    @property
    def max_reference_tokens(self) -> int:
        return int(self.meta["max_reference_tokens"])

    @property
    def max_length(self) -> int:
        """Tokens the pool's samples were truncated to (for the teacher and the index)."""
        return int(self.meta["max_length"])

    @property
    def vocab_size(self) -> int:
        return int(self.idf.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes the pool's tensors take in memory (the postings built at load time not counted)."""
        return sum(t.numel() * t.element_size() for t in self._tensors().values())

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in _TENSORS}

    def __repr__(self) -> str:
        return (f"ReferencePool({self.num_samples} samples, hidden {self.hidden_size}, up to "
                f"{self.max_reference_tokens} tokens, teacher {self.meta.get('teacher')!r})")

    # ------------------------------------------------------------------------------------------ build

    @classmethod
    def build(
        cls,
        texts: Sequence[str | tuple[str, str]],
        *,
        teacher: Any = None,
        tokenizer: Any = None,
        max_reference_tokens: int = 32,
        max_length: int = 128,
        batch_size: int = 64,
        corpus: str = "",
        progress: bool = True,
    ) -> ReferencePool:
        """Run the teacher once over ``texts`` (strings, or ``(text_a, text_b)`` pairs, tokenised as the
        fine-tuning does: ``[CLS] a [SEP] b [SEP]``) and index them.

        ``teacher`` is ``None`` / ``"builtin"`` (the built-in MiniLM-L6-H384), a local Hugging Face BERT directory
        (a fine-tuned classifier's encoder is used), a hub id, or a loaded BERT module (then pass ``tokenizer``).
        Each sample keeps its first ``max_reference_tokens`` token states; samples are truncated to
        ``max_length`` tokens before the teacher reads them. ``corpus`` says where the texts came from (kept in
        ``references.json``).

        >>> pool = ReferencePool.build(["a good film", "a dull film"], max_reference_tokens=16)  # doctest: +SKIP
        """
        if max_reference_tokens < 1:
            raise ReferencePoolError(f"max_reference_tokens must be at least 1, got {max_reference_tokens}")
        if max_length < 2:
            raise ReferencePoolError(f"max_length must be at least 2 (room for [CLS] and [SEP]), got {max_length}")
        if batch_size < 1:
            raise ReferencePoolError(f"batch_size must be at least 1, got {batch_size}")
        texts = list(texts)
        if not texts:
            raise ReferencePoolError("a reference pool needs at least one text; got none")
        pairs = [isinstance(t, (tuple, list)) for t in texts]
        if any(pairs) and not all(pairs):
            raise ReferencePoolError("texts mix single texts and (text_a, text_b) pairs: pass one kind")
        start = time.perf_counter()
        model, tokenizer, source = _load_encoder(teacher, tokenizer)
        positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if positions is not None and max_length > positions:  # the teacher cannot read more
            max_length = int(positions)
        first = [t[0] if p else t for t, p in zip(texts, pairs)]
        second = [t[1] for t in texts] if all(pairs) else None
        enc = tokenizer(first, second, truncation=True, max_length=max_length, return_token_type_ids=True)
        ids = [np.asarray(x, dtype=np.int64) for x in enc["input_ids"]]
        types = [np.asarray(x, dtype=np.int64) for x in enc["token_type_ids"]]
        vocab = len(tokenizer)
        special = sorted({int(i) for i in tokenizer.all_special_ids})

        # Teacher states of the first R tokens, batches sorted by length (less padding), rows kept in order.
        R, N = max_reference_tokens, len(ids)
        kept: list[torch.Tensor | None] = [None] * N
        order = np.argsort([len(x) for x in ids], kind="stable")
        pad = tokenizer.pad_token_id or 0
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            for s in tqdm(range(0, N, batch_size), desc="reference states", unit="batch", disable=not progress):
                rows = order[s : s + batch_size]
                T = max(len(ids[i]) for i in rows)
                input_ids = torch.full((len(rows), T), pad, dtype=torch.long)
                token_types = torch.zeros((len(rows), T), dtype=torch.long)
                mask = torch.zeros((len(rows), T), dtype=torch.long)
                for r, i in enumerate(rows):
                    input_ids[r, : len(ids[i])] = torch.from_numpy(ids[i])
                    token_types[r, : len(ids[i])] = torch.from_numpy(types[i])
                    mask[r, : len(ids[i])] = 1
                h = model(input_ids=input_ids, attention_mask=mask, token_type_ids=token_types).last_hidden_state
                for r, i in enumerate(rows):
                    kept[i] = h[r, : min(len(ids[i]), R)].to(torch.float16)  # (n, H)
        model.train(was_training)

        # TF-IDF rows: raw counts x smoothed idf, special tokens weighted 0, each row L2-normalised.
        df = np.zeros(vocab, dtype=np.int64)
        uniques = []
        for x in ids:
            if x.size and (x.min() < 0 or x.max() >= vocab):
                raise ReferencePoolError(f"the tokenizer produced ids outside its vocabulary of {vocab}")
            tokens, counts = np.unique(x, return_counts=True)
            uniques.append((tokens, counts))
            df[tokens] += 1
        # Rounded to the stored float32 first, so that queries (which read the stored idf) weigh tokens alike.
        idf = (np.log((1.0 + N) / (1.0 + df)) + 1.0).astype(np.float32).astype(np.float64)
        idf[special] = 0.0
        indptr = np.zeros(N + 1, dtype=np.int64)
        indices, values = [], []
        for n, (tokens, counts) in enumerate(uniques):
            tokens, weights = _tfidf(tokens, counts, idf)
            indices.append(tokens)
            values.append(weights)
            indptr[n + 1] = indptr[n] + tokens.size
        tensors = {
            "states": torch.cat(kept, 0).contiguous(),  # type: ignore[arg-type]
            "lengths": torch.tensor([k.shape[0] for k in kept], dtype=torch.int64),  # type: ignore[union-attr]
            "idf": torch.from_numpy(idf.astype(np.float32)),
            "indptr": torch.from_numpy(indptr),
            "indices": torch.from_numpy(np.concatenate(indices).astype(np.int64)),
            "values": torch.from_numpy(np.concatenate(values).astype(np.float32)),
            "sequence_hash": torch.tensor([_sequence_hash(x) for x in ids], dtype=torch.int64),
        }
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "teacher": source,
            "hidden_size": int(tensors["states"].shape[1]), "max_reference_tokens": R, "max_length": max_length,
            "num_samples": N, "num_tokens": int(tensors["lengths"].sum()), "pairs": bool(second is not None),
            "vocab_size": vocab, "vocab_sha256": vocab_digest(tokenizer), "special_ids": special,
            "corpus": corpus, "build_seconds": round(time.perf_counter() - start, 2),
        }
        logger.info("reference pool: %d samples, %d token states of width %d from %s in %.1f s", N,
                    meta["num_tokens"], meta["hidden_size"], source, meta["build_seconds"])
        return cls(tensors, meta)

    # ------------------------------------------------------------------------------------------ files

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the pool to ``directory`` atomically (it appears whole or not at all)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            save_file({k: v.contiguous() for k, v in self._tensors().items()}, str(tmp / STATES_FILE),
                      metadata={"format": FORMAT})
            meta = {**self.meta, "sha256": _file_sha256(tmp / STATES_FILE),
                    "bytes": (tmp / STATES_FILE).stat().st_size}
            atomic_write_json(tmp / META_FILE, meta)
        self.meta = meta
        logger.info("saved the reference pool (%d samples, %.1f MB) to %s", self.num_samples, meta["bytes"] / 1e6,
                    directory)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, *, hidden_size: int | None = None,
             tokenizer: Any = None) -> ReferencePool:
        """Read a pool written by :meth:`save`; with ``hidden_size`` (a model's ``config.reference_size``) or
        ``tokenizer``, check that the pool fits them (:meth:`check`)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        if not directory.is_dir():
            raise ReferencePoolError(f"reference pool {str(directory)!r} does not exist or is not a directory: "
                                     f"{_BUILD_HINT}")
        missing = [f for f in (META_FILE, STATES_FILE) if not (directory / f).is_file()]
        if missing:
            raise ReferencePoolError(f"{str(directory)!r} is not a reference pool: {', '.join(missing)} missing; "
                                     f"{_BUILD_HINT}")
        try:
            meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ReferencePoolError(f"{directory / META_FILE} is not valid JSON ({e}): rebuild the pool; "
                                     f"{_BUILD_HINT}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ReferencePoolError(f"{directory / META_FILE} does not describe a nasbert reference pool: "
                                     f"{_BUILD_HINT}")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ReferencePoolError(f"{str(directory)!r} has pool format version {meta.get('format_version')!r}; "
                                     f"this nasbert reads version {FORMAT_VERSION}: rebuild the pool")
        try:
            tensors = load_file(str(directory / STATES_FILE))
        except (SafetensorError, OSError, ValueError) as e:
            raise ReferencePoolError(f"cannot read {directory / STATES_FILE} ({e}): the file is damaged; rebuild "
                                     "the pool") from None
        _validate(tensors, meta, directory)
        pool = cls(tensors, meta)
        pool.check(hidden_size=hidden_size, tokenizer=tokenizer, where=str(directory))
        return pool

    def check(self, *, hidden_size: int | None = None, tokenizer: Any = None, where: str | None = None) -> None:
        """Raise :class:`ReferencePoolError` unless the pool holds ``hidden_size``-wide states and its token ids
        are ``tokenizer``'s."""
        name = f"reference pool {where!r}" if where else "the reference pool"
        if hidden_size is not None and int(hidden_size) != self.hidden_size:
            raise ReferencePoolError(
                f"{name} holds {self.hidden_size}-wide teacher states, but the model reads {hidden_size}-wide "
                f"references (config.reference_size): build the pool with the teacher the model was trained with "
                f"(this one came from {self.meta.get('teacher')!r})")
        if tokenizer is not None:
            size, digest = len(tokenizer), vocab_digest(tokenizer)
            if size != self.vocab_size or digest != self.meta.get("vocab_sha256"):
                raise ReferencePoolError(
                    f"{name} was indexed with another vocabulary ({self.vocab_size} tokens) than the model's "
                    f"tokenizer ({size} tokens{', other ids' if size == self.vocab_size else ''}): build the pool "
                    "with a teacher that shares the student's tokenizer")

    # ------------------------------------------------------------------------------------------ retrieval

    def _index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-token postings (the CSR rows transposed): ``ptr`` (V + 1,), ``rows``, ``values``."""
        if self._postings is None:
            indices, values = self.indices.numpy(), self.values.numpy().astype(np.float64)
            rows = np.repeat(np.arange(self.num_samples, dtype=np.int64), np.diff(self.indptr.numpy()))
            order = np.argsort(indices, kind="stable")  # by token, then by row
            ptr = np.zeros(self.vocab_size + 1, dtype=np.int64)
            ptr[1:] = np.cumsum(np.bincount(indices, minlength=self.vocab_size))
            self._postings = (ptr, rows[order], values[order])
        return self._postings

    def _rows_with_hash(self, value: int) -> list[int]:
        if self._by_hash is None:
            self._by_hash = {}
            for row, h in enumerate(self.sequence_hash.tolist()):
                self._by_hash.setdefault(h, []).append(row)
        return self._by_hash.get(value, [])

    def retrieve(self, input_ids: Any, attention_mask: Any = None, *, exclude: Any = None) -> Retrieved:
        """The most similar pool row of each query (TF-IDF cosine over its non-padding tokens).

        ``input_ids`` (B, T) and ``attention_mask`` (B, T), as tensors or arrays. ``exclude`` (B,) marks training
        queries: query b never retrieves row ``exclude[b]`` (-1: no row) nor any row with its exact token sequence.
        Ties go to the lowest index; a query that shares no token with the pool gets the lowest allowed row.
        """
        ids = _as_numpy(input_ids, np.int64)
        if ids.ndim != 2:
            raise ReferencePoolError(f"input_ids must be (batch, tokens), got shape {ids.shape}")
        mask = np.ones_like(ids) if attention_mask is None else _as_numpy(attention_mask, np.int64)
        if mask.shape != ids.shape:
            raise ReferencePoolError(f"attention_mask {mask.shape} and input_ids {ids.shape} differ in shape")
        B, N = ids.shape[0], self.num_samples
        if exclude is not None:
            exclude = _as_numpy(exclude, np.int64).reshape(-1)
            if exclude.shape[0] != B:
                raise ReferencePoolError(f"exclude has {exclude.shape[0]} entries for {B} queries")
            if exclude.size and (exclude.max() >= N or exclude.min() < -1):
                raise ReferencePoolError(f"exclude holds pool indices outside -1..{N - 1}")
        ptr, post_rows, post_values = self._index()
        idf = self.idf.numpy().astype(np.float64)
        indices = np.empty(B, dtype=np.int64)
        scores = np.empty(B, dtype=np.float64)
        for b in range(B):
            seq = ids[b][mask[b] != 0]
            if seq.size and (seq.min() < 0 or seq.max() >= self.vocab_size):
                raise ReferencePoolError(f"query {b} holds token ids outside the pool's vocabulary of "
                                         f"{self.vocab_size}: use the tokenizer the pool was built with")
            tokens, weights = _tfidf(*np.unique(seq, return_counts=True), idf)
            spans = [slice(ptr[t], ptr[t + 1]) for t in tokens]
            rows = np.concatenate([post_rows[s] for s in spans]) if spans else np.zeros(0, np.int64)
            contrib = np.concatenate([post_values[s] * w for s, w in zip(spans, weights)]) if spans else np.zeros(0)
            row_scores = np.bincount(rows, contrib, minlength=N).astype(np.float64)  # (N,) cosine similarities
            if exclude is not None:
                if exclude[b] >= 0:
                    row_scores[exclude[b]] = -np.inf
                row_scores[self._rows_with_hash(_sequence_hash(seq))] = -np.inf
            best = int(np.argmax(row_scores))  # the first maximum: ties go to the lowest index
            if row_scores[best] == -np.inf:
                raise ReferencePoolError(f"query {b}: every pool row is excluded (the pool holds {N} samples, all "
                                         "the query itself or identical to it): build a larger pool")
            indices[b], scores[b] = best, row_scores[best]
        return Retrieved(indices, scores)

    def gather(self, indices: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored states of pool rows ``indices`` (B,): ``reference_states`` (B, R, H) float32 and
        ``reference_mask`` (B, R) int64, R the longest of them (shorter ones padded with zeros, mask 0)."""
        idx = _as_numpy(indices, np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_samples):
            raise ReferencePoolError(f"pool indices must be in 0..{self.num_samples - 1}")
        lengths = self.lengths[torch.from_numpy(idx)] if idx.size else torch.zeros(0, dtype=torch.int64)
        R = int(lengths.max()) if idx.size else 1
        states = torch.zeros(len(idx), R, self.hidden_size, dtype=torch.float32)
        mask = torch.zeros(len(idx), R, dtype=torch.int64)
        for b, (i, n) in enumerate(zip(idx.tolist(), lengths.tolist())):
            start = int(self.offsets[i])
            states[b, :n] = self.states[start : start + n].float()
            mask[b, :n] = 1
        return states, mask

    def lookup(self, input_ids: Any, attention_mask: Any = None, *,
               exclude: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``reference_states`` (B, R, H) float32 and ``reference_mask`` (B, R) int64 for a batch of queries:
        :meth:`retrieve`, then :meth:`gather`."""
        return self.gather(self.retrieve(input_ids, attention_mask, exclude=exclude).indices)


def _tfidf(tokens: np.ndarray, counts: np.ndarray, idf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The L2-normalised TF-IDF weights of one sequence's distinct tokens (zero-weight tokens dropped)."""
    weights = counts.astype(np.float64) * idf[tokens]
    keep = weights > 0
    tokens, weights = tokens[keep], weights[keep]
    norm = float(np.sqrt(np.sum(weights * weights)))
    return tokens, (weights / norm if norm > 0 else weights)


def _validate(tensors: dict[str, torch.Tensor], meta: dict, directory: Path) -> None:
    """Shapes, dtypes and cross-references of a loaded pool; a damaged one is a clear error, not a crash later."""
    where = str(directory / STATES_FILE)

    def fail(what: str) -> None:
        raise ReferencePoolError(f"{where} is damaged or does not match {META_FILE} ({what}): rebuild the pool")

    missing = [k for k in _TENSORS if k not in tensors]
    if missing:
        fail(f"no tensor {', '.join(missing)}")
    dtypes = {"states": torch.float16, "lengths": torch.int64, "idf": torch.float32, "indptr": torch.int64,
              "indices": torch.int64, "values": torch.float32, "sequence_hash": torch.int64}
    for key, dtype in dtypes.items():
        if tensors[key].dtype != dtype:
            fail(f"{key} is {tensors[key].dtype}, expected {dtype}")
    for key in ("hidden_size", "max_reference_tokens", "max_length", "num_samples", "vocab_size"):
        if not isinstance(meta.get(key), int):
            fail(f"{META_FILE} has no integer {key!r}")
    N, H, V = meta["num_samples"], meta["hidden_size"], meta["vocab_size"]
    lengths, indptr, indices = tensors["lengths"], tensors["indptr"], tensors["indices"]
    if tensors["states"].ndim != 2 or tensors["states"].shape[1] != H:
        fail(f"states {tuple(tensors['states'].shape)}, expected (tokens, {H})")
    if lengths.shape != (N,) or tensors["sequence_hash"].shape != (N,) or indptr.shape != (N + 1,):
        fail(f"{N} samples expected")
    if N and (int(lengths.min()) < 1 or int(lengths.max()) > meta["max_reference_tokens"]):
        fail(f"lengths outside 1..{meta['max_reference_tokens']}")
    if int(lengths.sum()) != tensors["states"].shape[0]:
        fail("the lengths do not add up to the stored states")
    if tensors["idf"].shape != (V,):
        fail(f"idf of {tuple(tensors['idf'].shape)}, expected ({V},)")
    nnz = indices.shape[0]
    if (indptr[0] != 0 or int(indptr[-1]) != nnz or tensors["values"].shape != (nnz,)
            or bool((indptr[1:] < indptr[:-1]).any())):
        fail("the CSR index is inconsistent")
    if nnz and (int(indices.min()) < 0 or int(indices.max()) >= V):
        fail(f"token ids outside the vocabulary of {V}")


def _load_encoder(teacher: Any, tokenizer: Any):
    """``(model, tokenizer, source)`` for a teacher name / path or a loaded module."""
    if isinstance(teacher, torch.nn.Module):
        if tokenizer is None:
            raise ReferencePoolError("a teacher passed as a module needs its tokenizer: pass tokenizer=")
        source = getattr(getattr(teacher, "config", None), "_name_or_path", "") or type(teacher).__name__
        return teacher, tokenizer, source
    from ..teacher import BUILTIN_TEACHER, load_teacher

    model, loaded, source = load_teacher(teacher)
    if teacher is None or str(teacher) == BUILTIN_TEACHER:
        source = BUILTIN_TEACHER  # not the install path, which differs from machine to machine
    return model, tokenizer if tokenizer is not None else loaded, source


def copy_pool(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy a pool folder to ``target`` (hard links where the file system allows: the files are never modified
    in place, so the copies cannot drift apart)."""
    source, target = Path(source), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for name in (META_FILE, STATES_FILE):
        try:
            os.link(source / name, target / name)
        except OSError:
            shutil.copy2(source / name, target / name)
    return target


def build_reference_pool(out: str | os.PathLike, *, task: str | None = None, text_file: str | os.PathLike | None = None,
                         data_dir: str | os.PathLike | None = None, max_examples: int | None = None,
                         teacher: Any = "builtin", max_reference_tokens: int = 32, max_length: int = 128,
                         batch_size: int = 64, force: bool = False, progress: bool = True) -> ReferencePool:
    """Build a pool from a task's training texts (``task``; ``data_dir`` for local GLUE TSVs) or a text file (one
    text per line), with ``teacher``, and save it to ``out`` (``nasbert references build``)."""
    from ..config import ConfigError

    out = Path(out)
    if (task is None) == (text_file is None):
        raise ConfigError("name the pool's texts: --task TASK (its training set; --data-dir for local GLUE TSVs) "
                          "or --text-file FILE (one text per line)")
    if max_examples is not None and max_examples < 1:
        raise ConfigError(f"--max-examples must be at least 1, got {max_examples}")
    free_output(out, force)
    if task is not None:
        from .tasks import load_task

        # seed 0: the same subset as `nasbert finetune --max-train-examples N`, so the pool is the training set
        data = load_task(task, data_dir=data_dir, max_train_examples=max_examples, seed=0)
        texts = [e.text_a if e.text_b is None else (e.text_a, e.text_b) for e in data.train]
        subset = " (the seed-0 subset of finetune --max-train-examples)" if max_examples else ""
        corpus = f"{data.task.name} training set, {len(texts)} examples{subset}, from {data.source}"
    else:
        path = Path(text_file)
        if not path.is_file():
            raise ConfigError(f"--text-file {str(path)!r} does not exist: pass a UTF-8 file with one text per line")
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        texts = texts[:max_examples] if max_examples else texts
        corpus = f"{path}, the first {len(texts)} non-empty lines"
    pool = ReferencePool.build(texts, teacher=teacher, max_reference_tokens=max_reference_tokens,
                               max_length=max_length, batch_size=batch_size, corpus=corpus, progress=progress)
    pool.save(out)
    return pool
