"""Downstream tasks for fine-tuning: the eight GLUE tasks and generic CSV / JSON Lines classification or regression.

GLUE data comes from one of two places:

* the Hugging Face hub, ``datasets.load_dataset("nyu-mll/glue", name)`` (the default; needs the network or a
  warm ``datasets`` cache);
* a local copy in the standard GLUE TSV layout (``--data-dir``): ``<DIR>/<TASK>/train.tsv`` and ``dev.tsv``
  (``dev_matched.tsv`` for MNLI), as written by the GLUE download script. ``<DIR>`` may also be the task
  directory itself. Columns are found by their header names; CoLA's files have no header.

Label ids are the hub's (``nyu-mll/glue``), whichever the source, so that a model fine-tuned on one reads the
other. Rows of a GLUE file whose text is empty, and QQP rows with missing fields (the real ``train.tsv`` has a
few), are skipped with a logged count; any other bad row is a :class:`TaskError` that names the file and line.

>>> spec = get_task("SST-2")
>>> spec.name, spec.text_fields, spec.label_names, spec.main_metric
('sst2', ('sentence',), ('negative', 'positive'), 'accuracy')
>>> data = load_task("sst2", data_dir="data/glue", max_train_examples=1000)  # doctest: +SKIP
>>> len(data.train), len(data.dev), data.train[0]  # doctest: +SKIP
(1000, 872, Example(text_a='...', text_b=None, label=0))
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "GLUE_TASKS",
    "SICK",
    "Example",
    "TaskData",
    "TaskError",
    "TaskSpec",
    "get_task",
    "load_generic_task",
    "load_task",
]

logger = logging.getLogger(__name__)

HUB_DATASET = "nyu-mll/glue"


class TaskError(ValueError):
    """A task cannot be found or its data cannot be read (the message says what to change)."""


@dataclass(frozen=True)
class TaskSpec:
    """What a downstream task looks like: its inputs, its labels and how it is scored."""

    #: short lower-case name, e.g. "sst2"
    name: str
    #: directory name in the GLUE TSV layout, e.g. "SST-2"; "" for a generic (non-GLUE) task
    glue_dir: str
    #: the text inputs, named as in the hub dataset: ("sentence",) or ("sentence1", "sentence2")
    text_fields: tuple[str, ...]
    #: number of classes; 1 is regression (STS-B)
    num_labels: int
    #: the class names, by label id; () for regression
    label_names: tuple[str, ...]
    #: the metrics reported on the dev set (see :mod:`nasbert.finetune.metrics`)
    metrics: tuple[str, ...]
    #: the metric that chooses the best checkpoint
    main_metric: str
    #: the hub split that holds the dev set
    dev_split: str = "validation"

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


@dataclass(frozen=True)
class Example:
    """One input: one or two texts and a label (a class id, or a float for regression)."""

    text_a: str
    text_b: str | None
    label: int | float


@dataclass
class TaskData:
    """A task's training and dev examples, and where they were read from."""

    task: TaskSpec
    train: list[Example]
    dev: list[Example]
    #: the directory, file or hub dataset the examples came from, for logs and run metadata
    source: str

    def __repr__(self) -> str:
        return (f"TaskData(task={self.task.name!r}, train={len(self.train)}, dev={len(self.dev)}, "
                f"source={self.source!r})")


