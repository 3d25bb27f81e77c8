"""Profiling a device: the lookup table, whole sampled models, the fitted predictor and its measured accuracy.

::

    RUN/latency/<device-key>/
      device.json                  processor, engine and version, threads, batch, sequence length
      table.json                   median latency of every op at every width (+ table_timings.json)
      measurements.csv             every measured model: arch, params, FLOPs, median / IQR / p10 / p90, split
      predictor.json               the fitted correction (features, normalisation, coefficients)
      accuracy.json                MAPE, worst error and Kendall tau on held-out models, table and predictor
      predicted_vs_measured.png

A profile is self-contained: copy the folder to another machine and load it with ``LatencyProfile(folder)``.
:class:`LatencyProfile` is what the search, the export and the report read of it; no module outside
``nasbert.latency`` names its files.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import ConfigError
from ..io import atomic_dir, fault_point
from ..space import Arch, SearchSpace
from ..supernet import SuperNet
from ..utils import torch_threads
from .measure import OnnxRuntimeEngine, TorchEngine, device_info, measure_interleaved
from .predictor import LatencyPredictor, accuracy
from .table import LatencyTable, build_table, table_keys

__all__ = ["LatencyConfig", "LatencyProfile", "profile_archs", "profile_device", "sample_archs"]

logger = logging.getLogger(__name__)

TEACHER = "teacher"
DEVICE_FILE, TABLE_FILE, PREDICTOR_FILE, ACCURACY_FILE = "device.json", "table.json", "predictor.json", "accuracy.json"


@dataclass(frozen=True)
class LatencyProfile:
    """One device's latency profile, the folder :func:`profile_device` writes: its device description, op table
    and fitted predictor, each read once when first used.

    >>> profile = LatencyProfile.find("runs/default")            # doctest: +SKIP
    >>> profile.predictor.predict(arch), profile.device["key"]   # doctest: +SKIP
    (6.49, 'intel-r-xeon-r-processor-cpu-onnxruntime-t1-b1-s128')
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def complete(self) -> bool:
        """Whether the profile has been written in full (its predictor is the last file to land)."""
        return (self.path / PREDICTOR_FILE).is_file() and (self.path / TABLE_FILE).is_file()

    @cached_property
    def device(self) -> dict:
        """The profiled device: processor, engine and version, threads, batch, sequence length, key."""
        return json.loads((self.path / DEVICE_FILE).read_text(encoding="utf-8"))

    @cached_property
    def table(self) -> LatencyTable:
        return LatencyTable.load(self.path / TABLE_FILE)

    @cached_property
    def predictor(self) -> LatencyPredictor:
        return LatencyPredictor.load(self.path)

    @cached_property
    def accuracy(self) -> dict:
        """Held-out MAPE, worst error and Kendall tau of the table and the predictor."""
        return json.loads((self.path / ACCURACY_FILE).read_text(encoding="utf-8"))

    @classmethod
    def find(cls, run_dir: str | os.PathLike, explicit: str | os.PathLike | None = None) -> LatencyProfile:
        """``explicit`` if given (a profile folder, possibly made on another machine), else the run's only complete
        profile under ``RUN/latency/``."""
        if explicit is not None:
            return cls(Path(explicit))
        latency_dir = Path(run_dir) / "latency"
        found = sorted(p for p in latency_dir.iterdir() if cls(p).complete) if latency_dir.is_dir() else []
        if not found:
            raise FileNotFoundError(f"no latency profile under {latency_dir}: run `nasbert latency --run {run_dir}`, "
                                    "or pass the profile directory of another machine")
        if len(found) > 1:
            raise ValueError(f"{latency_dir} holds {len(found)} latency profiles "
                             f"({', '.join(p.name for p in found)}): choose one with latency_profile=")
        return cls(found[0])


