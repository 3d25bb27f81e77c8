"""Timing whole models with the teacher: every model and the teacher in one interleaved run on the profiled
engine and settings (the export's choice, the quality report's latency column)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..onnxio import export_onnx, quantize_int8
from ..utils import torch_threads
from .measure import OnnxRuntimeEngine, TorchEngine, measure_interleaved

__all__ = ["EDGE_MARGIN", "Measured", "measure_models", "near_limits", "speedup", "time_engines"]

#: a model timed within this relative distance of a latency limit is timed again, longer (``measure_models``). On
#: the 2-core reference machine the first, short timing of a speed-up landed up to 8% from the longer timing's
#: median (bench/edge_timing.py, docs/benchmarks.md).
EDGE_MARGIN = 0.10


@dataclass
class Measured:
    """Latency measured now, on this machine, for a set of models and the teacher (same session, interleaved).
    ``retimed`` holds, for each model timed again near a limit, its first timing: ``{"latency_ms", "speedup"}``
    of the first run (``latency_ms`` here is the longer run's, in the first run's teacher scale), and ``runs``, the
    speed-ups of the three runs, where the first two fell on two sides of a limit and a third decided (the median;
    ``latency_ms`` is then the median's)."""

    latency_ms: dict[str, float]
    teacher_latency_ms: float
    retimed: dict[str, dict] = field(default_factory=dict)

    def first_speedup(self, name: str) -> dict:
        """``{"first_speedup": x}`` for a model timed again near a limit (its first timing's speed-up), with
        ``edge_runs`` (the three runs' speed-ups) where a third run decided, else ``{}``: the fields a record of the
        model (family.json, the report's files) carries."""
        first = self.retimed.get(name)
        if not first:
            return {}
        return {"first_speedup": first["speedup"], **({"edge_runs": first["runs"]} if "runs" in first else {})}

    def retiming(self, name: str) -> str:
        """How the timing of a model timed again near a limit went, for logs."""
        first = self.retimed[name]
        text = f"timed {first['speedup']:.2f}x, near a budget's edge: timed again, longer: "
        if "runs" not in first:
            return text + f"{speedup(self.teacher_latency_ms, self.latency_ms[name]):.2f}x"
        return text + (f"{first['runs'][1]:.3f}x, on the limit's other side, so a third time: {first['runs'][2]:.3f}x; "
                       f"the median decides ({speedup(self.teacher_latency_ms, self.latency_ms[name]):.3f}x)")


def near_limits(latency_ms: Mapping[str, float], limits_ms: Iterable[float | None], margin: float) -> list[str]:
    """The models whose latency lies within ``margin`` (relative to the limit) of one of ``limits_ms``.

    >>> near_limits({"a": 10.3, "b": 12.0, "c": 5.0}, [10.0, None], 0.05)
    ['a']
    """
    limits = _limits(limits_ms)
    return [name for name, ms in latency_ms.items() if any(abs(ms / lim - 1.0) <= margin for lim in limits)]


def _limits(limits_ms: Iterable[float | None]) -> list[float]:
    """The latency limits that are limits: budgets of another kind (e.g. parameters) give None."""
    return [float(lim) for lim in limits_ms if lim is not None and lim > 0]


def measure_models(models: dict[str, torch.nn.Module], teacher: torch.nn.Module, *, engine: str, device: str,
                   threads: int, batch: int, seq_len: int, vocab_size: int, repeats: int = 20, rounds: int = 4,
                   warmup: int = 3, seed: int = 0, graphs: dict[str, Path] | None = None,
                   precision: str = "fp32", limits: Callable[[float], Iterable[float | None]] | None = None,
                   edge_margin: float = EDGE_MARGIN, edge_repeats: int = 100, edge_rounds: int = 20) -> Measured:
    """Time every model and the teacher with the profiled engine and settings, interleaved. With ``precision
    "int8"`` the models (not the teacher) run as ONNX Runtime's dynamic int8 graphs. ``graphs`` adds ONNX files
    timed in the same run (e.g. int8 graphs; ONNX Runtime engine only).

    ``limits(teacher_ms)`` gives the latency limits (ms) the caller will judge the models against (budgets). A
    model that comes out within ``edge_margin`` of one is timed again with the teacher, ``edge_repeats`` times over
    ``edge_rounds`` interleaved rounds, and that longer run decides: its latency, rescaled by the two runs'
    teacher latencies so that its speed-up is the longer run's. Where the first and the longer run fall on two sides
    of a limit, a third longer run is made and the median of the three decides (a busy host timed a cut at 4.39x and
    then 3.994x against a 4x budget). The first timing is kept in ``retimed``, with the three runs' speed-ups
    (``runs``) where a third was made."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab_size, (batch, seq_len), generator=g)
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    arrays = {k: v.numpy() for k, v in feeds.items()}
    engines = {}
    if (graphs or precision != "fp32") and engine != "onnxruntime":
        raise ValueError(f"ONNX graphs and int8 are timed with the onnxruntime engine, not {engine!r}")
    with tempfile.TemporaryDirectory(prefix="nasbert-export-") as tmp:
        for i, (name, model) in enumerate({**models, "__teacher__": teacher}.items()):
            if engine == "torch":
                engines[name] = TorchEngine(model, feeds, threads=threads, device=device)
                continue
            path = Path(tmp) / f"m{i}.onnx"
            export_onnx(model, path, check=False)
            if precision == "int8" and name != "__teacher__":
                quantize_int8(path, path)
            engines[name] = OnnxRuntimeEngine(path, arrays, threads=threads, device=device)
        for name, path in (graphs or {}).items():
            engines[name] = OnnxRuntimeEngine(path, arrays, threads=threads, device=device)
        with torch_threads(threads if engine == "torch" else None):  # held, so that no timed call switches it
            return time_engines(engines, "__teacher__", warmup=warmup, repeats=repeats, rounds=rounds, seed=seed,
                                limits=limits, edge_margin=edge_margin, edge_repeats=edge_repeats,
                                edge_rounds=edge_rounds)


def time_engines(engines: Mapping[str, object], teacher: str | float, *, warmup: int = 3, repeats: int = 20,
                 rounds: int = 4, seed: int = 0, limits: Callable[[float], Iterable[float | None]] | None = None,
                 edge_margin: float = EDGE_MARGIN, edge_repeats: int = 100, edge_rounds: int = 20) -> Measured:
    """Time ``engines`` interleaved, then time again, longer, those within ``edge_margin`` of a limit, as
    :func:`measure_models` describes. ``teacher`` is the teacher's key in ``engines``, or its latency (ms) where
    it is not timed here (the longer runs are then not rescaled)."""
    timings = measure_interleaved(dict(engines), warmup=warmup, repeats=repeats, rounds=rounds, seed=seed)
    teacher_ms = timings.pop(teacher).median_ms if isinstance(teacher, str) else float(teacher)
    latency = {name: t.median_ms for name, t in timings.items()}
    limits_ms = _limits(limits(teacher_ms)) if limits is not None else []
    near = near_limits(latency, limits_ms, edge_margin)
    if not near:
        return Measured(latency, teacher_ms)

    def longer(names: list[str], run: int) -> dict[str, float]:
        """A longer interleaved timing of ``names``, in the first run's teacher scale."""
        keys = [*names, teacher] if isinstance(teacher, str) else names
        timed = measure_interleaved({name: engines[name] for name in keys},
                                    warmup=warmup, repeats=edge_repeats, rounds=edge_rounds, seed=seed + run)
        scale = teacher_ms / timed.pop(teacher).median_ms if isinstance(teacher, str) else 1.0
        return {name: timed[name].median_ms * scale for name in names}

    second = longer(near, 1)
    # the first and the longer run on two sides of a limit: a third, longer run, and the median decides
    split = [name for name in near if any((latency[name] <= lim) != (second[name] <= lim) for lim in limits_ms)]
    third = longer(split, 2) if split else {}
    retimed = {name: {"latency_ms": latency[name], "speedup": speedup(teacher_ms, latency[name]),
                      **({"runs": [speedup(teacher_ms, ms) for ms in (latency[name], second[name], third[name])]}
                         if name in third else {})} for name in near}
    latency.update({name: float(np.median([latency[name], second[name], third[name]])) if name in third
                    else second[name] for name in near})
    return Measured(latency, teacher_ms, retimed)


def speedup(teacher_ms: float, model_ms: float) -> float:
    return float(teacher_ms / model_ms) if model_ms > 0 else float(np.inf)