_ACCURACY = ("accuracy",)
_F1_ACCURACY = ("f1", "accuracy")
_ENTAILMENT = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("cola", "CoLA", ("sentence",), 2, ("unacceptable", "acceptable"),
                 ("matthews_correlation",), "matthews_correlation"),
        TaskSpec("sst2", "SST-2", ("sentence",), 2, ("negative", "positive"), _ACCURACY, "accuracy"),
        TaskSpec("mrpc", "MRPC", ("sentence1", "sentence2"), 2, ("not_equivalent", "equivalent"),
                 _F1_ACCURACY, "f1"),
        TaskSpec("stsb", "STS-B", ("sentence1", "sentence2"), 1, (), ("pearson", "spearmanr"), "pearson"),
        TaskSpec("qqp", "QQP", ("question1", "question2"), 2, ("not_duplicate", "duplicate"),
                 _F1_ACCURACY, "f1"),
        TaskSpec("mnli", "MNLI", ("premise", "hypothesis"), 3, ("entailment", "neutral", "contradiction"),
                 _ACCURACY, "accuracy", dev_split="validation_matched"),
        TaskSpec("qnli", "QNLI", ("question", "sentence"), 2, _ENTAILMENT, _ACCURACY, "accuracy"),
        TaskSpec("rte", "RTE", ("sentence1", "sentence2"), 2, _ENTAILMENT, _ACCURACY, "accuracy"),
    )
}


@dataclass(frozen=True)
class _TsvFormat:
    """How one GLUE task's TSV files are laid out."""

    #: the header names of the text columns, in TaskSpec.text_fields order
    text_columns: tuple[str, ...]
    label_column: str
    #: raw label value -> label id; None for a float score (STS-B)
    labels: Mapping[str, int] | None
    dev_file: str = "dev.tsv"
    #: the column names of a file with no header row (CoLA); None when the first row is the header
    columns: tuple[str, ...] | None = None
    #: rows with the wrong number of fields are skipped, not an error (QQP)
    skip_malformed: bool = False


_BINARY = {"0": 0, "1": 1}
_ENTAILMENT_IDS = {"entailment": 0, "not_entailment": 1}

_TSV_FORMATS: dict[str, _TsvFormat] = {
    "cola": _TsvFormat(("sentence",), "label", _BINARY, columns=("source", "label", "annotation", "sentence")),
    "sst2": _TsvFormat(("sentence",), "label", _BINARY),
    "mrpc": _TsvFormat(("#1 String", "#2 String"), "Quality", _BINARY),
    "stsb": _TsvFormat(("sentence1", "sentence2"), "score", None),
    "qqp": _TsvFormat(("question1", "question2"), "is_duplicate", _BINARY, skip_malformed=True),
    "mnli": _TsvFormat(("sentence1", "sentence2"), "gold_label", {"entailment": 0, "neutral": 1, "contradiction": 2},
                       dev_file="dev_matched.tsv"),
    "qnli": _TsvFormat(("question", "sentence"), "label", _ENTAILMENT_IDS),
    "rte": _TsvFormat(("sentence1", "sentence2"), "label", _ENTAILMENT_IDS),
}

#: SICK (Marelli et al., LREC 2014; SemEval-2014 task 1): sentence pairs with a 3-way entailment label, in one
#: file whose ``SemEval_set`` column splits it. nasbert trains on TRAIN and reports on TEST (TRIAL is unused);
#: on the hub its splits are train / validation / test.
SICK = TaskSpec("sick", "SICK", ("sentence_A", "sentence_B"), 3, ("entailment", "neutral", "contradiction"),
                _ACCURACY, "accuracy", dev_split="test")
SICK_HUB_DATASET = "RobZamp/sick"
_SICK_FILE = "SICK.txt"
_SICK_LAYOUT = ("SICK is one tab-separated file, SICK.txt, with columns sentence_A, sentence_B, entailment_label "
                "and SemEval_set (TRAIN / TRIAL / TEST): pass --data-dir with the file, its folder, or a folder "
                "holding sick/SICK.txt")
OTHER_TASKS: dict[str, TaskSpec] = {SICK.name: SICK}

_LAYOUT = ("the GLUE TSV layout is <DIR>/<TASK>/train.tsv, dev.tsv (MNLI: dev_matched.tsv; CoLA's files have no "
           "header), e.g. <DIR>/SST-2/train.tsv")
_LAYOUT_HINT = f"{_LAYOUT}; or omit --data-dir to download the task from the Hugging Face hub ({HUB_DATASET})"


