"""Fine-tuning on downstream tasks: GLUE and generic CSV / JSON Lines data, the GLUE metrics, and the trainer
(``nasbert finetune``)."""

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
from .trainer import (
    FinetuneConfig,
    FinetuneError,
    FinetuneResult,
    LrGridResult,
    finetune,
    finetune_lr_grid,
    load_classifier,
    resolve_device,
)

__all__ = [
    "GLUE_TASKS",
    "Example",
    "FinetuneConfig",
    "FinetuneError",
    "FinetuneResult",
    "LrGridResult",
    "TaskData",
    "TaskError",
    "TaskSpec",
    "accuracy",
    "compute_metrics",
    "f1_score",
    "finetune",
    "finetune_lr_grid",
    "get_task",
    "load_classifier",
    "load_generic_task",
    "load_task",
    "matthews_corrcoef",
    "pearson",
    "resolve_device",
    "spearmanr",
]
