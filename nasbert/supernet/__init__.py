"""The weight-sharing supernet: elastic ops, importance reordering, teacher initialisation, extraction."""

from .model import SuperNet

__all__ = ["SuperNet"]
