"""The distillation corpus: raw text from one of three sources, tokenised and packed into fixed-length rows.

Sources (``CorpusConfig.source``):

* ``"builtin"``: the English documentation that ships with CPython (:func:`~nasbert.data.builtin_documents`);
  offline, about 100 k BERT tokens.
* ``"hf"``: a Hugging Face dataset, ``datasets.load_dataset(name, config_name, split=split)``, one document per
  row of ``text_column`` (``wikitext`` / ``wikitext-103-raw-v1`` is the usual choice).
* ``"files"``: local ``.txt`` / ``.jsonl`` files, or directories of them (searched recursively, in sorted order;
  files with no extension, such as WikiExtractor's ``wiki_00``, are read as text). They are read through the
  same ``datasets.load_dataset`` loaders as the hub (``"text"`` and ``"json"``, streamed, so nothing is copied
  into the ``datasets`` cache). How a text file splits into documents:

  - WikiExtractor output (the first non-blank line starts with ``<doc``): one document per ``<doc ...>`` record.
    The ``<doc ...>`` / ``</doc>`` lines and the title line that follows ``<doc ...>`` are dropped, HTML
    entities are decoded and leftover tags (``<ref name="x"></ref>``, ``<br>``) removed, so no markup reaches
    the training text.
  - a file with an empty line between two lines of text: one document per block of lines separated by empty
    lines (``sample_by="paragraph"``);
  - any other file: one document per line (``sample_by="line"``).

  A ``.jsonl`` file holds one JSON object per line, the text in ``text_column``.

Packing (as RoBERTa's FULL-SENTENCES): the documents are tokenised without special tokens and concatenated with
``[SEP]`` between them; the stream is cut into rows of ``[CLS] + (seq_len - 2) tokens + [SEP]``, and the last,
incomplete row is dropped. A row can therefore hold the end of one document and the start of the next.

Validation split: ``M = max(min_valid_sequences, round(N * valid_fraction))`` of the ``N`` packed rows are held
out, evenly spaced through the corpus (row ``((2 i + 1) N) // (2 M)`` for ``i < M``), so that every part of a
corpus made of several files or sources is represented. It depends on nothing but ``N`` and ``M``. Rows next to a
validation row may hold other parts of the same document: the split measures how well a student matches the
teacher on held-out text, not memorisation.

>>> from transformers import AutoTokenizer
>>> tokenizer = AutoTokenizer.from_pretrained("bert-base-uncased")  # doctest: +SKIP
>>> config = CorpusConfig(source="files", paths=("data/wikipedia-en-sample",), seq_len=128)
>>> corpus = load_corpus(config, tokenizer, cache_dir="~/.cache/nasbert/corpus")  # doctest: +SKIP
>>> corpus  # doctest: +SKIP
TokenizedCorpus(train=(46202, 128), valid=(2432, 128), fingerprint='...')
"""

from __future__ import annotations

import glob
import hashlib
import html
import itertools
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import ConfigError, from_mapping, to_mapping
from ..io import atomic_dir, atomic_write_json
from .builtin import builtin_documents

__all__ = [
    "CORPUS_FORMAT_VERSION",
    "CorpusConfig",
    "CorpusError",
    "TokenizedCorpus",
    "corpus_fingerprint",
    "load_corpus",
    "read_documents",
]

logger = logging.getLogger(__name__)

#: Bumped whenever reading, tokenising or packing changes, so that old cache entries are not reused.
CORPUS_FORMAT_VERSION = 1

SOURCES = ("builtin", "hf", "files")
TEXT_SUFFIXES = (".txt", "")  # "" is a file with no extension, such as WikiExtractor's wiki_00
JSONL_SUFFIXES = (".jsonl",)
_CACHE_FILE = "corpus.safetensors"
_TOKENIZE_BATCH = 1000  # documents per tokenizer call

_DOC_OPEN = re.compile(r"<doc(?:\s[^<>]*)?>")
_DOC_CLOSE = "</doc>"
# An HTML or wiki tag left in WikiExtractor text, once entities are decoded: <ref name="x">, </ref>, <br/>.
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")


class CorpusError(ConfigError):
    """The corpus cannot be read or is unusable (the message says what to change)."""


