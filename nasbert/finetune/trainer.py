"""Fine-tuning on a downstream task: an exported nasbert model or any Hugging Face BERT, with optional
prediction-layer distillation from a fine-tuned teacher (NAS-BERT's second distillation stage).

The output directory::

    OUT/finetune.json       what was asked (model, task, data, config); a rerun must ask the same
    OUT/log.jsonl           one line per logged step and per evaluation
    OUT/checkpoint.pt       while training: model, optimizer, schedule, data order and RNG states (resume)
    OUT/teacher_logits.pt   with --kd-teacher: the teacher's predictions on the training set, computed once
    OUT/neighbours.pt       with --references: the reference sample of every training and dev example, computed once
    OUT/model/              the fine-tuned model: HF directory (+ model.onnx with logits output and its int8 graph
                            model.int8.onnx, scored on the dev set in metrics.json's "int8"; with --references
                            also references/, a copy of the pool, and model.onnx takes the reference inputs)
    OUT/metrics.json        dev metrics at the end (and the best evaluation), written last

A run stopped at any point resumes from its last checkpoint when the same command is given again; a finished
run is not trained again.

With ``references`` (a :class:`~nasbert.ReferencePool` folder; RefBERT, arXiv 2106.08898) a nasbert model
is fine-tuned with ``config.reference_size`` set: its first mha layer also attends over the teacher's
pre-computed states of each example's reference sample. Training examples retrieve from the pool with
self-exclusion (never their own row nor an identical token sequence), dev examples retrieve normally; both are
tokenised for retrieval as the pool's samples were (up to its ``max_length`` tokens), so that identical
sequences hash alike.

>>> result = finetune("family/nasbert-2x-17.0M", "sst2", out="ft/sst2", data_dir="glue")  # doctest: +SKIP
>>> result.metrics["accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import pickle
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import ConfigError, from_mapping, to_mapping
from ..io import atomic_dir, atomic_write_bytes, atomic_write_json, fault_point, truncate_jsonl
from ..utils import to_device, torch_threads
from .metrics import compute_metrics
from .tasks import Example, TaskData, TaskSpec

__all__ = ["AUTO_EXTEND", "AUTO_LRS", "FinetuneConfig", "FinetuneError", "FinetuneResult", "LrGridResult",
           "encode_examples", "finetune", "finetune_lr_grid", "grid_point", "is_nasbert_model", "load_classifier",
           "predict", "resolve_device"]

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
TEACHER_LOGITS = "teacher_logits.pt"
NEIGHBOURS = "neighbours.pt"


class FinetuneError(RuntimeError):
    """The fine-tuning cannot start or go on (bad model, output directory from another run, ...)."""


@dataclass(frozen=True)
class FinetuneConfig:
    """The recipe. Defaults follow common GLUE practice for small BERTs."""

    epochs: float = 3.0
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    #: fraction of the steps spent warming the learning rate up linearly; then linear decay to 0
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    #: inputs are truncated to this many tokens; batches are padded to their longest input only
    max_seq_len: int = 128
    eval_batch_size: int = 128
    #: a seeded random subset of the training set (null = all of it)
    max_train_examples: int | None = None
    #: evaluations on the dev set per epoch (the last one at the epoch's end); 0: one evaluation, after the last
    #: step (the final score is the same: evaluating draws no random numbers and changes no weight)
    evals_per_epoch: int = 1
    seed: int = 0
    #: weight of the distillation term: (1 - kd_lambda) * CE + kd_lambda * KL (used with a KD teacher only)
    kd_lambda: float = 0.5
    kd_temperature: float = 1.0
    checkpoint_every: int = 200
    log_every: int = 20
    #: torch threads (0 = torch's default)
    threads: int = 0
    #: what the classifier pools: "cls" (the [CLS] token), "mean" (the mean of the real tokens; nasbert models
    #: only) or "auto": mean for nasbert models, whose last layers may be local convolutions or skipped (their
    #: [CLS] state then carries no summary of the text), cls for any other model
    pooling: str = "auto"
    #: how a pair task's two texts are read (nasbert models only): "cross" (one sequence [CLS] a [SEP] b [SEP], as
    #: BERT) or "bi" (each text encoded apart and the classifier reads [u, v, |u - v|, u * v], Sentence-BERT's
    #: classifier: a model with one or two attention layers has too few to relate two texts read as one)
    pair_encoding: str = "cross"
    #: keep the word-embedding matrix as it is (nasbert's probe: every candidate shares the teacher's, so training
    #: it costs time, most of a small model's step, and says nothing about the candidate)
    freeze_word_embeddings: bool = False

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                    "max_seq_len": self.max_seq_len, "eval_batch_size": self.eval_batch_size,
                    "checkpoint_every": self.checkpoint_every,
                    "log_every": self.log_every, "kd_temperature": self.kd_temperature}
        for key, value in positive.items():
            if not value > 0:
                raise ConfigError(f"finetune {key} must be > 0, got {value}")
        if self.evals_per_epoch < 0:
            raise ConfigError(f"finetune evals_per_epoch must be >= 0 (0: only after the last step), got "
                              f"{self.evals_per_epoch}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"finetune warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.kd_lambda <= 1.0:
            raise ConfigError(f"finetune kd_lambda must be in [0, 1], got {self.kd_lambda}")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise ConfigError(f"finetune max_train_examples must be >= 1 or null, got {self.max_train_examples}")
        if self.pooling not in ("auto", "cls", "mean"):
            raise ConfigError(f"finetune pooling must be auto, cls or mean, got {self.pooling!r}")
        if self.pair_encoding not in ("cross", "bi"):
            raise ConfigError(f"finetune pair_encoding must be cross or bi, got {self.pair_encoding!r}")
        if self.max_seq_len < 8:
            raise ConfigError(f"finetune max_seq_len must be at least 8, got {self.max_seq_len}")

    @classmethod
    def from_dict(cls, data: dict) -> FinetuneConfig:
        return from_mapping(cls, data, prefix="finetune")

    def to_dict(self) -> dict:
        return to_mapping(self)


@dataclass
class FinetuneResult:
    """What :func:`finetune` produced."""

    out: Path
    model_dir: Path
    #: dev metrics of the final model
    metrics: dict[str, float]
    #: the best evaluation over the run (metrics, step, epoch)
    best: dict[str, Any]
    seconds: float
    steps: int
    resumed: bool = False


# ------------------------------------------------------------------------------------------------ model


def _resolve_model_dir(model: str | os.PathLike) -> str:
    from ..teacher import locate_model

    kind, value = locate_model(model)
    if kind == "not a model directory":
        raise FinetuneError(f"{value!r} is not a model directory (no config.json): pass an exported nasbert model "
                            "(a member of a family), a Hugging Face BERT directory, 'builtin' or a hub id")
    if kind == "missing":
        raise FinetuneError(f"model directory {value!r} does not exist: pass an exported nasbert model, a Hugging "
                            "Face BERT directory, 'builtin' (the built-in teacher) or a hub id")
    return value


def load_classifier(model: str | os.PathLike, task: TaskSpec, *, seed: int = 0, pooling: str = "auto",
                    reference_size: int | None = None, pair_encoding: str = "cross"):
    """A sequence classifier for ``task`` from a backbone or classifier directory, and its tokenizer.

    nasbert models get :class:`~nasbert.modeling.NasBertForSequenceClassification` (``pooling`` "cls" or
    "mean" chooses what its pooler reads; "auto" is mean), any other model ``AutoModelForSequenceClassification``
    (which pools [CLS]; "mean" is refused). ``reference_size`` (nasbert models only) adds RefBERT's reference
    input of that width. ``pair_encoding`` "bi" (nasbert models and pair tasks only) encodes a pair's texts apart
    (:class:`~nasbert.modeling.NasBertConfig`). New heads (and the reference projection) are initialised from
    ``seed``.
    """
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    from .. import modeling  # noqa: F401  registers the nasbert model type with the Auto classes

    source = _resolve_model_dir(model)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise FinetuneError(f"cannot load a model config from {source!r} ({e}); offline, pass a local directory "
                            "or 'builtin'") from None
    labels = {"num_labels": task.num_labels,
              "problem_type": "regression" if task.is_regression else "single_label_classification"}
    if task.label_names:
        labels["id2label"] = dict(enumerate(task.label_names))
        labels["label2id"] = {name: i for i, name in enumerate(task.label_names)}
    old = getattr(config, "num_labels", None)
    classifier = any("SequenceClassification" in a for a in getattr(config, "architectures", None) or ())
    if classifier and old != task.num_labels:
        raise FinetuneError(f"{source!r} is already a classifier with {old} labels; task {task.name} needs "
                            f"{task.num_labels}: start from the backbone (the exported model directory)")
    torch.manual_seed(seed)  # the new pooler / classifier weights
    kwargs: dict[str, Any] = dict(labels)
    if config.model_type == "bert":
        kwargs["attn_implementation"] = "eager"  # traceable for ONNX, same numbers
    if pooling == "mean" and config.model_type != "nasbert":
        raise FinetuneError(f"--pooling applies to nasbert models; {source!r} is a {config.model_type!r} model, "
                            "whose classifier pools the [CLS] token")
    if pair_encoding == "bi":
        if len(task.text_fields) != 2:
            raise FinetuneError(f"pair encoding 'bi' reads two texts and task {task.name} has one "
                                f"({', '.join(task.text_fields)}): leave --pair-encoding at cross")
        if config.model_type != "nasbert":
            raise FinetuneError(f"pair encoding 'bi' applies to nasbert models; {source!r} is a "
                                f"{config.model_type!r} model: leave --pair-encoding at cross")
        if reference_size is not None:
            raise FinetuneError("pair encoding 'bi' encodes each text of a pair apart and RefBERT's references join "
                                "one sequence's attention: fine-tune with one of them")
    if classifier and config.model_type == "nasbert" and getattr(config, "pair_encoding", "cross") != pair_encoding:
        raise FinetuneError(f"{source!r} is a classifier with pair encoding {config.pair_encoding!r}, not "
                            f"{pair_encoding!r}: fine-tune it with --pair-encoding {config.pair_encoding}, or start "
                            "from the backbone (the exported model directory)")
    existing = getattr(config, "reference_size", None)
    if reference_size is not None and config.model_type != "nasbert":
        raise FinetuneError(f"reference samples (RefBERT) need a nasbert model, whose first mha layer reads them; "
                            f"{source!r} is a {config.model_type!r} model: fine-tune it without --references")
    if reference_size is not None and not any("mha" in b["ops"] for b in config.blocks):
        raise FinetuneError(f"reference samples need an mha layer (RefBERT joins them to the first mha layer's keys "
                            f"and values) and {source!r} has none: pick a model with an mha layer, or fine-tune "
                            "without --references")
    if existing is not None and reference_size != existing:
        raise FinetuneError(
            f"{source!r} was fine-tuned with {existing}-wide reference samples; "
            + ("pass --references with a pool of the same teacher" if reference_size is None else
               f"the pool's states are {reference_size}-wide: use a pool built with the same teacher"))
    if config.model_type == "nasbert":
        from ..modeling import NasBertForSequenceClassification

        kwargs["classifier_pooling"] = "mean" if pooling == "auto" else pooling
        kwargs["pair_encoding"] = pair_encoding
        if reference_size is not None:
            kwargs["reference_size"] = reference_size
        net = NasBertForSequenceClassification.from_pretrained(source, **kwargs)
    else:
        net = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source)
    return net, tokenizer, source


# ------------------------------------------------------------------------------------------------ data


@dataclass
class Encoded:
    """Token ids of a list of examples (no padding) and their labels."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: np.ndarray  # (N,) int64 or float32
    #: with references: the pool index of each example's reference sample (N,)
    neighbours: np.ndarray | None = None
    #: pairs encoded apart (``pair_encoding="bi"``): the second text's ids; ``input_ids`` then hold the first text
    input_ids_b: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_examples(examples: list[Example], tokenizer, *, max_seq_len: int, regression: bool,
                    pair_encoding: str = "cross") -> Encoded:
    """Tokenise (pairs as ``[CLS] a [SEP] b [SEP]``), truncating the longer text of a pair first; with
    ``pair_encoding="bi"``, each text of a pair as a sequence of its own, each cut to ``max_seq_len // 2`` tokens
    (the two together no longer than one cross-encoded pair)."""
    a = [e.text_a for e in examples]
    b = [e.text_b for e in examples]
    pairs = any(t is not None for t in b)
    labels = np.asarray([e.label for e in examples], dtype=np.float32 if regression else np.int64)
    if pair_encoding == "bi":
        if not pairs:
            raise FinetuneError("pair encoding 'bi' needs examples with two texts")
        first, second = (tokenizer(texts, truncation=True, max_length=max_seq_len // 2, return_token_type_ids=True)
                         for texts in (a, [t or "" for t in b]))
        return Encoded(list(first["input_ids"]), list(first["token_type_ids"]), labels,
                       input_ids_b=list(second["input_ids"]))
    enc = tokenizer(a, [t or "" for t in b] if pairs else None, truncation=True, max_length=max_seq_len,
                    return_token_type_ids=True)
    return Encoded(list(enc["input_ids"]), list(enc["token_type_ids"]), labels)


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    """(len(seqs), longest) int64: each sequence at the start of its row, ``value`` after it."""
    out = torch.full((len(seqs), max(len(x) for x in seqs)), value, dtype=torch.long)
    for r, x in enumerate(seqs):
        out[r, :len(x)] = torch.as_tensor(x)
    return out


def _collate(data: Encoded, rows: np.ndarray, pad_id: int, references=None) -> dict[str, torch.Tensor]:
    """A padded batch of ``rows``; with ``references`` (a ReferencePool) and ``data.neighbours``, also the
    reference states and mask of the rows' reference samples; for pairs encoded apart, the second texts too."""
    first = [data.input_ids[i] for i in rows]
    batch = {"input_ids": _pad(first, pad_id), "attention_mask": _pad([[1] * len(x) for x in first], 0),
             "token_type_ids": _pad([data.token_type_ids[i] for i in rows], 0)}
    if data.input_ids_b is not None:  # the second texts of pairs encoded apart
        second = [data.input_ids_b[i] for i in rows]
        batch.update(input_ids_b=_pad(second, pad_id), attention_mask_b=_pad([[1] * len(x) for x in second], 0))
    if references is not None:
        batch["reference_states"], batch["reference_mask"] = references.gather(data.neighbours[rows])
    return batch


def resolve_device(device: str) -> torch.device:
    """The device to fine-tune on: ``auto`` is the first CUDA GPU where torch sees one, else the CPU; ``cpu``;
    ``cuda`` or ``cuda:N``, refused where torch sees no such GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        found = torch.device(device)
    except RuntimeError:
        raise FinetuneError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if found.type not in ("cpu", "cuda"):
        raise FinetuneError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    if found.type == "cuda":
        if not torch.cuda.is_available():
            raise FinetuneError(f"device {device!r} asked for, but torch sees no CUDA GPU here (torch "
                                f"{torch.__version__}): use --device cpu, or install the torch build for your CUDA")
        if found.index is not None and found.index >= torch.cuda.device_count():
            raise FinetuneError(f"device {device!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s): "
                                f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return found


def _device_name(device: torch.device) -> str:
    return "cpu" if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})"


def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


@torch.no_grad()
def predict(model, data: Encoded, *, batch_size: int, pad_id: int, progress: bool = False,
            desc: str = "predict", references=None) -> np.ndarray:
    """Logits (N, num_labels) of ``model`` over ``data`` in its order; batches sorted by length for speed. A model
    with reference inputs needs ``references`` (the ReferencePool of ``data.neighbours``)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = np.argsort([len(x) for x in data.input_ids], kind="stable")
    out = np.zeros((len(data), model.config.num_labels), dtype=np.float32)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False, disable=not progress):
        rows = order[start : start + batch_size]
        out[rows] = model(**to_device(_collate(data, rows, pad_id, references), device)).logits.float().cpu().numpy()
    model.train(was_training)
    return out