def _normalize(name: str) -> str:
    return re.sub(r"[-_\s]", "", name).lower()


def get_task(name: str) -> TaskSpec:
    """The GLUE task called ``name``, in any case, with or without a dash ("SST-2", "sst2", "CoLA", "STS-B").

    >>> get_task("STS-B").is_regression
    True
    >>> get_task("imdb")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    nasbert.finetune.tasks.TaskError: unknown task 'imdb': the GLUE tasks are cola, sst2, mrpc, stsb, ...
    """
    known = {**GLUE_TASKS, **OTHER_TASKS}
    spec = known.get(_normalize(name)) if isinstance(name, str) else None
    if spec is None:
        raise TaskError(f"unknown task {name!r}: the GLUE tasks are {', '.join(GLUE_TASKS)} (also written as "
                        f"{', '.join(s.glue_dir for s in GLUE_TASKS.values())}), and {', '.join(OTHER_TASKS)}; "
                        "for your own data use a generic CSV / JSON Lines task")
    return spec


# ------------------------------------------------------------------------------------------------------ GLUE


def load_task(task: str | TaskSpec, *, data_dir: str | os.PathLike | None = None,
              max_train_examples: int | None = None, seed: int = 0) -> TaskData:
    """The training and dev examples of a GLUE task, from a local GLUE TSV copy or the Hugging Face hub.

    ``data_dir`` is the GLUE root (``data_dir/SST-2/train.tsv``) or the task directory (``data_dir/train.tsv``);
    without it the task is read from the hub (``nyu-mll/glue``). ``max_train_examples`` keeps a random subset of
    that many training rows, chosen with ``seed`` and kept in their original order; the dev set is always whole.

    >>> data = load_task("cola", data_dir="data/glue")  # doctest: +SKIP
    >>> data  # doctest: +SKIP
    TaskData(task='cola', train=8551, dev=1043, source='data/glue/CoLA')
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if spec.name == SICK.name:
        _check_subset(max_train_examples)
        train, dev, source = _hub_sick() if data_dir is None else _sick_examples(Path(data_dir))
        return TaskData(spec, _subset(train, max_train_examples, seed), dev, source)
    if spec.name not in _TSV_FORMATS:
        raise TaskError(f"task {spec.name!r} is not a GLUE task: read its files with load_generic_task")
    _check_subset(max_train_examples)
    if data_dir is None:
        train, dev, source = _hub_examples(spec)
    else:
        train, dev, source = _tsv_examples(spec, Path(data_dir))
    return TaskData(spec, _subset(train, max_train_examples, seed), dev, source)


def _task_dir(spec: TaskSpec, data_dir: Path) -> Path:
    """The directory that holds the task's train.tsv: ``data_dir/<TASK>`` (any spelling) or ``data_dir``."""
    if not data_dir.is_dir():
        raise TaskError(f"--data-dir {str(data_dir)!r} is not a directory: {_LAYOUT_HINT}")
    candidates = [data_dir / spec.glue_dir, data_dir / "glue" / spec.glue_dir]
    # Other spellings of the task directory (sst2, sst-2, Sst-2), in a fixed order.
    candidates += sorted(p for p in data_dir.iterdir() if p.is_dir() and _normalize(p.name) == spec.name)
    candidates.append(data_dir)
    for directory in candidates:
        if (directory / "train.tsv").is_file():
            return directory
    expected = data_dir / spec.glue_dir / "train.tsv"
    raise TaskError(f"no training file for {spec.name} in --data-dir {str(data_dir)!r}: expected {str(expected)!r} "
                    f"(or {str(data_dir / 'train.tsv')!r}); {_LAYOUT_HINT}")


