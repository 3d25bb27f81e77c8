"""The probe: a short fine-tune on a small, fixed sentence-pair task, the proxy that ranks candidates of one budget.

The cheap proxies compare a candidate's final hidden states with the teacher's; within one budget they do not rank
fine-tuned quality (docs/benchmarks.md, "A proxy that ranks within a budget"): a candidate that keeps a few of the
teacher's top sub-layers matches the teacher's final states better and fine-tunes worse than one that keeps a
coherent stack of its bottom layers. What a user does with a member is fine-tune it, so the proxy with the reason to
rank is a short fine-tune, as AutoTinyBERT and BootstrapNAS rank their candidates. The probe task is a sentence-pair
task (pairs are where the candidates of one size differ most) that is none of the tasks a family is reported on.

The built-in probe is QNLI (GLUE; question / sentence pairs from Wikipedia, CC BY-SA 4.0 as SQuAD v1.1): 2,000
pairs to train on and 1,000 to score on, the first 3,000 rows of its dev set, shipped in
``nasbert/data/probe_qnli.tsv.gz`` (:func:`write_builtin_probe` makes it), so that the default run ranks offline.
Any task :func:`~nasbert.finetune.load_task` reads can replace it (``search.probe``).

>>> probe = Probe(load_probe("builtin"), work_dir="runs/default/search/probe")  # doctest: +SKIP
>>> probe.score(model, tokenizer, name="3x-trial-17")                           # doctest: +SKIP
74.0
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import ConfigError
from ..io import atomic_write_bytes
from ..finetune.tasks import Example, TaskData, TaskError, get_task, load_task

__all__ = ["BUILTIN_PROBE", "Probe", "ProbeSettings", "load_probe", "weights_digest", "write_builtin_probe"]

logger = logging.getLogger(__name__)

BUILTIN_PROBE = Path(__file__).resolve().parent.parent / "data" / "probe_qnli.tsv.gz"
#: rows of the built-in probe: the first PROBE_TRAIN train, the next PROBE_TEST scored
PROBE_TRAIN, PROBE_TEST = 2000, 1000


@dataclass(frozen=True)
class ProbeSettings:
    """The probe's recipe, the same for every candidate. These are priors, not values fitted on any reported task:
    two epochs of 2,000 pairs is the smaller of two runs tried on QNLI alone in which candidates left chance (one
    epoch of 1,000 left the first model tried at chance); 2e-4 is the rate the panel's small models fine-tune at;
    64 tokens hold a QNLI pair. The word embeddings are not trained: every candidate has the teacher's, so
    training them says nothing about a candidate, and it is most of a small model's step (the within-budget Kendall
    tau was measured with and without: docs/benchmarks.md)."""

    epochs: float = 2.0
    lr: float = 2e-4
    max_seq_len: int = 64
    batch_size: int = 32
    seed: int = 0
    #: torch threads of one probe: one, so that probes run side by side (``workers``); on 2 cores two probes of one
    #: thread each ran 1.29x the steps of one probe on two threads (docs/benchmarks.md)
    threads: int = 1
    freeze_word_embeddings: bool = True
    #: probes run at once, each in a process of its own (not part of the recipe: a probe's score is the same
    #: whichever process runs it)
    workers: int = 2


def write_builtin_probe(qnli_dev_tsv: str | os.PathLike, out: str | os.PathLike = BUILTIN_PROBE) -> Path:
    """Write the built-in probe: the header and the first ``PROBE_TRAIN + PROBE_TEST`` rows of QNLI's dev.tsv
    (GLUE layout), gzipped, with a fixed timestamp so that the file is the same byte for byte."""
    lines = Path(qnli_dev_tsv).read_text(encoding="utf-8").splitlines()
    if len(lines) < 1 + PROBE_TRAIN + PROBE_TEST or not lines[0].startswith("index\tquestion\tsentence\tlabel"):
        raise TaskError(f"{qnli_dev_tsv} is not QNLI's dev.tsv with at least {PROBE_TRAIN + PROBE_TEST} rows")
    out = Path(out)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz:
        gz.write(("\n".join(lines[: 1 + PROBE_TRAIN + PROBE_TEST]) + "\n").encode("utf-8"))
    atomic_write_bytes(out, buffer.getvalue())
    return out


def load_probe(task: str = "builtin", *, data_dir: str | os.PathLike | None = None, train: int = PROBE_TRAIN,
               test: int = PROBE_TEST) -> TaskData:
    """The probe task: ``"builtin"`` (QNLI pairs shipped with nasbert), or any task :func:`load_task` reads (with
    ``data_dir``), of which the first ``train`` training rows are trained on and the first ``test`` dev rows
    scored."""
    if train < 1 or test < 1:
        raise TaskError(f"the probe needs at least one training and one test row (got {train}, {test})")
    if task != "builtin":
        data = load_task(task, data_dir=data_dir)
        return TaskData(data.task, data.train[:train], data.dev[:test], data.source)
    spec = get_task("qnli")
    with gzip.open(BUILTIN_PROBE, "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if train + test > len(rows):
        raise TaskError(f"the built-in probe has {len(rows)} rows: train + test must not exceed them "
                        f"(got {train} + {test})")
    examples = [Example(r["question"], r["sentence"], spec.label_names.index(r["label"])) for r in rows]
    return TaskData(spec, examples[:train], examples[PROBE_TRAIN: PROBE_TRAIN + test], str(BUILTIN_PROBE))


def weights_digest(model) -> str:
    """The first 12 hex digits of the sha256 of a model's parameters and buffers, in name order."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


