"""Export: extracted models as Hugging Face directories."""

from .hf import save_hf_model

__all__ = ["save_hf_model"]