def _tsv_examples(spec: TaskSpec, data_dir: Path) -> tuple[list[Example], list[Example], str]:
    fmt = _TSV_FORMATS[spec.name]
    directory = _task_dir(spec, data_dir)
    dev_path = directory / fmt.dev_file
    if not dev_path.is_file():
        raise TaskError(f"no dev file for {spec.name}: expected {str(dev_path)!r} next to train.tsv; {_LAYOUT_HINT}")
    train = _read_tsv(directory / "train.tsv", spec, fmt)
    dev = _read_tsv(dev_path, spec, fmt)
    return train, dev, str(directory)


def _tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) for each non-blank line. Tabs split fields; quotes are text (GLUE files are unquoted)."""
    # newline="\n": a stray "\r" inside a sentence must not end the row. utf-8-sig: a byte-order mark (MRPC's)
    # is not part of the header.
    with open(path, encoding="utf-8-sig", newline="\n") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line.split("\t")


def _read_tsv(path: Path, spec: TaskSpec, fmt: _TsvFormat) -> list[Example]:
    where = str(path)
    rows = _tsv_rows(path)
    if fmt.columns is not None:
        columns = list(fmt.columns)
    else:
        header = next(rows, None)
        if header is None:
            raise TaskError(f"{where} is empty: it needs a header row and one example per line; {_LAYOUT_HINT}")
        columns = [c.strip() for c in header[1]]
    needed = (*fmt.text_columns, fmt.label_column)
    missing = [c for c in needed if c not in columns]
    if missing:
        raise TaskError(f"{where} has no column {', '.join(map(repr, missing))} (its header: "
                        f"{', '.join(map(repr, columns))}); a {spec.glue_dir} file needs columns "
                        f"{', '.join(map(repr, needed))}")
    text_at = [columns.index(c) for c in fmt.text_columns]
    label_at = columns.index(fmt.label_column)

    examples: list[Example] = []
    malformed = empty = 0
    for number, fields in rows:
        if len(fields) != len(columns):
            if fmt.skip_malformed:
                malformed += 1
                continue
            raise TaskError(f"{where}, line {number}: {len(fields)} tab-separated fields, expected {len(columns)} "
                            f"({', '.join(columns)}); fix or remove the line")
        texts = [fields[i].strip() for i in text_at]
        if not all(texts):
            empty += 1
            continue
        label = _tsv_label(fields[label_at].strip(), fmt, where, number)
        examples.append(Example(texts[0], texts[1] if len(texts) > 1 else None, label))
    if malformed:
        logger.warning("%s: skipped %d rows with missing or extra fields", where, malformed)
    if empty:
        logger.warning("%s: skipped %d rows with an empty text", where, empty)
    if not examples:
        raise TaskError(f"{where} holds no examples: it needs one example per line; {_LAYOUT_HINT}")
    return examples


def _tsv_label(value: str, fmt: _TsvFormat, where: str, number: int) -> int | float:
    if fmt.labels is None:
        score = _float_or_none(value)
        if score is None:
            raise TaskError(f"{where}, line {number}: {fmt.label_column} {value!r} is not a number")
        return score
    if value not in fmt.labels:
        hint = " (CoLA files have no header: source, label, annotation, sentence)" if fmt.columns else ""
        raise TaskError(f"{where}, line {number}: label {value!r} is not one of "
                        f"{', '.join(map(repr, fmt.labels))}{hint}")
    return fmt.labels[value]


def _sick_file(data_dir: Path) -> Path:
    if data_dir.is_file():
        return data_dir
    for path in (data_dir / _SICK_FILE, data_dir / "sick" / _SICK_FILE, data_dir / "SICK" / _SICK_FILE):
        if path.is_file():
            return path
    raise TaskError(f"no {_SICK_FILE} in --data-dir {str(data_dir)!r} (nor in its sick/ folder); {_SICK_LAYOUT}")


def _sick_examples(data_dir: Path) -> tuple[list[Example], list[Example], str]:
    """TRAIN and TEST rows of SICK.txt (CRLF or LF line ends), with the hub's label ids."""
    path = _sick_file(data_dir)
    rows = _tsv_rows(path)
    header = next(rows, None)
    columns = [c.strip() for c in header[1]] if header else []
    needed = ("sentence_A", "sentence_B", "entailment_label", "SemEval_set")
    missing = [c for c in needed if c not in columns]
    if missing:
        raise TaskError(f"{path} has no column {', '.join(map(repr, missing))}; {_SICK_LAYOUT}")
    at = [columns.index(c) for c in needed]
    ids = {name.upper(): i for i, name in enumerate(SICK.label_names)}
    splits: dict[str, list[Example]] = {"TRAIN": [], "TRIAL": [], "TEST": []}
    for number, fields in rows:
        if len(fields) != len(columns):
            raise TaskError(f"{path}, line {number}: {len(fields)} tab-separated fields, expected {len(columns)}")
        a, b, label, split = (fields[i].strip() for i in at)
        if label not in ids:
            raise TaskError(f"{path}, line {number}: entailment_label {label!r} is not one of {', '.join(ids)}")
        if split not in splits:
            raise TaskError(f"{path}, line {number}: SemEval_set {split!r} is not one of {', '.join(splits)}")
        splits[split].append(Example(a, b, ids[label]))
    if not splits["TRAIN"] or not splits["TEST"]:
        raise TaskError(f"{path} has {len(splits['TRAIN'])} TRAIN and {len(splits['TEST'])} TEST rows; both are "
                        f"needed; {_SICK_LAYOUT}")
    return splits["TRAIN"], splits["TEST"], str(path)


