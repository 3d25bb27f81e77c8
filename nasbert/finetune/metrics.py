"""GLUE metrics in plain numpy: accuracy, binary F1, Matthews correlation, Pearson and Spearman correlation.

Values follow the GLUE convention: fractions (0.912), not percentages. A correlation that is undefined because
one side is constant (a model that predicts one class, or one score, for every example) is 0.0, as scikit-learn
does for the Matthews correlation, so that an early checkpoint gets a number rather than NaN.

>>> import numpy as np
>>> from nasbert.finetune import get_task
>>> logits = np.array([[2.0, -1.0], [0.5, 1.5], [0.1, 0.9], [3.0, 0.0]])
>>> compute_metrics(get_task("mrpc"), logits, np.array([0, 1, 0, 0]))
{'f1': 0.6666666666666666, 'accuracy': 0.75, 'combined': 0.7083333333333333}
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

from .tasks import TaskSpec

__all__ = ["accuracy", "compute_metrics", "f1_score", "matthews_corrcoef", "pearson", "spearmanr"]


def _pair(pred: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    pred, labels = np.asarray(pred).reshape(-1), np.asarray(labels).reshape(-1)
    if pred.shape != labels.shape:
        raise ValueError(f"{pred.shape[0]} predictions for {labels.shape[0]} labels: pass one prediction per label")
    if pred.size == 0:
        raise ValueError("no predictions: a metric needs at least one example")
    return pred, labels


def accuracy(pred: ArrayLike, labels: ArrayLike) -> float:
    """The fraction of predictions equal to their label.

    >>> accuracy([1, 0, 1, 1], [1, 1, 1, 0])
    0.5
    """
    pred, labels = _pair(pred, labels)
    return float(np.mean(pred == labels))


def f1_score(pred: ArrayLike, labels: ArrayLike) -> float:
    """Binary F1 of the positive class 1: ``2 tp / (2 tp + fp + fn)``; 0.0 when there is no positive at all.

    >>> f1_score([1, 1, 0, 0], [1, 0, 1, 0])
    0.5
    """
    pred, labels = _pair(pred, labels)
    tp = int(np.sum((pred == 1) & (labels == 1)))
    wrong = int(np.sum(pred != labels))  # fp + fn
    return 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0


def matthews_corrcoef(pred: ArrayLike, labels: ArrayLike) -> float:
    """The Matthews correlation coefficient (multi-class form, Gorodkin 2004); 0.0 when it is undefined.

    ``(c s - t.p) / sqrt((s^2 - p.p) (s^2 - t.t))`` with ``t`` / ``p`` the true / predicted count of each class,
    ``c`` the correct predictions and ``s`` the examples; for two classes this is the usual
    ``(tp tn - fp fn) / sqrt((tp + fp) (tp + fn) (tn + fp) (tn + fn))``.

    >>> matthews_corrcoef([1, 1, 1, 0], [1, 1, 0, 0])
    0.5773502691896258
    >>> matthews_corrcoef([1, 1, 1, 1], [1, 1, 0, 0])  # a constant predictor
    0.0
    """
    pred, labels = _pair(pred, labels)
    classes, index = np.unique(np.concatenate([labels, pred]), return_inverse=True)
    true_idx, pred_idx = index[:labels.size], index[labels.size:]
    # float64 throughout: the products overflow int64 beyond about 10^9 examples, and are exact below 2^53.
    t = np.bincount(true_idx, minlength=classes.size).astype(np.float64)
    p = np.bincount(pred_idx, minlength=classes.size).astype(np.float64)
    c = float(np.sum(true_idx == pred_idx))
    s = float(labels.size)
    denominator = (s * s - p @ p) * (s * s - t @ t)
    return float((c * s - t @ p) / np.sqrt(denominator)) if denominator > 0 else 0.0


def pearson(pred: ArrayLike, labels: ArrayLike) -> float:
    """Pearson's correlation coefficient; 0.0 when either side is constant.

    >>> pearson([1.0, 2.0, 3.0], [2.0, 4.0, 7.0])
    0.9933992677987828
    """
    pred, labels = _pair(pred, labels)
    x = pred.astype(np.float64) - pred.mean(dtype=np.float64)
    y = labels.astype(np.float64) - labels.mean(dtype=np.float64)
    denominator = np.sqrt((x @ x) * (y @ y))
    if denominator == 0:
        return 0.0
    return float(np.clip((x @ y) / denominator, -1.0, 1.0))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of the ranks they span (scipy's ``rankdata(method="average")``)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of the last copy of each distinct value
    return (last - (counts - 1) / 2.0)[inverse]


def spearmanr(pred: ArrayLike, labels: ArrayLike) -> float:
    """Spearman's rank correlation: Pearson's on the ranks, tied values sharing their average rank.

    >>> spearmanr([1.0, 2.0, 2.0, 4.0], [1.0, 3.0, 2.0, 4.0])
    0.9486832980505138
    """
    pred, labels = _pair(pred, labels)
    return pearson(_average_ranks(pred), _average_ranks(labels))


_METRICS: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {
    "accuracy": accuracy,
    "f1": f1_score,
    "matthews_correlation": matthews_corrcoef,
    "pearson": pearson,
    "spearmanr": spearmanr,
}


def compute_metrics(task: TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every metric of ``task`` on the dev predictions, plus ``combined`` (their mean) when the task has two.

    ``predictions``: classification logits ``(N, num_labels)`` (or class ids ``(N,)``); regression scores
    ``(N,)`` or ``(N, 1)``.

    >>> from nasbert.finetune import get_task
    >>> compute_metrics(get_task("stsb"), np.array([[0.5], [2.0], [4.5]]), np.array([1.0, 2.5, 4.0]))
    {'pearson': 0.989743318610787, 'spearmanr': 1.0, 'combined': 0.9948716593053935}
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if task.is_regression:
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]
        if predictions.ndim != 1:
            raise ValueError(f"{task.name} is a regression task: predictions must have shape (N,) or (N, 1), "
                             f"got {predictions.shape}")
        labels = labels.astype(np.float64)
    elif predictions.ndim == 2 and predictions.shape[1] == task.num_labels:
        predictions = predictions.argmax(axis=-1)
    elif not (predictions.ndim == 1 and np.issubdtype(predictions.dtype, np.integer)):
        raise ValueError(f"{task.name} has {task.num_labels} classes: predictions must be logits of shape "
                         f"(N, {task.num_labels}) or class ids of shape (N,), got {predictions.dtype} "
                         f"{predictions.shape}")
    unknown = [m for m in task.metrics if m not in _METRICS]
    if unknown:
        raise ValueError(f"unknown metric {', '.join(map(repr, unknown))} for task {task.name}: the metrics are "
                         f"{', '.join(_METRICS)}")
    results = {name: _METRICS[name](predictions, labels) for name in task.metrics}
    if len(results) == 2:
        results["combined"] = float(np.mean(list(results.values())))
    return results
