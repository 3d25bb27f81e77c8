"""nasbert: one pre-trained BERT in, a family of compressed task-agnostic BERTs out.

>>> import numpy as np
>>> from nasbert import SearchSpace
>>> space = SearchSpace.load("minilm_l6")
>>> space.num_paths(0)
3124
"""

from .export.family import Family, FamilyMember
from .finetune import FinetuneConfig, load_task  # the subpackage nasbert.finetune holds finetune()
from .latency import LatencyPredictor
from .modeling import (
    NasBertConfig,
    NasBertForMaskedLM,
    NasBertForSequenceClassification,
    NasBertModel,
)
from .export.pick import NoFit, pick
from .finetune.refbert import ReferencePool
from .space import Arch, BlockArch, SearchSpace, SpaceError, TeacherSpec
from .supernet import SuperNet
from .teacher import TeacherError, load_teacher
from .training.distill import DistillConfig, distill_arch

__version__ = "0.1.0"

__all__ = [
    "Arch",
    "BlockArch",
    "DistillConfig",
    "Family",
    "FamilyMember",
    "FinetuneConfig",
    "LatencyPredictor",
    "NasBertConfig",
    "NasBertForMaskedLM",
    "NasBertForSequenceClassification",
    "NasBertModel",
    "NoFit",
    "ReferencePool",
    "SearchSpace",
    "SpaceError",
    "SuperNet",
    "TeacherError",
    "TeacherSpec",
    "__version__",
    "distill_arch",
    "load_task",
    "load_teacher",
    "pick",
]
