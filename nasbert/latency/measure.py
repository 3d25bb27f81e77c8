"""Measuring latency on a shared, noisy machine: warm up, interleave candidates, repeat, take medians.

Engines wrap one model on one device with a fixed thread count. :func:`measure_interleaved` times several of
them round-robin (in a seeded random order each round), so that a burst of load from another process hits all
candidates alike instead of one of them.
"""

from __future__ import annotations

import copy
import os
import platform
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..utils import torch_threads

__all__ = ["DeviceInfo", "OnnxRuntimeEngine", "Timing", "TorchEngine", "device_info", "measure_interleaved",
           "summarize"]


@dataclass(frozen=True)
class Timing:
    """Statistics of one candidate's runs, in milliseconds. Outliers (Tukey's fences, 1.5 IQR) are counted and
    left out of ``mean_ms``; the median needs no such help."""

    median_ms: float
    iqr_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    n: int
    n_outliers: int

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(samples_ms: Sequence[float]) -> Timing:
    x = np.asarray(samples_ms, dtype=float)
    if x.size == 0:
        raise ValueError("no samples to summarize")
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    iqr = q3 - q1
    inliers = x[(x >= q1 - 1.5 * iqr) & (x <= q3 + 1.5 * iqr)]
    return Timing(
        median_ms=float(med), iqr_ms=float(iqr), p10_ms=float(np.percentile(x, 10)),
        p90_ms=float(np.percentile(x, 90)), mean_ms=float(inliers.mean()), n=int(x.size),
        n_outliers=int(x.size - inliers.size),
    )


def measure_interleaved(
    candidates: Mapping[str, Callable[[], object]],
    *,
    warmup: int = 3,
    repeats: int = 15,
    rounds: int = 3,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Time each callable ``repeats`` times in all, split over ``rounds`` round-robin passes.

    Every candidate is first called ``warmup`` times. Then, in each round, the candidates run in a fresh random
    order, each ``ceil(repeats / rounds)`` times in a row (so caches are warm for it, as in serving).
    """
    if repeats < 1 or rounds < 1 or warmup < 0:
        raise ValueError("repeats and rounds must be >= 1 and warmup >= 0")
    rng = np.random.default_rng(seed)
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    per_round = -(-repeats // rounds)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for i in rng.permutation(len(names)):
            name = names[i]
            fn = candidates[name]
            for _ in range(per_round):
                if len(samples[name]) >= repeats:
                    break
                t0 = clock()
                fn()
                samples[name].append((clock() - t0) * 1000.0)
    return {name: summarize(samples[name]) for name in names}


# ---------------------------------------------------------------------------------------------------- engines


class OnnxRuntimeEngine:
    """One ONNX model in an ONNX Runtime session: ``intra_op_num_threads = threads``, sequential execution,
    all graph optimisations; the CUDA execution provider with ``device="cuda"``."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike, feeds: Mapping[str, np.ndarray], *, threads: int = 1,
                 device: str = "cpu"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError("device cuda asked for, but this onnxruntime has no CUDAExecutionProvider: "
                                   "pip install onnxruntime-gpu")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        if device == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            # onnxruntime falls back to the CPU with only a warning when the CUDA provider fails to start.
            raise RuntimeError(
                "device cuda asked for, but the CUDAExecutionProvider is not active in this session (it runs on "
                f"{', '.join(self.session.get_providers())}): the CUDA or cuDNN libraries that onnxruntime-gpu "
                "needs are missing or do not match it; see onnxruntime's CUDA requirements, or use device cpu"
            )
        self.threads = threads
        known = {i.name for i in self.session.get_inputs()}
        self.feeds = {k: v for k, v in feeds.items() if k in known}

    def __call__(self) -> object:
        return self.session.run(None, self.feeds)


class TorchEngine:
    """A PyTorch module run under ``torch.inference_mode`` with ``torch.set_num_threads(threads)``; on CUDA every
    call synchronises, so that the time is the kernel's, not the launch's.

    The engine runs its own copy of ``module`` (moved to ``device``, in eval mode): the caller's module keeps its
    device and mode, so that, say, an ONNX export of it afterwards still sees CPU weights. Each call gives the
    caller's thread count back; hold it around a whole measurement (:func:`~nasbert.utils.torch_threads`) so that
    the calls themselves do not switch it.
    """

    name = "torch"

    def __init__(self, module: torch.nn.Module, feeds: Mapping[str, torch.Tensor], *, threads: int = 1,
                 device: str = "cpu"):
        self.device = torch.device(device)
        self.module = copy.deepcopy(module).to(self.device).eval()
        self.feeds = {k: v.to(self.device) for k, v in feeds.items()}
        self.threads = threads

    def __call__(self) -> object:
        with torch_threads(self.threads), torch.inference_mode():
            out = self.module(**self.feeds)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return out


# ---------------------------------------------------------------------------------------------------- device


@dataclass(frozen=True)
class DeviceInfo:
    """What a latency profile was measured on. ``key`` names its folder: RUN/latency/<key>/."""

    processor: str
    engine: str
    engine_version: str
    device: str
    threads: int
    batch: int
    seq_len: int
    #: "fp32", or "int8": every timed graph is ONNX Runtime's dynamic int8 of the exported one
    precision: str = "fp32"

    @property
    def key(self) -> str:
        proc = re.sub(r"[^a-z0-9]+", "-", self.processor.lower()).strip("-")[:40] or "unknown"
        key = f"{proc}-{self.device}-{self.engine}-t{self.threads}-b{self.batch}-s{self.seq_len}"
        return key if self.precision == "fp32" else f"{key}-{self.precision}"

    def to_dict(self) -> dict:
        return {**asdict(self), "key": self.key, "python": platform.python_version(), "torch": torch.__version__}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def host() -> dict:
    """This machine, for a benchmark's record: CPU, cores, Python, torch, the date."""
    import datetime
    import os

    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "date": datetime.date.today().isoformat()}


def device_info(*, engine: str, device: str, threads: int, batch: int, seq_len: int,
                precision: str = "fp32") -> DeviceInfo:
    if engine == "onnxruntime":
        import onnxruntime as ort

        version = ort.__version__
    elif engine == "torch":
        version = torch.__version__
    else:
        raise ValueError(f"unknown engine {engine!r}: use onnxruntime or torch")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device cuda asked for, but torch sees no CUDA GPU here")
        processor = torch.cuda.get_device_name(0)
    elif device == "cpu":
        processor = _cpu_name()
    else:
        raise ValueError(f"unknown device {device!r}: use cpu or cuda")
    return DeviceInfo(processor, engine, version, device, threads, batch, seq_len, precision)