def predict_onnx(path: str | os.PathLike, data: Encoded, *, batch_size: int, pad_id: int, threads: int = 0,
                 desc: str = "predict onnx", progress: bool = False) -> np.ndarray:
    """:func:`predict` with an exported classifier graph (``model.onnx`` or ``model.int8.onnx``, logits output)
    in ONNX Runtime on the CPU; ``threads`` 0 = ONNX Runtime's default."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    order = np.argsort([len(x) for x in data.input_ids], kind="stable")
    out = None
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False, disable=not progress):
        rows = order[start : start + batch_size]
        feeds = {k: v.numpy() for k, v in _collate(data, rows, pad_id).items() if k in names}
        logits = session.run(None, feeds)[0]
        if out is None:
            out = np.zeros((len(data), logits.shape[-1]), dtype=np.float32)
        out[rows] = logits
    return out


def int8_classifier(model, directory: Path, spec, dev: Encoded, *, batch_size: int, pad_id: int,
                    threads: int = 0) -> dict:
    """Write ``directory/model.int8.onnx`` from its ``model.onnx`` (:func:`~nasbert.onnxio.export_int8`) and
    score both graphs on ``dev``: ``{"error": relative logit error, "dev": int8 metrics, "dev_fp32_onnx": ...}``.
    The bound that matters for a classifier is its score, so the graph is written whatever its logit error; the
    scores are recorded side by side."""
    from ..onnxio import export_int8

    report = export_int8(model, directory / "model.onnx", directory / "model.int8.onnx", max_error=math.inf)
    scores = {}
    for key, name in (("dev_fp32_onnx", "model.onnx"), ("dev", "model.int8.onnx")):
        logits = predict_onnx(directory / name, dev, batch_size=batch_size, pad_id=pad_id, threads=threads)
        scores[key] = compute_metrics(spec, logits, dev.labels)
    return {"error": report["error"], "bytes": report["bytes"], **scores}


# ------------------------------------------------------------------------------------------------ training


def _optimizer(model, config: FinetuneConfig, total_steps: int):
    """Block-wise training's AdamW (no decay on biases and norms) and warm-up + linear decay, with the usual
    fine-tuning betas (0.9, 0.999)."""
    from ..training.blockwise import make_optimizer
    from ..training.config import TrainConfig

    settings = TrainConfig(steps=total_steps, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.999),
                           warmup_steps=int(config.warmup_ratio * total_steps), schedule="linear")
    return make_optimizer(((n, p) for n, p in model.named_parameters() if p.requires_grad), settings, total_steps)


def _loss(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None, *, regression: bool,
          kd_lambda: float, temperature: float) -> torch.Tensor:
    if regression:
        task = F.mse_loss(logits.squeeze(-1), labels)
        if teacher is None:
            return task
        return (1 - kd_lambda) * task + kd_lambda * F.mse_loss(logits.squeeze(-1), teacher.squeeze(-1))
    task = F.cross_entropy(logits, labels)
    if teacher is None:
        return task
    # KL(teacher || student) on temperature-softened distributions, scaled by T^2 (Hinton et al.)
    kd = F.kl_div(F.log_softmax(logits / temperature, -1), F.log_softmax(teacher / temperature, -1),
                  reduction="batchmean", log_target=True) * temperature ** 2
    return (1 - kd_lambda) * task + kd_lambda * kd


def _request(model_source: str, task: TaskData, config: FinetuneConfig, kd_teacher: str | None,
             references: dict | None = None) -> dict:
    request = {"model": model_source, "task": dataclasses.asdict(task.task), "data": task.source,
               "train_examples": len(task.train), "dev_examples": len(task.dev), "kd_teacher": kd_teacher,
               "config": config.to_dict()}
    if references is not None:  # only then, so that the records of runs without references read back the same
        request["references"] = references
    return json.loads(json.dumps(request))  # as it reads back from finetune.json (tuples become lists)


def _check_out(out: Path, request: dict, force: bool) -> bool:
    """Prepare ``out``; True when it holds a finished run of the same request."""
    import shutil

    path = out / "finetune.json"
    if out.exists() and not path.is_file() and any(out.iterdir()):
        if not force:
            raise FinetuneError(f"{out} exists and is not a fine-tuning directory: choose another --out or pass "
                                "--force")
        shutil.rmtree(out)
    if path.is_file():
        old = json.loads(path.read_text())
        with contextlib.suppress(ConfigError, KeyError, TypeError):  # keys added since take their defaults
            old["config"] = FinetuneConfig.from_dict(old["config"]).to_dict()
        if old != request:
            if not force:
                changed = sorted(k for k in set(old) | set(request) if old.get(k) != request.get(k))
                raise FinetuneError(f"{out} holds a fine-tuning run with other settings ({', '.join(changed)} differ): "
                                    "choose another --out, or pass --force to start it again")
            shutil.rmtree(out)
        elif force:
            shutil.rmtree(out)
    return (out / "metrics.json").is_file()


def _teacher_logits(kd_teacher: str, task: TaskData, train: Encoded, tokenizer, config: FinetuneConfig, out: Path,
                    progress: bool, device: torch.device = torch.device("cpu")) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification

    path = out / TEACHER_LOGITS
    if path.is_file():
        return _load(path)
    source = _resolve_model_dir(kd_teacher)
    teacher = AutoModelForSequenceClassification.from_pretrained(source)
    if teacher.config.num_labels != task.task.num_labels:
        raise FinetuneError(f"KD teacher {source!r} predicts {teacher.config.num_labels} labels; task "
                            f"{task.task.name} has {task.task.num_labels}: pass a teacher fine-tuned on this task")
    from transformers import AutoTokenizer

    if AutoTokenizer.from_pretrained(source).get_vocab() != tokenizer.get_vocab():
        raise FinetuneError(f"KD teacher {source!r} uses another vocabulary than the student; distillation needs "
                            "the same tokenizer")
    encoding = getattr(teacher.config, "pair_encoding", "cross")
    if encoding != config.pair_encoding:  # the teacher reads the pairs its own way
        train = encode_examples(task.train, tokenizer, max_seq_len=config.max_seq_len,
                                regression=task.task.is_regression, pair_encoding=encoding)
    logger.info("KD teacher %s: predicting the %d training examples once", source, len(train))
    logits = torch.from_numpy(predict(teacher.to(device), train, batch_size=config.eval_batch_size,
                                      pad_id=tokenizer.pad_token_id or 0, progress=progress, desc="teacher"))
    _save(logits, path)
    return logits


def _neighbours(pool, task: TaskData, tokenizer, out: Path, progress: bool) -> dict[str, np.ndarray]:
    """The reference sample of every training example (self-excluded) and dev example, and their TF-IDF cosine
    similarities; computed once and cached in ``OUT/neighbours.pt``."""
    path = out / NEIGHBOURS
    if path.is_file():
        cached = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in _load(path).items()}
        if cached.get("pool_sha256") == pool.meta.get("sha256") and len(cached["train"]) == len(task.train) \
                and len(cached["dev"]) == len(task.dev):
            return cached
    result: dict = {"pool_sha256": pool.meta.get("sha256")}
    regression = task.task.is_regression
    for split, examples, training in (("train", task.train, True), ("dev", task.dev, False)):
        # Tokenised as the pool's samples were, so that a training example and its own pool row hash alike.
        enc = encode_examples(examples, tokenizer, max_seq_len=pool.max_length, regression=regression)
        indices, scores = np.zeros(len(enc), np.int64), np.zeros(len(enc))
        for start in tqdm(range(0, len(enc), 256), desc=f"references {split}", unit="batch", leave=False,
                          disable=not progress):
            rows = np.arange(start, min(start + 256, len(enc)))
            batch = _collate(enc, rows, tokenizer.pad_token_id or 0)
            found = pool.retrieve(batch["input_ids"], batch["attention_mask"],
                                  exclude=np.full(len(rows), -1) if training else None)
            indices[rows], scores[rows] = found.indices, found.scores
        result[split], result[f"{split}_similarity"] = indices, scores
    _save({k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in result.items()}, path)
    logger.info("reference samples: mean TF-IDF similarity %.3f (train, self excluded), %.3f (dev)",
                result["train_similarity"].mean(), result["dev_similarity"].mean())
    return result


def _load(path: Path) -> Any:
    """A file this module wrote: tensors, lists, dicts, numbers and strings only. Run directories are shared
    between machines, and unpickling anything else can run code, so such a file is refused, not loaded."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        raise FinetuneError(f"{path} holds {found.group(1) if found else 'objects'} besides tensors and numbers, and "
                            "is not loaded, since unpickling that can run code: delete it (it is computed again; "
                            "for checkpoint.pt the run starts again) or rerun with --force") from None