@dataclass(frozen=True)
class CorpusConfig:
    """Where the text comes from and how it is packed. Round-trips through :meth:`to_dict` / :meth:`from_dict`."""

    #: "builtin" (CPython's documentation), "hf" (a Hugging Face dataset) or "files" (local text files)
    source: str = "builtin"
    #: hf: the dataset name, e.g. "wikitext"
    name: str | None = None
    #: hf: the dataset configuration, e.g. "wikitext-103-raw-v1"
    config_name: str | None = None
    #: hf: the split to read
    split: str = "train"
    #: hf / jsonl: the field that holds the text
    text_column: str = "text"
    #: files: .txt / .jsonl files, or directories of them
    paths: tuple[str, ...] = ()
    #: tokens per packed sequence, [CLS] and [SEP] included
    seq_len: int = 128
    #: fraction of the packed sequences held out for validation
    valid_fraction: float = 0.05
    #: at least this many validation sequences; a corpus too short for them is an error
    min_valid_sequences: int = 4
    #: read at most this many documents (for quick runs); None reads everything
    max_documents: int | None = None

    def __post_init__(self) -> None:
        paths = self.paths
        if isinstance(paths, (str, os.PathLike)) or not isinstance(paths, (list, tuple)):
            raise CorpusError(f"paths must be a list of file or directory paths, got {paths!r}")
        object.__setattr__(self, "paths", tuple(os.fspath(p) for p in paths))
        for key in ("source", "split", "text_column"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise CorpusError(f"{key} must be a non-empty string, got {value!r}")
        for key in ("seq_len", "min_valid_sequences", "max_documents"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise CorpusError(f"{key} must be an integer, got {value!r}")
        if self.source not in SOURCES:
            raise CorpusError(
                f"unknown corpus source {self.source!r}: use 'builtin' (CPython's documentation, offline), "
                "'hf' (a Hugging Face dataset: set name) or 'files' (local .txt/.jsonl files: set paths)"
            )
        if self.source == "hf" and not self.name:
            raise CorpusError("corpus source 'hf' needs name: a Hugging Face dataset such as 'wikitext'")
        if self.source != "hf" and (self.name is not None or self.config_name is not None):
            raise CorpusError(f"name and config_name are for source 'hf', but source is {self.source!r}: "
                              "set source: hf, or remove them")
        if self.source == "files" and not self.paths:
            raise CorpusError("corpus source 'files' needs paths: a list of .txt/.jsonl files or directories")
        if self.source != "files" and self.paths:
            raise CorpusError(f"paths are for source 'files', but source is {self.source!r}: "
                              "set source: files, or remove paths")
        if self.seq_len < 3:
            raise CorpusError(f"seq_len must be at least 3 ([CLS], one token, [SEP]), got {self.seq_len}")
        if isinstance(self.valid_fraction, bool) or not isinstance(self.valid_fraction, (int, float)) \
                or not 0.0 <= self.valid_fraction < 1.0:
            raise CorpusError(f"valid_fraction must be a number in [0, 1), got {self.valid_fraction!r}")
        if self.min_valid_sequences < 0:
            raise CorpusError(f"min_valid_sequences must be >= 0, got {self.min_valid_sequences}")
        if self.max_documents is not None and self.max_documents < 1:
            raise CorpusError(f"max_documents must be >= 1 or null (no cap), got {self.max_documents}")

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "corpus") -> CorpusConfig:
        """Build a config from a mapping (a YAML section); an unknown key or a wrong type names the key.

        >>> CorpusConfig.from_dict({"source": "files", "paths": ["data/wiki"], "seq_len": 64}).seq_len
        64
        >>> CorpusConfig.from_dict({"seqlen": 64})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        nasbert.data.corpus.CorpusError: corpus: unknown config key 'seqlen'; allowed keys: source, name, ...
        """
        try:
            return from_mapping(cls, data)
        except ConfigError as e:
            raise CorpusError(f"{source}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return to_mapping(self)

    def describe(self) -> str:
        """A short human name for the source, for messages."""
        if self.source == "hf":
            return f"Hugging Face dataset {self.name!r}" + (f" ({self.config_name})" if self.config_name else "") \
                + f", split {self.split!r}"
        if self.source == "files":
            shown = ", ".join(repr(p) for p in self.paths[:3])
            return f"files {shown}" + (f" and {len(self.paths) - 3} more" if len(self.paths) > 3 else "")
        return "the built-in corpus (CPython's documentation)"


@dataclass
class TokenizedCorpus:
    """Packed token ids: every row is ``[CLS] ... [SEP]``, ``seq_len`` tokens of consecutive text."""

    train: torch.Tensor  # (N, seq_len) int64
    valid: torch.Tensor  # (M, seq_len) int64
    #: hash of the corpus config, the source's contents (files: sizes and times), the tokenizer and the format
    fingerprint: str

    @property
    def seq_len(self) -> int:
        return self.train.shape[1]

    def __repr__(self) -> str:
        return (f"TokenizedCorpus(train={tuple(self.train.shape)}, valid={tuple(self.valid.shape)}, "
                f"fingerprint={self.fingerprint!r})")


# --------------------------------------------------------------------------------------------------- reading


def read_documents(config: CorpusConfig) -> list[str]:
    """The raw text documents of the source, in a fixed order, stripped, empty ones dropped.

    >>> docs = read_documents(CorpusConfig(max_documents=3))
    >>> len(docs), all(isinstance(d, str) and d for d in docs)
    (3, True)
    """
    files = _resolve_files(config.paths) if config.source == "files" else []
    return _read_documents(config, files)


def _read_documents(config: CorpusConfig, files: Sequence[Path]) -> list[str]:
    if config.source == "builtin":
        docs: Iterable[str] = builtin_documents()
    elif config.source == "hf":
        docs = _hf_documents(config)
    else:
        docs = itertools.chain.from_iterable(_file_documents(path, config.text_column) for path in files)
    documents = list(itertools.islice(docs, config.max_documents))
    if not documents:
        raise CorpusError(f"the corpus ({config.describe()}) holds no text: every document is empty; "
                          "pass files or a dataset with text in them")
    return documents


def _load_dataset(*args: Any, **kwargs: Any) -> Any:
    """The one call into ``datasets.load_dataset``, for the hub and local files alike."""
    import datasets  # slow to import; only needed when a corpus is read

    return datasets.load_dataset(*args, **kwargs)


def _hf_documents(config: CorpusConfig) -> Iterator[str]:
    where = config.describe()
    try:
        dataset = _load_dataset(config.name, config.config_name, split=config.split)
    except (OSError, ValueError) as e:  # not found, offline (ConnectionError is an OSError), unknown config or split
        raise CorpusError(
            f"cannot load {where}: {type(e).__name__}: {e}. Check the name, config_name and split; offline, "
            "use source 'files' with local text files or source 'builtin'"
        ) from None
    columns = list(dataset.column_names or [])
    if config.text_column not in columns:
        raise CorpusError(f"{where} has no text column {config.text_column!r}; its columns are "
                          f"{', '.join(map(repr, columns)) or 'none'}: set text_column to one of them")
    for batch in dataset.select_columns([config.text_column]).iter(batch_size=_TOKENIZE_BATCH):
        for text in batch[config.text_column]:
            if text is None:
                continue
            if not isinstance(text, str):
                raise CorpusError(f"{where}: column {config.text_column!r} holds {type(text).__name__} values, "
                                  "not text: set text_column to a text column")
            text = _clean(text)
            if text:
                yield text


def _usable(path: Path) -> bool:
    return path.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES


def _resolve_files(paths: Sequence[str]) -> list[Path]:
    """Every file the paths name, directories expanded recursively (sorted, hidden files skipped)."""
    files: list[Path] = []
    for text in paths:
        path = Path(text).expanduser()
        if not path.exists():
            raise CorpusError(f"corpus path {text!r} does not exist: pass existing .txt/.jsonl files or "
                              "directories of them")
        if path.is_dir():
            found = sorted((p for p in path.rglob("*") if p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                           key=lambda p: p.relative_to(path).parts)
            usable = [p for p in found if _usable(p)]
            if not usable:
                others = ", ".join(repr(p.name) for p in found[:3]) or "no files at all"
                raise CorpusError(
                    f"corpus directory {text!r} has no usable files (found {others}): it needs .txt files, .jsonl "
                    "files or files with no extension (such as WikiExtractor's wiki_00)"
                )
            files += usable
        elif _usable(path):
            files.append(path)
        else:
            raise CorpusError(f"corpus file {text!r} has an unsupported extension {path.suffix!r}: use .txt "
                              "(plain text), .jsonl (one JSON object per line) or a file with no extension")
    resolved = [p.resolve() for p in files]
    return list(dict.fromkeys(resolved))  # a file named twice is read once


def _text_layout(path: Path) -> str:
    """How a text file splits into documents: "wikiextractor", "paragraph" or "line" (see the module docstring)."""
    seen_text = blank_after_text = False
    with open(path, "rb") as f:
        for raw in f:
            line = raw.rstrip(b"\r\n")
            if not seen_text and line.strip():
                if line.lstrip(b"\xef\xbb\xbf \t").startswith(b"<doc"):
                    return "wikiextractor"
            if line:
                if blank_after_text:
                    return "paragraph"
                seen_text = True
            elif seen_text:
                blank_after_text = True
    return "line"


def _file_documents(path: Path, text_column: str) -> Iterator[str]:
    if path.stat().st_size == 0:
        return
    try:
        if path.suffix.lower() in JSONL_SUFFIXES:
            yield from _jsonl_documents(path, text_column)
        else:
            yield from _text_documents(path)
    except UnicodeDecodeError as e:
        bad = e.object[e.start:e.start + 1] if isinstance(e.object, bytes) else b""
        raise CorpusError(
            f"corpus file {str(path)!r} is not UTF-8 text (byte {bad!r} cannot be decoded): convert it to "
            "UTF-8 (e.g. iconv -f latin1 -t utf-8) or remove it from paths"
        ) from None


def _text_documents(path: Path) -> Iterator[str]:
    layout = _text_layout(path)
    sample_by = "paragraph" if layout == "paragraph" else "line"
    rows = _load_dataset("text", data_files=[glob.escape(str(path))], split="train", streaming=True,
                         sample_by=sample_by)
    texts = (row["text"] for row in rows)
    if layout == "wikiextractor":
        yield from _wikiextractor_documents(texts)
        return
    for text in texts:
        text = _clean(text)
        if text:
            yield text


def _wikiextractor_documents(lines: Iterable[str]) -> Iterator[str]:
    """One document per ``<doc ...>`` record; markup lines and the title line after ``<doc ...>`` dropped."""
    parts: list[str] = []
    title_next = False
    for line in lines:
        stripped = line.strip()
        is_open = _DOC_OPEN.fullmatch(stripped) is not None
        if is_open or stripped == _DOC_CLOSE:
            if parts:
                yield "\n".join(parts)
                parts = []
            title_next = is_open
            continue
        if title_next:  # WikiExtractor repeats the article title as the record's first line
            title_next = False
            continue
        text = " ".join(_TAG.sub(" ", html.unescape(stripped)).split())
        if text:
            parts.append(text)
    if parts:
        yield "\n".join(parts)


def _jsonl_documents(path: Path, text_column: str) -> Iterator[str]:
    try:
        rows = _load_dataset("json", data_files=[glob.escape(str(path))], split="train", streaming=True)
    except StopIteration:  # no JSON object at all (only blank lines)
        return
    try:
        for row in rows:
            if text_column not in row:
                raise CorpusError(
                    f"corpus file {str(path)!r} has no field {text_column!r} (its fields: "
                    f"{', '.join(map(repr, row)) or 'none'}): set text_column to the field that holds the text"
                )
            text = row[text_column]
            if text is None:
                continue
            if not isinstance(text, str):
                raise CorpusError(f"corpus file {str(path)!r}: field {text_column!r} holds "
                                  f"{type(text).__name__} values, not text: set text_column to a text field")
            text = _clean(text)
            if text:
                yield text
    except (CorpusError, UnicodeDecodeError):
        raise
    except ValueError as e:  # pyarrow's JSON parse errors
        raise CorpusError(f"corpus file {str(path)!r} is not valid JSON Lines ({e}): write one JSON object "
                          f"per line with the text in field {text_column!r}") from None


def _clean(text: str) -> str:
    return text.strip().lstrip("\ufeff").strip()


# --------------------------------------------------------------------------------------- tokenising, packing


def _tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    """What decides the token ids: the backend's full definition (normaliser, pre-tokeniser, vocab), not its path."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)  # call-time state, set and reset by transformers
        spec.pop("padding", None)
        text = json.dumps(spec, sort_keys=True)
    else:
        text = json.dumps({"vocab": sorted(tokenizer.get_vocab().items()),
                           "lower": getattr(tokenizer, "do_lower_case", None)}, sort_keys=True)
    return {
        "class": type(tokenizer).__name__,
        "definition_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "cls_token_id": tokenizer.cls_token_id,
        "sep_token_id": tokenizer.sep_token_id,
    }


def _source_identity(config: CorpusConfig, files: Sequence[Path]) -> dict[str, Any]:
    """The source's contents, as far as can be known cheaply (so that edited files are not served stale)."""
    if config.source == "builtin":
        text = "\0".join(builtin_documents())
        return {"builtin_sha256": hashlib.sha256(text.encode()).hexdigest()}
    if config.source == "files":
        return {"files": [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]}
    return {}  # hf: name, config_name and split are in the config


def corpus_fingerprint(config: CorpusConfig, tokenizer: Any, *, files: Sequence[Path] | None = None) -> str:
    """The cache key of a tokenised corpus: 16 hex digits of a SHA-256 over config, source, tokenizer and format."""
    if files is None:
        files = _resolve_files(config.paths) if config.source == "files" else []
    key = {
        "format": CORPUS_FORMAT_VERSION,
        "config": config.to_dict(),
        "source": _source_identity(config, files),
        "tokenizer": _tokenizer_identity(tokenizer),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _tokenize(documents: Sequence[str], tokenizer: Any, *, show_progress: bool) -> np.ndarray:
    """The token stream: every document without special tokens, ``[SEP]`` between documents."""
    sep = tokenizer.sep_token_id
    pieces: list[np.ndarray] = []
    need_sep = False
    with tqdm(total=len(documents), desc="tokenising corpus", unit="doc", disable=not show_progress) as bar:
        for start in range(0, len(documents), _TOKENIZE_BATCH):
            batch = list(documents[start:start + _TOKENIZE_BATCH])
            encoded = tokenizer(batch, add_special_tokens=False, return_attention_mask=False,
                                return_token_type_ids=False, verbose=False)["input_ids"]
            flat: list[int] = []
            for ids in encoded:
                if not ids:
                    continue
                if need_sep:
                    flat.append(sep)
                flat.extend(ids)
                need_sep = True
            if flat:
                pieces.append(np.asarray(flat, dtype=np.int64))
            bar.update(len(batch))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


def _pack(stream: np.ndarray, seq_len: int, cls_id: int, sep_id: int) -> torch.Tensor:
    body = seq_len - 2
    n = len(stream) // body
    rows = torch.from_numpy(stream[: n * body].reshape(n, body))  # (N, seq_len - 2)
    return torch.cat([torch.full((n, 1), cls_id), rows, torch.full((n, 1), sep_id)], dim=1)  # (N, seq_len)


def _num_valid(num_rows: int, config: CorpusConfig) -> int:
    return max(config.min_valid_sequences, round(num_rows * config.valid_fraction))


def _min_rows(config: CorpusConfig) -> int:
    """The fewest packed rows that leave at least one training row after the validation rows."""
    n = 1
    while n - _num_valid(n, config) < 1:
        n += 1
    return n


def _validation_rows(num_rows: int, num_valid: int) -> torch.Tensor:
    i = torch.arange(num_valid)
    return ((2 * i + 1) * num_rows) // (2 * num_valid)  # evenly spaced, distinct since num_valid <= num_rows


def _split(rows: torch.Tensor, config: CorpusConfig, *, num_tokens: int, num_documents: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    n = rows.shape[0]
    needed = _min_rows(config)
    if n < needed:
        body = config.seq_len - 2
        raise CorpusError(
            f"the corpus ({config.describe()}) is too short: {num_documents} documents, {num_tokens} tokens, "
            f"which pack into {n} sequences of seq_len={config.seq_len} ({body} text tokens plus [CLS] and "
            f"[SEP]); {needed} sequences ({needed * body} tokens) are needed for min_valid_sequences="
            f"{config.min_valid_sequences} / valid_fraction={config.valid_fraction} validation sequences plus one "
            "training sequence. Add text, lower seq_len or lower min_valid_sequences"
        )
    num_valid = _num_valid(n, config)
    is_valid = torch.zeros(n, dtype=torch.bool)
    if num_valid:
        is_valid[_validation_rows(n, num_valid)] = True
    return rows[~is_valid].contiguous(), rows[is_valid].contiguous()


# ---------------------------------------------------------------------------------------------------- caching


def _load_cached(path: Path, fingerprint: str, seq_len: int) -> TokenizedCorpus | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = path / _CACHE_FILE
    if not file.is_file():
        return None
    try:
        tensors = load_file(file)
        train, valid = tensors["train"], tensors["valid"]
    except (OSError, SafetensorError, KeyError) as e:
        logger.warning("corpus cache %s is unreadable (%s); tokenising again", path, e)
        return None
    if train.shape[1:] != (seq_len,) or valid.shape[1:] != (seq_len,):
        logger.warning("corpus cache %s holds sequences of another length; tokenising again", path)
        return None
    return TokenizedCorpus(train=train, valid=valid, fingerprint=fingerprint)


def _save_cached(path: Path, corpus: TokenizedCorpus, info: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    with atomic_dir(path) as tmp:
        atomic_write_json(tmp / "corpus.json", info)
        save_file({"train": corpus.train, "valid": corpus.valid}, tmp / _CACHE_FILE,
                  metadata={"fingerprint": corpus.fingerprint, "format": str(CORPUS_FORMAT_VERSION)})
        os.chmod(tmp / _CACHE_FILE, (tmp / "corpus.json").stat().st_mode)  # safetensors writes it private


def load_corpus(
    config: CorpusConfig,
    tokenizer: Any,
    *,
    cache_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
) -> TokenizedCorpus:
    """Read, tokenise, pack and split the corpus; with ``cache_dir``, reuse ``cache_dir/<fingerprint>/``.

    ``tokenizer`` is a Hugging Face (fast) tokenizer with ``[CLS]`` and ``[SEP]`` tokens. The cache entry is
    written atomically: an interrupted or failed run leaves nothing behind.

    >>> from nasbert.teacher import load_teacher  # doctest: +SKIP
    >>> _, tokenizer, _ = load_teacher()  # doctest: +SKIP
    >>> corpus = load_corpus(CorpusConfig(seq_len=128), tokenizer, cache_dir="~/.cache/nasbert")  # doctest: +SKIP
    >>> corpus.train[0, 0].item() == tokenizer.cls_token_id  # doctest: +SKIP
    True
    """
    cls_id, sep_id = getattr(tokenizer, "cls_token_id", None), getattr(tokenizer, "sep_token_id", None)
    if cls_id is None or sep_id is None:
        raise CorpusError(f"tokenizer {type(tokenizer).__name__} has no [CLS] or [SEP] token: "
                          "pass a BERT (WordPiece) tokenizer")
    max_len = getattr(tokenizer, "model_max_length", None)
    if isinstance(max_len, int) and max_len < 1_000_000 and config.seq_len > max_len:  # huge = "no limit"
        raise CorpusError(f"seq_len={config.seq_len} is longer than the tokenizer's model_max_length={max_len} "
                          "(the teacher's position embeddings): lower seq_len")
    if not getattr(tokenizer, "is_fast", True):
        logger.warning("tokenizer %s is not a fast tokenizer; tokenising will be slow", type(tokenizer).__name__)

    files = _resolve_files(config.paths) if config.source == "files" else []
    fingerprint = corpus_fingerprint(config, tokenizer, files=files)
    entry = Path(cache_dir).expanduser() / fingerprint if cache_dir is not None else None
    if entry is not None:
        cached = _load_cached(entry, fingerprint, config.seq_len)
        if cached is not None:
            logger.info("corpus %s: %d train + %d valid sequences from the cache %s",
                        fingerprint, len(cached.train), len(cached.valid), entry)
            return cached

    documents = _read_documents(config, files)
    stream = _tokenize(documents, tokenizer, show_progress=show_progress)
    rows = _pack(stream, config.seq_len, cls_id, sep_id)
    train, valid = _split(rows, config, num_tokens=len(stream), num_documents=len(documents))
    corpus = TokenizedCorpus(train=train, valid=valid, fingerprint=fingerprint)
    logger.info("corpus %s (%s): %d documents, %d tokens -> %d train + %d valid sequences of %d tokens",
                fingerprint, config.describe(), len(documents), len(stream), len(train), len(valid), config.seq_len)
    if entry is not None:
        _save_cached(entry, corpus, {
            "fingerprint": fingerprint,
            "format": CORPUS_FORMAT_VERSION,
            "config": config.to_dict(),
            "tokenizer": getattr(tokenizer, "name_or_path", None),
            "documents": len(documents),
            "tokens": len(stream),
            "train_sequences": len(train),
            "valid_sequences": len(valid),
        })
    return corpus
