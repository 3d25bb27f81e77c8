"""Saving an extracted model as a Hugging Face model directory.

The directory holds ``config.json`` (with ``auto_map``), ``model.safetensors``, the tokenizer files and the
modeling code (``configuration_nasbert.py``, ``modeling_nasbert.py``), so that it loads with
``AutoModel.from_pretrained(dir, trust_remote_code=True)`` where nasbert is not installed, and with plain
``AutoModel.from_pretrained(dir)`` once nasbert is imported.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..io import atomic_dir

__all__ = ["save_hf_model", "write_hf_files"]

logger = logging.getLogger(__name__)


def save_hf_model(
    model: PreTrainedModel,
    directory: str | os.PathLike,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Path:
    """Write ``model`` (and ``tokenizer``) to ``directory`` atomically: all files appear at once or none do.

    >>> save_hf_model(supernet.extract(arch), "family/small", tokenizer=tokenizer)  # doctest: +SKIP
    """
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        write_hf_files(model, tmp, tokenizer=tokenizer)
    logger.info("saved %s to %s", type(model).__name__, directory)
    return directory


def write_hf_files(model: PreTrainedModel, directory: Path, *,
                   tokenizer: PreTrainedTokenizerBase | None = None) -> None:
    """The files of a model directory, written into ``directory`` as it is (callers make it atomic)."""
    model.save_pretrained(directory, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    missing = [f for f in ("config.json", "model.safetensors", "modeling_nasbert.py",
                           "configuration_nasbert.py") if not (Path(directory) / f).is_file()]
    if missing and type(model).__module__.startswith("nasbert"):
        raise RuntimeError(f"save_pretrained did not write {missing}; the export would not load without nasbert")