def _save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically (readers see the old file or the new one)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    fault_point("finetune.checkpoint")  # written, not yet in place
    os.replace(tmp, path)


def _write_model(model, tokenizer, directory: Path, *, onnx: bool, references: Path | None = None) -> dict:
    from ..export.hf import write_hf_files

    report: dict = {}
    with atomic_dir(directory) as tmp:
        write_hf_files(model, tmp, tokenizer=tokenizer)
        if references is not None:  # the model cannot run without its pool: it travels with it
            from .refbert import copy_pool

            copy_pool(references, tmp / "references")
        if onnx:
            from ..onnxio import export_onnx

            report = export_onnx(model, tmp / "model.onnx", output="logits")
    return report


def finetune(
    model: str | os.PathLike,
    task: TaskData,
    *,
    out: str | os.PathLike,
    config: FinetuneConfig = FinetuneConfig(),
    kd_teacher: str | os.PathLike | None = None,
    references: str | os.PathLike | None = None,
    onnx: bool = True,
    int8_graph: bool = True,
    force: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    device: str = "auto",
) -> FinetuneResult:
    """Fine-tune ``model`` (a nasbert export, an HF BERT directory, ``"builtin"`` or a hub id) on ``task``.

    ``references`` is a reference pool folder (``nasbert references build``): the model is fine-tuned with
    RefBERT's reference samples, and ``OUT/model/references/`` holds a copy of the pool.
    ``stop_after`` ends the call after that many optimiser steps in total, leaving a checkpoint to resume
    from (for tests and time-sliced jobs); the call then returns ``None``. With ``onnx`` and ``int8_graph``
    (and no references), ``model/model.int8.onnx`` is written too and ``metrics.json``'s ``int8`` has its dev
    score next to the fp32 graph's. ``device`` (:func:`resolve_device`): where the model trains and is evaluated,
    ``auto`` a CUDA GPU where torch sees one; it is not part of the run's settings, so a run stopped on one device
    resumes on another (each device rounds differently: the scores of two devices differ a little). The model is
    written, exported and its ONNX graphs scored on the CPU whatever the device.
    """
    where = resolve_device(device)  # before anything is written
    with torch_threads(config.threads):  # process-wide: the caller's count comes back afterwards
        return _finetune(model, task, out=out, config=config, kd_teacher=kd_teacher, references=references,
                         onnx=onnx, int8_graph=int8_graph, force=force, progress=progress, stop_after=stop_after,
                         device=where)


