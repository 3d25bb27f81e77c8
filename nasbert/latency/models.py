"""Timing whole models with the teacher: every model and the teacher in one interleaved run on the profiled
engine and settings (the export's choice, the quality report's latency column)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..onnxio import export_onnx, quantize_int8
from ..utils import torch_threads
from .measure import OnnxRuntimeEngine, TorchEngine, measure_interleaved

__all__ = ["Measured", "measure_models", "speedup"]


@dataclass
class Measured:
    """Latency measured now, on this machine, for a set of models and the teacher (same session, interleaved)."""

    latency_ms: dict[str, float]
    teacher_latency_ms: float


def measure_models(models: dict[str, torch.nn.Module], teacher: torch.nn.Module, *, engine: str, device: str,
                   threads: int, batch: int, seq_len: int, vocab_size: int, repeats: int = 20, rounds: int = 4,
                   warmup: int = 3, seed: int = 0, graphs: dict[str, Path] | None = None,
                   precision: str = "fp32") -> Measured:
    """Time every model and the teacher with the profiled engine and settings, interleaved. With ``precision
    "int8"`` the models (not the teacher) run as ONNX Runtime's dynamic int8 graphs. ``graphs`` adds ONNX files
    timed in the same run (e.g. int8 graphs; ONNX Runtime engine only)."""
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
            timings = measure_interleaved(engines, warmup=warmup, repeats=repeats, rounds=rounds, seed=seed)
    teacher_ms = timings.pop("__teacher__").median_ms
    return Measured({name: t.median_ms for name, t in timings.items()}, teacher_ms)


def speedup(teacher_ms: float, model_ms: float) -> float:
    return float(teacher_ms / model_ms) if model_ms > 0 else float(np.inf)
