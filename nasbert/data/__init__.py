"""Text corpora."""

from .builtin import builtin_documents

__all__ = ["builtin_documents"]
