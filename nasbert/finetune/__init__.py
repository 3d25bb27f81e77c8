"""Fine-tuning on downstream tasks: GLUE and generic CSV / JSON Lines data, and the GLUE metrics."""

from .metrics import (
    accuracy,
    compute_metrics,
    f1_score,
    matthews_corrcoef,
    pearson,
    spearmanr,
)
from .tasks import (
    GLUE_TASKS,
    Example,
    TaskData,
    TaskError,
    TaskSpec,
    get_task,
    load_generic_task,
    load_task,
)

__all__ = [
    "GLUE_TASKS",
    "Example",
    "TaskData",
    "TaskError",
    "TaskSpec",
    "accuracy",
    "compute_metrics",
    "f1_score",
    "get_task",
    "load_generic_task",
    "load_task",
    "matthews_corrcoef",
    "pearson",
    "spearmanr",
]
