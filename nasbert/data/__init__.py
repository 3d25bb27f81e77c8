"""Text corpora: reading (built-in, Hugging Face, local files), tokenising and packing, MLM masking, batch order."""

from .builtin import builtin_documents
from .corpus import (
    CORPUS_FORMAT_VERSION,
    CorpusConfig,
    CorpusError,
    TokenizedCorpus,
    corpus_fingerprint,
    load_corpus,
    read_documents,
)
from .masking import IGNORE_INDEX, BatchIterator, mask_tokens

__all__ = [
    "CORPUS_FORMAT_VERSION",
    "IGNORE_INDEX",
    "BatchIterator",
    "CorpusConfig",
    "CorpusError",
    "TokenizedCorpus",
    "builtin_documents",
    "corpus_fingerprint",
    "load_corpus",
    "mask_tokens",
    "read_documents",
]
