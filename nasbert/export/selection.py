"""Choosing the model for each budget: the search's top candidates, re-evaluated as whole models.

The search ranks architectures by a proxy (the sum of block-wise losses) and a predicted latency. Before one is
exported, each of the top candidates of a budget is evaluated whole (the stitched supernet path against the
teacher's final hidden states on validation batches) and timed for real on this machine, interleaved with the
teacher; the best one that meets the budget on the *measured* latency is chosen.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import mask_tokens
from ..latency.measure import OnnxRuntimeEngine, TorchEngine, measure_interleaved
from ..space import Arch
from ..supernet import SuperNet
from ..utils import torch_threads
from .onnx import export_onnx, quantize_int8

__all__ = ["Measured", "measure_models", "plain_batches", "state_cosine", "validation_batches", "whole_model_loss"]

logger = logging.getLogger(__name__)


def _final_states(supernet: SuperNet, teacher, arch: Arch, batches: Sequence[dict]):
    """Per batch: the stitched sub-network's final hidden states and the teacher's, at the real tokens."""
    supernet.eval()
    for batch in batches:
        target = teacher(**batch).last_hidden_state
        out = supernet(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], arch=arch)
        keep = batch["attention_mask"].bool()
        yield out[keep], target[keep]


@torch.no_grad()
def whole_model_loss(supernet: SuperNet, teacher, arch: Arch, batches: Sequence[dict]) -> float:
    """MSE between the stitched sub-network's final hidden states and the teacher's, over real tokens."""
    losses = [float(torch.nn.functional.mse_loss(out, target))
              for out, target in _final_states(supernet, teacher, arch, batches)]
    return sum(losses) / len(losses)


@torch.no_grad()
def state_cosine(supernet: SuperNet, teacher, arch: Arch, batches: Sequence[dict]) -> float:
    """Mean per-token cosine similarity between the stitched sub-network's final hidden states and the teacher's,
    over real tokens: the export's ranking proxy (blind to the scale of the states, which MSE is not)."""
    cosines = [float(torch.nn.functional.cosine_similarity(out, target, dim=-1).mean())
               for out, target in _final_states(supernet, teacher, arch, batches)]
    return sum(cosines) / len(cosines)


def plain_batches(valid: torch.Tensor, *, batch_size: int, n_batches: int) -> list[dict]:
    """The first validation sequences as they are (no masking): what the cosine proxy is computed on."""
    ids = valid[: batch_size * n_batches]
    return [{"input_ids": ids[i : i + batch_size], "attention_mask": torch.ones_like(ids[i : i + batch_size]),
             "token_type_ids": torch.zeros_like(ids[i : i + batch_size])} for i in range(0, len(ids), batch_size)]


def validation_batches(valid: torch.Tensor, tokenizer, *, batch_size: int, n_batches: int, seed: int,
                       mlm_probability: float = 0.15) -> list[dict]:
    """Fixed, MLM-corrupted validation batches (as in training), for whole-model evaluation."""
    generator = torch.Generator().manual_seed(seed + 777)
    out = []
    for start in range(0, min(len(valid), batch_size * n_batches), batch_size):
        ids = valid[start : start + batch_size]
        corrupted, _ = mask_tokens(ids, vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.mask_token_id,
                                   special_ids=sorted(set(tokenizer.all_special_ids)), generator=generator,
                                   mlm_probability=mlm_probability)
        out.append({"input_ids": corrupted, "attention_mask": torch.ones_like(corrupted),
                    "token_type_ids": torch.zeros_like(corrupted)})
    return out


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
            engines[name] = OnnxRuntimeEngine(path, {k: v.numpy() for k, v in feeds.items()}, threads=threads,
                                              device=device)
        for name, path in (graphs or {}).items():
            engines[name] = OnnxRuntimeEngine(path, {k: v.numpy() for k, v in feeds.items()}, threads=threads,
                                              device=device)
        with torch_threads(threads if engine == "torch" else None):  # held, so that no timed call switches it
            timings = measure_interleaved(engines, warmup=warmup, repeats=repeats, rounds=rounds, seed=seed)
    teacher_ms = timings.pop("__teacher__").median_ms
    return Measured({name: t.median_ms for name, t in timings.items()}, teacher_ms)


def rank_by_loss(losses: dict[str, float]) -> list[str]:
    return sorted(losses, key=lambda name: (losses[name], name))


def speedup(teacher_ms: float, model_ms: float) -> float:
    return float(teacher_ms / model_ms) if model_ms > 0 else float(np.inf)
