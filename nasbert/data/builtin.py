"""The built-in corpus: the English documentation text that ships with CPython (``pydoc_data``).

It is real English prose about programming (79 documents, about 433 k characters), present on every Python
install, so the main job and its checks run offline.
"""

from __future__ import annotations

__all__ = ["builtin_documents"]


def builtin_documents() -> list[str]:
    """The documents of ``pydoc_data.topics``, in a fixed order, whitespace-normalised, empty ones dropped."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - some distributions strip it
        raise RuntimeError(
            "this Python has no pydoc_data (the built-in corpus); install the full CPython standard library "
            "or pass a corpus (a Hugging Face dataset name or local text files)"
        ) from None
    docs = (" ".join(topics[key].split()) for key in sorted(topics))
    return [d for d in docs if d]
