"""One sub-network of a finished run, as a model directory: extracted as it is (``nasbert extract``), or trained
further as a whole against the teacher first (``nasbert distill``)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

from ..config import ConfigError, to_mapping
from ..data import load_corpus
from ..export import save_hf_model
from ..export.hf import write_hf_files
from ..io import atomic_dir, atomic_write_json, free_output
from ..space import Arch, SearchSpace
from ..supernet import SuperNet
from ..teacher import load_teacher
from ..training.distill import distill_arch
from ..utils import cache_dir
from .rundir import RunDir

__all__ = ["distill_to", "extract_to"]


def extract_to(run: RunDir, arch: Arch | Callable[[SearchSpace], Arch], out: str | os.PathLike) -> dict:
    """Write ``arch``'s model, extracted from the run's supernet, as a Hugging Face directory at ``out``
    (``arch``: an architecture, or a function of the supernet's space, e.g. ``SearchSpace.largest_arch``);
    returns the architecture, its parameters and its GFLOPs at 128 tokens."""
    from transformers import AutoTokenizer

    supernet = SuperNet.from_pretrained(run.supernet_dir)
    space = supernet.space
    arch = arch if isinstance(arch, Arch) else arch(space)
    space.validate(arch, allow_teacher=True)
    tokenizer = AutoTokenizer.from_pretrained(run.supernet_dir)
    save_hf_model(supernet.extract(arch), out, tokenizer=tokenizer)
    return {"arch": arch, "params": space.num_params(arch), "gflops": space.flops(arch, 128) / 1e9}


def distill_to(run: RunDir, arch: Arch, out: str | os.PathLike, *, steps: int, lr: float | None = None,
               batch_size: int | None = None, seed: int | None = None, member: str | None = None,
               onnx: bool = True, force: bool = False, progress: bool = True) -> dict:
    """Distil ``arch`` of the run's supernet as a whole against the teacher on the run's corpus
    (:func:`~nasbert.training.distill.distill_arch`, the run's ``export.distill`` settings with these overrides)
    and write it to ``out``: the model, ``model.onnx`` (checked against PyTorch) and ``distill.json``, which is
    also returned."""
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    out = free_output(out, force)
    config = run.config
    supernet = SuperNet.from_pretrained(run.supernet_dir)
    space = supernet.space
    space.validate(arch, allow_teacher=True)
    overrides = {k: v for k, v in (("steps", steps), ("lr", lr), ("batch_size", batch_size)) if v is not None}
    distill = dataclasses.replace(config.export.distill, **overrides)
    seed = config.seed if seed is None else seed
    teacher, tokenizer, source = load_teacher(config.teacher if config.teacher is not None else space.teacher.name)
    corpus = load_corpus(config.corpus, tokenizer, cache_dir=cache_dir() / "corpus", show_progress=progress)
    result = distill_arch(supernet, arch, teacher, corpus, tokenizer, config=distill, seed=seed, progress=progress)
    record = {
        "arch": arch.to_dict(), "arch_compact": str(arch), "params": space.num_params(arch),
        "run": str(run.path), "member": member, "teacher": source, "corpus": corpus.fingerprint,
        "seed": seed, "steps": result.steps, "valid_loss_before": result.valid_loss_before,
        "valid_loss_after": result.valid_loss_after, "seconds": round(result.seconds, 2),
        "config": to_mapping(distill), "onnx": None,
    }
    with atomic_dir(out) as tmp:
        write_hf_files(result.model, tmp, tokenizer=tokenizer)
        if onnx:
            from ..onnxio import export_onnx

            report = export_onnx(result.model, tmp / "model.onnx")  # raises if ONNX and PyTorch differ by > 1e-4
            record.update(onnx="model.onnx", onnx_max_abs_diff=report["max_abs_diff"])
        atomic_write_json(tmp / "distill.json", json.loads(json.dumps(record)))
    return record