def _hub_sick() -> tuple[list[Example], list[Example], str]:
    try:
        dataset = _load_dataset(SICK_HUB_DATASET)
    except (OSError, ValueError) as e:
        raise TaskError(f"cannot load SICK from the Hugging Face hub ({SICK_HUB_DATASET}): {type(e).__name__}: {e}. "
                        f"Pass --data-dir with a local copy; {_SICK_LAYOUT}") from None
    source = f"hub:{SICK_HUB_DATASET}"
    return _hub_split(dataset, "train", SICK, source), _hub_split(dataset, SICK.dev_split, SICK, source), source


def _load_dataset(*args: Any, **kwargs: Any) -> Any:
    """The one call into ``datasets.load_dataset`` (tests replace it)."""
    import datasets  # slow to import; only needed for the hub

    return datasets.load_dataset(*args, **kwargs)


def _hub_examples(spec: TaskSpec) -> tuple[list[Example], list[Example], str]:
    try:
        dataset = _load_dataset(HUB_DATASET, spec.name)
    except (OSError, ValueError) as e:  # offline (ConnectionError is an OSError), not found, bad config
        raise TaskError(
            f"cannot load {spec.name} from the Hugging Face hub ({HUB_DATASET}): {type(e).__name__}: {e}. The hub "
            f"could not be reached: pass --data-dir with a local copy of GLUE; {_LAYOUT}"
        ) from None
    source = f"hub:{HUB_DATASET}/{spec.name}"
    return (_hub_split(dataset, "train", spec, source), _hub_split(dataset, spec.dev_split, spec, source), source)


