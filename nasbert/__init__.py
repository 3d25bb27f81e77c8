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
from .latency import LatencyPredictor  # noqa: E402
from .export.family import Family, FamilyMember  # noqa: E402
from .pick import NoFit, pick  # noqa: E402  (the function shadows the module attribute: nasbert.pick(...))

__version__ = "0.1.0"

__all__ = [
    "Arch",
    "BlockArch",
    "Family",
    "FamilyMember",
    "LatencyPredictor",
    "NoFit",
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
    "pick",
    "__version__",
]