class Probe:
    """Scores models by a short fine-tune on ``task`` (:func:`load_probe`). Each model's run lives in
    ``work_dir/<name>/``; a finished one is read back, not trained again, so a killed export resumes."""

    def __init__(self, task: TaskData, *, work_dir: str | os.PathLike, settings: ProbeSettings = ProbeSettings()):
        self.task, self.work_dir, self.settings = task, Path(work_dir), settings

    def describe(self) -> str:
        return (f"{self.task.task.name} probe ({len(self.task.train)} pairs x {self.settings.epochs:g} epochs, "
                f"scored on {len(self.task.dev)})")

    def _run_before(self, run: Path, config) -> float | None:
        """The score of the finished probe run in ``run`` if it fine-tuned on this probe's rows with ``config``,
        however often it evaluated along the way (its final score is the same), else None."""
        from ..finetune.trainer import FinetuneConfig

        if not (run / "metrics.json").is_file() or not (run / "finetune.json").is_file():
            return None
        metrics, asked = (json.loads((run / f).read_text()) for f in ("metrics.json", "finetune.json"))
        try:
            recipe = replace(FinetuneConfig.from_dict(asked["config"]), evals_per_epoch=config.evals_per_epoch)
        except (ConfigError, KeyError, TypeError):  # a record nasbert can no longer read: run it again
            return None
        rows = (metrics.get("task"), metrics.get("train_examples"), metrics.get("dev_examples"))
        if recipe != config or rows != (self.task.task.name, len(self.task.train), len(self.task.dev)):
            return None
        return 100.0 * float(metrics["dev"][self.task.task.main_metric])

    def config(self):
        """The fine-tuning recipe of every probe run (:class:`~nasbert.finetune.FinetuneConfig`): one evaluation,
        after the last step, since the score is the final one."""
        from ..finetune.trainer import FinetuneConfig

        s = self.settings
        return FinetuneConfig(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, max_seq_len=s.max_seq_len,
                              seed=s.seed, pooling="mean", threads=s.threads, evals_per_epoch=0,
                              freeze_word_embeddings=s.freeze_word_embeddings)

    def recipe_digest(self) -> str:
        """8 hex digits naming this probe's recipe and rows (how often a run evaluates aside)."""
        recipe = {**self.config().to_dict(), "evals_per_epoch": None, "task": self.task.task.name,
                  "train": len(self.task.train), "test": len(self.task.dev)}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]

    def score(self, model, tokenizer, *, name: str) -> float:
        """The probe's main metric (accuracy for QNLI), in percent, of ``model`` fine-tuned on the probe
        (:meth:`score_many` of one model)."""
        return self.score_many([(model, name)], tokenizer)[0]

    def score_many(self, items: Sequence[tuple], tokenizer) -> list[float]:
        """:meth:`score` of every ``(model, name)`` in ``items``, ``settings.workers`` of them at a time, each in a
        process of its own. A model's run is ``work_dir/<name>-<digest of its weights>-<digest of the recipe>/``:
        the same model is not fine-tuned twice with one recipe, and a run of another recipe (an older nasbert's) is
        left where it is."""
        from ..export.hf import save_hf_model

        config = self.config()
        scores: list[float | None] = []
        pending: list[tuple[int, str, Path]] = []
        for i, (model, name) in enumerate(items):
            folder = self.work_dir / f"{name}-{weights_digest(model)}-{self.recipe_digest()}"
            before = self._run_before(folder / "run", config)
            scores.append(before)
            if before is not None:
                logger.info("probe %s: %.2f (run before)", name, before)
                continue
            if not (folder / "model" / "config.json").is_file():
                save_hf_model(model, folder / "model", tokenizer=tokenizer)
            pending.append((i, name, folder))
        jobs = [(folder / "model", self.task, folder / "run", config) for _, _, folder in pending]

        def finished(j: int, metrics: dict, seconds: float) -> None:
            i, name, _ = pending[j]
            scores[i] = 100.0 * float(metrics[self.task.task.main_metric])
            logger.info("probe %s: %.2f (%.0f s)", name, scores[i], seconds)

        workers = min(self.settings.workers, len(jobs))
        if workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            logger.info("probing %d models, %d at a time", len(jobs), workers)
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_die_with_parent) as pool:
                futures = {pool.submit(_fine_tune, job): j for j, job in enumerate(jobs)}
                for future in as_completed(futures):
                    finished(futures[future], *future.result())
        else:
            for j, job in enumerate(jobs):
                finished(j, *_fine_tune(job))
        return scores


def _fine_tune(job: tuple) -> tuple[dict, float]:
    """One probe's fine-tune (in a worker process, or in this one): its dev metrics and seconds."""
    from ..finetune.trainer import finetune

    model_dir, task, out, config = job
    result = finetune(model_dir, task, out=out, onnx=False, progress=False, device="cpu", config=config)
    return result.metrics, result.seconds


def _die_with_parent() -> None:
    """A probe worker ends with the process that started it (Linux: PR_SET_PDEATHSIG), so that a killed export
    leaves no fine-tune writing into the run it resumes."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