def _hub_split(dataset: Any, split: str, spec: TaskSpec, source: str) -> list[Example]:
    where = f"{source} split {split!r}"
    if split not in dataset:
        raise TaskError(f"{source} has no split {split!r} (its splits: {', '.join(map(repr, dataset))})")
    part = dataset[split]
    missing = [c for c in (*spec.text_fields, "label") if c not in part.column_names]
    if missing:
        raise TaskError(f"{where} has no column {', '.join(map(repr, missing))} (its columns: "
                        f"{', '.join(map(repr, part.column_names))})")
    names = getattr(part.features["label"], "names", None)
    if not spec.is_regression and names is not None and tuple(names) != spec.label_names:
        # The TSV reader maps labels to these ids; a different order on the hub would silently swap classes.
        raise TaskError(f"{where}: label names {names} differ from the expected {list(spec.label_names)}")
    columns = part.select_columns([*spec.text_fields, "label"])[:]  # {column: list}, faster than row by row
    examples: list[Example] = []
    empty = 0
    for i, label in enumerate(columns["label"]):
        texts = [(columns[c][i] or "").strip() for c in spec.text_fields]
        if not all(texts):
            empty += 1
            continue
        if spec.is_regression:
            label = float(label)
        elif not 0 <= label < spec.num_labels:
            raise TaskError(f"{where}, row {i}: label {label} is outside 0..{spec.num_labels - 1}")
        examples.append(Example(texts[0], texts[1] if len(texts) > 1 else None, label))
    if empty:
        logger.warning("%s: skipped %d rows with an empty text", where, empty)
    return examples


# --------------------------------------------------------------------------------------------------- generic

_CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
_JSONL_SUFFIXES = (".jsonl", ".json")
_INT = re.compile(r"[+-]?\d+")


def load_generic_task(*, train_file: str | os.PathLike, dev_file: str | os.PathLike, text_columns: Sequence[str],
                      label_column: str, regression: bool = False, name: str = "custom",
                      max_train_examples: int | None = None, seed: int = 0) -> TaskData:
    """A classification or regression task read from two files: CSV / TSV with a header row, or JSON Lines.

    The format follows the extension: ``.csv`` (comma), ``.tsv`` (tab), ``.jsonl`` / ``.json`` (one JSON object per
    line). One or two ``text_columns``. Classification labels may be integers or strings: the distinct training
    labels, sorted (numerically if they are all integers), become ids 0..K-1. Regression labels are floats.

    >>> data = load_generic_task(train_file="reviews/train.csv", dev_file="reviews/dev.csv",
    ...                          text_columns=["review"], label_column="stars")  # doctest: +SKIP
    >>> data.task.label_names, data.task.metrics  # doctest: +SKIP
    (('1', '2', '3', '4', '5'), ('accuracy',))
    """
    if isinstance(text_columns, str):
        text_columns = [text_columns]
    text_columns = tuple(text_columns)
    if len(text_columns) not in (1, 2):
        raise TaskError(f"a task has one or two text columns, got {len(text_columns)}: {list(text_columns)}")
    _check_subset(max_train_examples)
    needed = (*text_columns, label_column)
    train_rows = _read_generic(Path(train_file), needed)
    dev_rows = _read_generic(Path(dev_file), needed)

    if regression:
        spec = TaskSpec(name, "", text_columns, 1, (), ("pearson", "spearmanr"), "pearson")
        encode = _regression_label
    else:
        raw = {_label_key(label, where) for where, _, label in train_rows}
        numeric = all(isinstance(k, int) for k in raw)
        # A mix of integers and strings is read as strings, sorted as such.
        keys: list[Any] = sorted(raw) if numeric else sorted({str(k) for k in raw})
        if len(keys) < 2:
            raise TaskError(f"{train_file}: column {label_column!r} holds a single label {keys[0]!r}: a "
                            "classification task needs at least two classes (for a score, pass regression=True)")
        ids = {k: i for i, k in enumerate(keys)}
        metrics = ("accuracy", "f1") if len(keys) == 2 else ("accuracy",)
        spec = TaskSpec(name, "", text_columns, len(keys), tuple(str(k) for k in keys), metrics, "accuracy")

        def encode(value: Any, where: str) -> int:
            key = _label_key(value, where)
            key = key if numeric else str(key)
            if key not in ids:
                raise TaskError(f"{where}: label {value!r} does not occur in the training file (its labels: "
                                f"{', '.join(spec.label_names)}); every dev label must also be a training label")
            return ids[key]

    def examples(rows: list[tuple[str, list[str], Any]]) -> list[Example]:
        return [Example(texts[0], texts[1] if len(texts) > 1 else None, encode(label, where))
                for where, texts, label in rows]

    train = examples(train_rows)
    return TaskData(spec, _subset(train, max_train_examples, seed), examples(dev_rows), os.fspath(train_file))


