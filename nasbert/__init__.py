"""nasbert: one pre-trained BERT in, a family of compressed task-agnostic BERTs out.

>>> import numpy as np
>>> from nasbert import SearchSpace
>>> space = SearchSpace.load("minilm_l6")
>>> space.num_paths(0)
3124
"""

from .modeling import NasBertConfig, NasBertForMaskedLM, NasBertForSequenceClassification, NasBertModel
from .space import Arch, BlockArch, SearchSpace, SpaceError, TeacherSpec
from .supernet import SuperNet
from .teacher import TeacherError, load_teacher

__version__ = "0.1.0"

__all__ = [
    "Arch",
    "BlockArch",
    "NasBertConfig",
    "NasBertForMaskedLM",
    "NasBertForSequenceClassification",
    "NasBertModel",
    "SearchSpace",
    "SpaceError",
    "SuperNet",
    "TeacherError",
    "TeacherSpec",
    "load_teacher",
    "__version__",
]