@dataclass(frozen=True)
class LatencyConfig:
    """How a device is profiled. The defaults suit the default run on 2 CPU cores."""

    device: str = "cpu"
    engine: str = "onnxruntime"
    threads: int = 1
    batch: int = 1
    seq_len: int = 128
    #: whole models measured to fit and check the predictor
    archs: int = 60
    #: fraction of them held out for accuracy.json
    heldout_fraction: float = 0.25
    warmup: int = 3
    repeats: int = 20
    rounds: int = 4
    #: models measured together (interleaved with the teacher as a reference) before the next group
    group_size: int = 8
    table_repeats: int = 30
    #: "fp32", or "int8": ops and whole models are timed as ONNX Runtime's dynamic int8 graphs (the teacher,
    #: the drift reference and the base of speed-ups, stays fp32), so the search can target int8 budgets
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "int8"):
            raise ConfigError(f"latency.precision must be fp32 or int8, got {self.precision!r}")
        if self.precision == "int8" and (self.engine, self.device) != ("onnxruntime", "cpu"):
            raise ConfigError("latency.precision: int8 times ONNX Runtime's int8 graphs on the CPU: set "
                              f"latency.engine: onnxruntime and latency.device: cpu (got {self.engine} on "
                              f"{self.device})")
        if self.engine not in ("onnxruntime", "torch"):
            raise ConfigError(f"latency.engine must be onnxruntime or torch, got {self.engine!r}")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"latency.device must be cpu or cuda, got {self.device!r}")
        for name in ("threads", "batch", "seq_len", "repeats", "rounds", "group_size", "table_repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"latency.{name} must be at least 1, got {getattr(self, name)}")
        if self.archs < 4:
            raise ConfigError(f"latency.archs must be at least 4 (some to fit, some to check), got {self.archs}")
        if not 0 < self.heldout_fraction < 1:
            raise ConfigError(f"latency.heldout_fraction must be in (0, 1), got {self.heldout_fraction}")


def sample_archs(space: SearchSpace, n: int, rng: np.random.Generator) -> list[Arch]:
    """``n`` distinct architectures spread over the whole latency range: the largest and the smallest of the
    space, then, per block, a path length drawn uniformly and a path of that length drawn uniformly.

    Drawing paths uniformly would give almost only full-depth blocks (5^4 of the 781 paths of a 4-slot block
    at one width), leaving the fast models a search is after outside the predictor's training data.
    """
    by_length = []
    for block in range(space.num_blocks):
        groups: dict[int, list] = {}
        for path in space.iter_block_paths(block):
            groups.setdefault(len(path.layers), []).append(path)
        by_length.append([groups[k] for k in sorted(groups)])
    archs: list[Arch] = []
    for arch in (space.largest_arch(), space.smallest_arch()):
        if space.contains(arch) and arch not in archs and (space.candidates is None or all(
                b in space.candidates[i] for i, b in enumerate(arch.blocks))):
            archs.append(arch)
    attempts = 0
    while len(archs) < n and attempts < 100 * n:
        attempts += 1
        blocks = []
        for groups in by_length:
            group = groups[int(rng.integers(len(groups)))]
            blocks.append(group[int(rng.integers(len(group)))])
        arch = Arch(tuple(blocks))
        if arch not in archs:
            archs.append(arch)
    return archs[:n]


#: the share of an elastic space's profiled whole models that are teacher cuts (SearchSpace.teacher_cuts)
CUT_SHARE = 0.25


def profile_archs(space: SearchSpace, n: int, rng: np.random.Generator, *, seq_len: int = 128) -> list[Arch]:
    """The ``n`` whole models a profile times: :func:`sample_archs`, and in an elastic space a quarter of them
    teacher cuts, spread over their FLOPs. The cuts are the search's starting points and every member of the default
    family so far was one, but the per-block sampler seldom skips a run of top layers whole, and a predictor fitted
    without such models over-predicted the smallest of them by 7-11% (measured on the built-in teacher:
    docs/benchmarks.md)."""
    if not space.elastic:
        return sample_archs(space, n, rng)
    cuts = sorted(space.teacher_cuts(), key=lambda a: space.flops(a, seq_len, adapters=False))
    k = min(len(cuts), int(round(CUT_SHARE * n)))
    picked = [cuts[round(i * (len(cuts) - 1) / max(k - 1, 1))] for i in range(k)]
    picked = list(dict.fromkeys(picked))
    rest = [a for a in sample_archs(space, n + len(picked), rng) if a not in picked]
    return (rest[:2] + picked + rest[2:])[:n]  # the largest and the smallest stay first


def _feeds(vocab_size: int, batch: int, seq_len: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab_size, (batch, seq_len), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


class _Models:
    """Builds the engine for a whole model (an arch of the supernet, or the teacher) on the profiled device."""

    def __init__(self, supernet: SuperNet, teacher, config: LatencyConfig, workdir: Path):
        self.supernet, self.teacher, self.config, self.workdir = supernet, teacher, config, workdir
        self.feeds = _feeds(supernet.space.teacher.vocab_size, config.batch, config.seq_len)
        self.count = 0

    def engine(self, model: torch.nn.Module, *, precision: str | None = None):
        """An engine for ``model`` at ``precision`` (default the profile's); its ONNX file (if any) is deleted once
        the session holds the graph."""
        c = self.config
        if c.engine == "torch":
            return TorchEngine(model, self.feeds, threads=c.threads, device=c.device)
        from ..onnxio import export_onnx, quantize_int8

        self.count += 1
        path = self.workdir / f"model{self.count}.onnx"
        export_onnx(model, path, check=False)
        if (precision or c.precision) == "int8":
            quantize_int8(path, path)
        engine = OnnxRuntimeEngine(path, {k: v.numpy() for k, v in self.feeds.items()}, threads=c.threads,
                                   device=c.device)
        path.unlink()
        return engine


def profile_device(
    space: SearchSpace,
    out: str | Path,
    *,
    config: LatencyConfig = LatencyConfig(),
    teacher: torch.nn.Module | None = None,
    seed: int = 0,
    show_progress: bool = True,
) -> dict:
    """Profile this machine for ``space`` and write the profile to ``out`` (atomically). Returns accuracy.json."""
    # The torch engine times under config.threads; the count is process-wide, so the caller's comes back after.
    with torch_threads(config.threads if config.engine == "torch" else None):
        return _profile_device(space, out, config=config, teacher=teacher, seed=seed, show_progress=show_progress)


def _profile_device(space, out, *, config, teacher, seed, show_progress) -> dict:
    start = time.perf_counter()
    info = device_info(engine=config.engine, device=config.device, threads=config.threads, batch=config.batch,
                       seq_len=config.seq_len, precision=config.precision)
    rng = np.random.default_rng(seed)
    archs = profile_archs(space, config.archs, rng, seq_len=config.seq_len)
    if len(archs) < 4:
        raise ValueError(f"the space has only {len(archs)} distinct architectures; at least 4 are needed")
    # Latency does not depend on the weights: a random supernet of the full space extracts any arch. An elastic
    # space's models are the teacher's sub-layers without adapters (as the export writes them): from a supernet whose
    # adapters are the identity, which the extraction then leaves out.
    supernet = SuperNet(space.without_candidates(), seed=seed).eval()
    if space.elastic:
        supernet.reset_adapters()
    bar = tqdm(total=len(table_keys(space)) + len(archs), desc="latency", unit="model", disable=not show_progress)

    table, table_timings = build_table(space, engine=config.engine, device=config.device, threads=config.threads,
                                       batch=config.batch, seq_len=config.seq_len, repeats=config.table_repeats,
                                       seed=seed, progress=bar.update, precision=config.precision)
    table.device = info.to_dict()

    rows, teacher_ms = [], []
    with tempfile.TemporaryDirectory(prefix="nasbert-latency-") as tmp:
        models = _Models(supernet, teacher, config, Path(tmp))
        reference = models.engine(teacher, precision="fp32") if teacher is not None else None
        for g, first in enumerate(range(0, len(archs), config.group_size)):
            group = archs[first : first + config.group_size]
            engines = {str(a): models.engine(supernet.extract(a, drop_identity_adapters=space.elastic)) for a in group}
            if reference is not None:
                engines[TEACHER] = reference
            timings = measure_interleaved(engines, warmup=config.warmup, repeats=config.repeats,
                                          rounds=config.rounds, seed=seed + g)
            group_teacher = timings.pop(TEACHER).median_ms if reference is not None else None
            teacher_ms.append(group_teacher)
            for arch in group:
                t = timings[str(arch)]
                rows.append({"arch": str(arch), "params": space.num_params(arch),
                             "flops": space.flops(arch, config.seq_len), "table_ms": table.predict(arch),
                             "group": g, "group_teacher_ms": group_teacher, "raw_median_ms": t.median_ms,
                             **t.to_dict()})
            bar.update(len(group))
            fault_point("latency.group")
            del engines
    bar.close()

    teacher_latency = float(np.median(teacher_ms)) if reference_used(teacher_ms) else None
    if teacher_latency is not None:
        # Drift correction: the machine's speed drifts between groups (shared cores, frequency); every group
        # timed the teacher too, so each group's models are scaled by teacher (all groups) / teacher (this group).
        for row in rows:
            row["median_ms"] = row["raw_median_ms"] * teacher_latency / row["group_teacher_ms"]
    order = rng.permutation(len(rows))
    n_heldout = max(2, int(round(config.heldout_fraction * len(rows))))
    heldout = set(order[:n_heldout].tolist())
    train_idx = [i for i in range(len(rows)) if i not in heldout]
    test_idx = sorted(heldout)
    arch_of = [Arch.parse(r["arch"]) for r in rows]
    measured = np.array([r["median_ms"] for r in rows])
    predictor = LatencyPredictor.fit(table, [arch_of[i] for i in train_idx], measured[train_idx],
                                     device=info.to_dict(), teacher_latency_ms=teacher_latency)
    for i, row in enumerate(rows):
        row["predicted_ms"] = predictor.predict(arch_of[i])
        row["split"] = "heldout" if i in heldout else "train"
    report = {
        "n_train": len(train_idx), "n_heldout": len(test_idx),
        "table": accuracy([rows[i]["table_ms"] for i in test_idx], measured[test_idx]),
        "predictor": accuracy([rows[i]["predicted_ms"] for i in test_idx], measured[test_idx]),
        "predictor_fit": {"ridge": predictor.ridge, "loo_mape": predictor.loo_mape},
        "teacher_latency_ms": teacher_latency,
        "teacher_latency_spread_ms": float(np.ptp(teacher_ms)) if teacher_latency is not None else None,
        "drift_corrected": teacher_latency is not None,
        "device": info.to_dict(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    with atomic_dir(out) as tmp:
        predictor.save(tmp)
        (tmp / DEVICE_FILE).write_text(_json(info.to_dict()), encoding="utf-8")
        (tmp / "table_timings.json").write_text(_json(table_timings), encoding="utf-8")
        (tmp / "measurements.csv").write_text(_csv(rows), encoding="utf-8")
        (tmp / ACCURACY_FILE).write_text(_json(report), encoding="utf-8")
        _plot(rows, report, tmp / "predicted_vs_measured.png")
    return report


def reference_used(teacher_ms: list) -> bool:
    return bool(teacher_ms) and all(t is not None for t in teacher_ms)


def _json(data) -> str:
    import json

    return json.dumps(data, indent=2) + "\n"


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _plot(rows: list[dict], report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for split, marker in (("train", "o"), ("heldout", "s")):
        sel = [r for r in rows if r["split"] == split]
        ax.scatter([r["median_ms"] for r in sel], [r["predicted_ms"] for r in sel], marker=marker, s=14,
                   label=f"predictor, {split} ({len(sel)})")
    held = [r for r in rows if r["split"] == "heldout"]
    ax.scatter([r["median_ms"] for r in held], [r["table_ms"] for r in held], marker="x", s=14,
               label="table sum, heldout")
    hi = max(max(r["median_ms"], r["predicted_ms"], r["table_ms"]) for r in rows) * 1.05
    ax.plot([0, hi], [0, hi], color="grey", lw=0.8)
    p, t = report["predictor"], report["table"]
    ax.set_title(f"held-out MAPE: predictor {p['mape']:.1%}, table {t['mape']:.1%}\n"
                 f"Kendall tau: predictor {p['kendall_tau']:.3f}, table {t['kendall_tau']:.3f}", fontsize=9)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