def _read_generic(path: Path, needed: tuple[str, ...]) -> list[tuple[str, list[str], Any]]:
    """(where, texts, raw label) per row; ``where`` is "file, line N" for messages."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise TaskError(f"task file {str(path)!r} does not exist: pass an existing .csv, .tsv or .jsonl file")
    if suffix in _CSV_SUFFIXES:
        records = _csv_records(path, _CSV_SUFFIXES[suffix], needed)
    elif suffix in _JSONL_SUFFIXES:
        records = _jsonl_records(path, needed)
    else:
        raise TaskError(f"task file {str(path)!r} has an unsupported extension {path.suffix!r}: use .csv or .tsv "
                        "(with a header row) or .jsonl (one JSON object per line)")
    rows = []
    for number, record in records:
        where = f"{path}, line {number}"
        texts = []
        for column in needed[:-1]:
            text = record[column]
            if not isinstance(text, str):
                raise TaskError(f"{where}: column {column!r} holds {text!r}, not text")
            text = text.strip()
            if not text:
                raise TaskError(f"{where}: column {column!r} is empty; every example needs its text")
            texts.append(text)
        rows.append((where, texts, record[needed[-1]]))
    if not rows:
        raise TaskError(f"task file {str(path)!r} holds no examples")
    return rows


def _missing_columns(columns: Sequence[str], needed: tuple[str, ...], where: str) -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise TaskError(f"{where} has no column {', '.join(map(repr, missing))} (its columns: "
                        f"{', '.join(map(repr, columns)) or 'none'}): pass text and label columns from them")


def _csv_records(path: Path, delimiter: str, needed: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = list(reader.fieldnames or [])
        _missing_columns(columns, needed, str(path))
        for record in reader:
            if any(record[c] is None for c in needed):  # DictReader fills the fields a short row lacks with None
                found = sum(record[c] is not None for c in columns)
                raise TaskError(f"{path}, line {reader.line_num}: {found} fields, fewer than the header's "
                                f"{len(columns)}; fix or remove the line")
            yield reader.line_num, record


def _jsonl_records(path: Path, needed: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}, line {number} is not valid JSON ({e}): write one JSON object per "
                                "line") from None
            if not isinstance(record, dict):
                raise TaskError(f"{path}, line {number} holds a {type(record).__name__}, not a JSON object")
            _missing_columns(list(record), needed, f"{path}, line {number}")
            yield number, record


def _label_key(value: Any, where: str) -> int | str:
    """A classification label as an int where it is one (1, 1.0, "1"), else as a string."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise TaskError(f"{where}: missing label {value!r}; every example needs a label")
    return value.strip() if isinstance(value, str) else str(value)


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        score = float(value)
    except (TypeError, ValueError):
        return None
    return score if math.isfinite(score) else None


def _regression_label(value: Any, where: str) -> float:
    score = _float_or_none(value)
    if score is None:
        raise TaskError(f"{where}: label {value!r} is not a finite number (regression labels are floats)")
    return score


# ---------------------------------------------------------------------------------------------------- common


def _check_subset(max_train_examples: int | None) -> None:
    if max_train_examples is not None and (isinstance(max_train_examples, bool)
                                           or not isinstance(max_train_examples, int) or max_train_examples < 1):
        raise TaskError(f"max_train_examples must be a positive integer or None (all), got {max_train_examples!r}")


def _subset(examples: list[Example], max_examples: int | None, seed: int) -> list[Example]:
    """A seeded random subset of ``max_examples`` examples, in their original order."""
    if max_examples is None or max_examples >= len(examples):
        return examples
    chosen = np.sort(np.random.default_rng(seed).choice(len(examples), size=max_examples, replace=False))
    return [examples[i] for i in chosen]