#: what ``finetune_lr_grid`` writes in its output directory
LR_GRID_FILE = "lr_grid.json"

#: ``nasbert finetune``'s rates for a nasbert model when none is given: shallow models fine-tune best at higher
#: rates than BERT's usual 2e-5..5e-5 (fewer layers to keep stable, a freshly initialised head over fewer
#: features), so the grid starts at 2e-4 and goes on to 1e-3 while the larger rate wins
AUTO_LRS = (2e-4, 5e-4)
AUTO_EXTEND = (1e-3,)


def is_nasbert_model(model: str | os.PathLike) -> bool:
    """Whether ``model`` (a directory, 'builtin' or a hub id) is a local nasbert model (``model_type: nasbert``)."""
    from ..teacher import locate_model

    kind, value = locate_model(model)
    if kind != "path":
        return False
    try:
        return json.loads((Path(value) / "config.json").read_text()).get("model_type") == "nasbert"
    except (OSError, ValueError, AttributeError):
        return False  # an unreadable config is reported by the loader, with its own message


@dataclass
class LrGridResult:
    """What :func:`finetune_lr_grid` produced: the run at the best point, and every point's final dev score."""

    out: Path
    lr: float
    best: FinetuneResult
    #: the main metric's final dev value at each point, named as :func:`grid_point` names them
    scores: dict[str, float]
    #: the pair encoding of the best point
    pair_encoding: str = "cross"


def grid_point(lr: float, encoding: str = "cross") -> str:
    """A grid point's name: the rate, and the pair encoding unless it is cross (``0.0002``, ``0.0002-bi``); its run
    is ``OUT/lr-<name>/``."""
    return f"{lr:g}" if encoding == "cross" else f"{lr:g}-{encoding}"


def finetune_lr_grid(model: str | os.PathLike, task: TaskData, *, out: str | os.PathLike, lrs,
                     config: FinetuneConfig = FinetuneConfig(), pair_encodings=None, extend=(), force: bool = False,
                     **kwargs) -> LrGridResult:
    """:func:`finetune` once per point of a grid of learning rates ``lrs`` and, on a pair task, pair encodings
    ``pair_encodings`` (default: ``config.pair_encoding`` alone), each in ``OUT/lr-<point>/`` (:func:`grid_point`;
    a run of its own: resumable, and read, not trained again, once finished), keeping the point whose final dev
    score on the task's main metric is the best (ties: the encoding listed first, then the smaller rate).

    ``extend``: larger rates tried in turn for each encoding, each only while the largest rate so far is that
    encoding's best. ``OUT/lr_grid.json`` records every point's score and the choice; the model to use is
    ``OUT/lr-<point>/model``. Small models often want a larger rate than the teacher they come from, and read a
    pair better apart (docs/benchmarks.md). The score chosen on is the one reported, so it is a little
    optimistic: compare models chosen the same way. ``kwargs`` go to :func:`finetune` (not ``stop_after``)."""
    lrs = sorted({float(lr) for lr in lrs})
    extend = sorted({float(lr) for lr in extend})
    encodings = tuple(dict.fromkeys(pair_encodings or (config.pair_encoding,)))
    if any(not (math.isfinite(lr) and lr > 0) for lr in [*lrs, *extend]) or not lrs:
        raise FinetuneError(f"learning rates must be positive numbers, got {lrs + extend}")
    if len(lrs) * len(encodings) < 2 and not extend:
        raise FinetuneError(f"a grid needs two or more points, got the rate {lrs[0]:g} and the pair encoding "
                            f"{encodings[0]}: give two or more rates (or pair encodings), or run finetune once")
    for encoding in encodings:  # FinetuneConfig's own check (ConfigError), before any run
        dataclasses.replace(config, pair_encoding=encoding)
    spec = task.task
    if encodings != ("cross",) and len(spec.text_fields) != 2:
        raise FinetuneError(f"task {spec.name} has one text field; pair encodings other than cross apply to pair "
                            "tasks only: leave --pair-encoding out")
    if "stop_after" in kwargs:
        raise TypeError("finetune_lr_grid() does not take stop_after")
    resolve_device(kwargs.get("device", "auto"))  # a device that is not there: refused before anything is removed
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        foreign = sorted(p.name for p in out.iterdir() if p.name != LR_GRID_FILE and not p.name.startswith("lr-"))
        if foreign and not force:
            raise FinetuneError(f"{out} exists and is not a learning-rate grid's directory (it holds "
                                f"{', '.join(foreign[:3])}): choose another --out or pass --force")
        if force:
            import shutil

            shutil.rmtree(out)

    def run(lr: float, encoding: str) -> float:
        logger.info("learning-rate grid: %s at lr %g (%s)", spec.name, lr, encoding)
        runs[lr, encoding] = finetune(model, task, out=out / f"lr-{grid_point(lr, encoding)}",
                                      config=dataclasses.replace(config, lr=lr, pair_encoding=encoding), **kwargs)
        score = float(runs[lr, encoding].metrics[spec.main_metric])
        return score if math.isfinite(score) else -math.inf  # NaN: worst

    runs: dict[tuple[float, str], FinetuneResult] = {}
    scores: dict[tuple[float, str], float] = {}
    for encoding in encodings:
        grid = {lr: run(lr, encoding) for lr in lrs}
        for lr in extend:  # a larger rate, only while the largest so far is this encoding's best
            if lr <= max(grid):
                continue
            if max(grid, key=lambda r: (grid[r], -r)) != max(grid):
                break
            grid[lr] = run(lr, encoding)
        scores.update({(lr, encoding): v for lr, v in grid.items()})
    lr, encoding = max(scores, key=lambda p: (scores[p], -encodings.index(p[1]), -p[0]))
    named = {grid_point(*p): float(runs[p].metrics[spec.main_metric]) for p in scores}
    atomic_write_json(out / LR_GRID_FILE, {
        "task": spec.name, "metric": spec.main_metric, "lrs": sorted({p[0] for p in scores}),
        "pair_encodings": list(encodings), "scores": named, "lr": lr, "pair_encoding": encoding,
        "model": f"lr-{grid_point(lr, encoding)}/model",
        "note": "each point's final dev score; the best is chosen on the same dev set it is reported on"})
    return LrGridResult(out, lr, runs[lr, encoding], named, encoding)


def _finetune(model, task, *, out, config, kd_teacher, references, onnx, int8_graph, force, progress, stop_after,
              device):
    out = Path(out)
    spec = task.task
    if not task.train or not task.dev:
        raise FinetuneError(f"task {spec.name}: the training set has {len(task.train)} and the dev set "
                            f"{len(task.dev)} examples; both must be non-empty")
    if kd_teacher is not None:
        kd_teacher = _resolve_model_dir(kd_teacher)
    source = _resolve_model_dir(model)
    pool = pool_record = None
    if references is not None:
        from .refbert import ReferencePool

        pool = ReferencePool.load(references)
        pool_record = {"path": str(references), "sha256": pool.meta.get("sha256"), "samples": pool.num_samples}
    request = _request(source, task, config, None if kd_teacher is None else str(kd_teacher), pool_record)
    if _check_out(out, request, force):
        metrics = json.loads((out / "metrics.json").read_text())
        logger.info("%s is a finished fine-tuning run; nothing to do", out)
        return FinetuneResult(out, out / "model", metrics["dev"], metrics["best"], metrics["seconds"],
                              metrics["steps"], resumed=True)

    net, tokenizer, _ = load_classifier(source, spec, seed=config.seed, pooling=config.pooling,
                                        reference_size=None if pool is None else pool.hidden_size,
                                        pair_encoding=config.pair_encoding)
    net.to(device)
    if pool is not None:
        pool.check(tokenizer=tokenizer, where=str(references))
    pad_id = tokenizer.pad_token_id or 0
    train, dev = (encode_examples(examples, tokenizer, max_seq_len=config.max_seq_len, regression=spec.is_regression,
                                  pair_encoding=config.pair_encoding) for examples in (task.train, task.dev))
    atomic_write_json(out / "finetune.json", request)  # only once the model and the data have loaded
    if pool is not None:
        found = _neighbours(pool, task, tokenizer, out, progress)
        train.neighbours, dev.neighbours = found["train"], found["dev"]
        pool_record.update(train_similarity=float(found["train_similarity"].mean()),
                           dev_similarity=float(found["dev_similarity"].mean()))
    teacher_logits = None
    if kd_teacher is not None:
        teacher_logits = _teacher_logits(str(kd_teacher), task, train, tokenizer, config, out, progress, device)

    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = max(1, math.ceil(config.epochs * steps_per_epoch))
    eval_every = max(1, math.ceil(steps_per_epoch / config.evals_per_epoch)) if config.evals_per_epoch else None
    if config.freeze_word_embeddings:
        net.get_input_embeddings().weight.requires_grad_(False)
    optimizer, schedule = _optimizer(net, config, total_steps)
    step, seconds, best, history = 0, 0.0, None, []
    resumed = (out / CHECKPOINT).is_file()
    if resumed:
        state = _load(out / CHECKPOINT)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:  # dropout draws from the GPU's generator
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        step, seconds, best, history = state["step"], state["seconds"], state["best"], state["history"]
        logger.info("resuming %s at step %d of %d", out, step, total_steps)
    truncate_jsonl(out / "log.jsonl", step if resumed else -1)  # lines a killed attempt wrote after its checkpoint
    logger.info("fine-tuning %s on %s (%s): %d training / %d dev examples, %d steps (%d per epoch), batch %d, lr %.1e"
                "%s%s", source, spec.name, _device_name(device), len(train), len(dev), total_steps, steps_per_epoch,
                config.batch_size, config.lr,
                f", KD from {kd_teacher} (lambda {config.kd_lambda})" if kd_teacher else "",
                f", references from {references} ({pool.num_samples} samples)" if pool is not None else "")

    def evaluate() -> dict:
        logits = predict(net, dev, batch_size=config.eval_batch_size, pad_id=pad_id, progress=False, references=pool)
        return compute_metrics(spec, logits, dev.labels)

    net.train()
    log = (out / "log.jsonl").open("a", encoding="utf-8")
    bar = tqdm(total=total_steps, initial=step, desc=f"finetune {spec.name}", unit="step", disable=not progress)
    start, running = time.perf_counter(), []
    try:
        while step < total_steps:
            epoch, offset = divmod(step, steps_per_epoch)
            order = _epoch_order(len(train), config.seed, epoch)
            rows = order[offset * config.batch_size : (offset + 1) * config.batch_size]
            batch = to_device(_collate(train, rows, pad_id, pool), device)
            labels = torch.from_numpy(train.labels[rows]).to(device)
            teacher = None if teacher_logits is None else teacher_logits[torch.from_numpy(rows)].to(device)
            logits = net(**batch).logits
            loss = _loss(logits, labels, teacher,
                         regression=spec.is_regression, kd_lambda=config.kd_lambda, temperature=config.kd_temperature)
            if not torch.isfinite(loss.detach()):
                raise FinetuneError(f"the loss became {float(loss)} at step {step + 1}: lower --lr")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            running.append(loss.item())
            bar.update(1)
            if step % config.log_every == 0:
                bar.set_postfix(loss=f"{np.mean(running):.4f}")
                log.write(json.dumps({"step": step, "loss": float(np.mean(running)), "lr": schedule.get_last_lr()[0]})
                          + "\n")
                running = []
            end_of_epoch = step % steps_per_epoch == 0
            if step == total_steps or (eval_every is not None and (step % eval_every == 0 or end_of_epoch)):
                metrics = evaluate()
                entry = {"step": step, "epoch": round(step / steps_per_epoch, 3), "dev": metrics}
                history.append(entry)
                log.write(json.dumps(entry) + "\n")
                if best is None or metrics[spec.main_metric] > best["dev"][spec.main_metric]:
                    best = entry
                logger.info("step %d (epoch %.2f): dev %s", step, entry["epoch"],
                            ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                net.train()
            log.flush()
            fault_point("finetune.step")
            if step % config.checkpoint_every == 0 or end_of_epoch or (stop_after is not None and step >= stop_after):
                _save_checkpoint(out / CHECKPOINT, {
                    "model": net.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "step": step, "best": best, "history": history, "seconds": seconds + time.perf_counter() - start})
            if stop_after is not None and step >= stop_after and step < total_steps:
                return None
    finally:
        bar.close()
        log.close()
    seconds += time.perf_counter() - start

    net.eval().to("cpu")  # written and exported on the CPU, whatever it trained on
    final = history[-1]["dev"]
    report = _write_model(net, tokenizer, out / "model", onnx=onnx,
                          references=None if references is None else Path(references))
    int8 = None
    if onnx and int8_graph and pool is None:  # ONNX Runtime's int8 graph of the classifier, scored next to fp32's
        int8 = int8_classifier(net, out / "model", spec, dev, batch_size=config.eval_batch_size, pad_id=pad_id,
                               threads=config.threads)
        logger.info("int8 classifier (model/model.int8.onnx): dev %s (fp32 graph %s), relative logit error %.3f",
                    ", ".join(f"{k} {v:.4f}" for k, v in int8["dev"].items()),
                    ", ".join(f"{k} {v:.4f}" for k, v in int8["dev_fp32_onnx"].items()), int8["error"])
    metrics = {"task": spec.name, "model": source, "dev": final, "main_metric": spec.main_metric, "best": best,
               "history": history, "steps": step, "epochs": config.epochs, "seconds": round(seconds, 1),
               "train_examples": len(train), "dev_examples": len(dev),
               "params": sum(p.numel() for p in net.parameters()),
               "kd_teacher": None if kd_teacher is None else str(kd_teacher), "seed": config.seed,
               "device": _device_name(device),
               "references": pool_record, "onnx_max_abs_diff": report.get("max_abs_diff"), "int8": int8}
    atomic_write_json(out / "metrics.json", metrics)
    (out / CHECKPOINT).unlink(missing_ok=True)
    logger.info("done in %.0f s: dev %s; model in %s", seconds, ", ".join(f"{k} {v:.4f}" for k, v in final.items()),
                out / "model")
    return FinetuneResult(out, out / "model", final, best, seconds, step, resumed=resumed)
