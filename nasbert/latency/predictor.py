"""The learned latency predictor: a correction fitted on top of the lookup table, on whole measured models.

A table sums ops timed alone; a whole model runs them in one graph, with fusions, cache effects and per-call
overheads the table cannot see. The predictor is a ridge regression of the measured latency on
:func:`features` (the table's own sum split by kind of op, and counts), which both fitting and prediction use;
the feature normalisation is stored inside the saved predictor. The fit minimises relative error, and its ridge
penalty is the one of :data:`RIDGE_GRID` with the least leave-one-out relative error on the measured models.

>>> predictor = LatencyPredictor.load("RUN/latency/<device-key>")  # doctest: +SKIP
>>> predictor.predict(arch)  # ms  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io import atomic_write_json
from ..modeling.configuration_nasbert import is_layer_op, op_spec
from ..space import Arch
from .table import LatencyTable, arch_adapters

__all__ = ["FEATURE_NAMES", "LatencyPredictor", "accuracy", "features", "kendall_tau"]

#: the ridge penalties :meth:`LatencyPredictor.fit` chooses from, as fractions of the mean diagonal of the fit's
#: normal equations (so the same value means the same shrinkage on any device and model size). A fixed 1e-3 (the
#: earlier default, in other units) shrank the features that tell a short model from a long one: held-out MAPE
#: 3.7% and 4.8% in two default runs, against 1.7% and 1.4% refitted on the same measurements with the penalty
#: chosen by leave-one-out (docs/benchmarks.md, 2026-12-06).
RIDGE_GRID = tuple(10.0 ** (k / 2) for k in range(-18, 1))
#: the penalty where too few models are measured for a leave-one-out choice (no more than the fit's unknowns)
FEW_MODELS_RIDGE = 1e-3

FEATURE_NAMES = ("table_mha_ms", "table_ffn_ms", "table_sepconv_ms", "table_other_ms", "layers", "adapters")


def features(arch: Arch, table: LatencyTable) -> np.ndarray:
    """The one feature function, shared by fit and predict: the table's latency of ``arch`` split by kind of
    part, the number of layers and the number of block-boundary adapters."""
    by_kind = {"mha": 0.0, "ffn": 0.0, "sepconv": 0.0, "other": 0.0}
    for key, ms in table.parts(arch).items():
        name = key.partition("@")[0]  # an op (ffn768: a pruned ffn), or embeddings / adapter / output
        kind = op_spec(name).kind if is_layer_op(name) else name
        by_kind[kind if kind in by_kind else "other"] += ms
    adapters = len(arch_adapters(arch)) - 1  # the maps between blocks that the extracted model keeps
    return np.array([by_kind["mha"], by_kind["ffn"], by_kind["sepconv"], by_kind["other"], arch.num_layers,
                     adapters], dtype=float)


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b between two rankings (ties counted as neither concordant nor discordant)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size != y.size or x.size < 2:
        raise ValueError("kendall_tau needs two sequences of the same length >= 2")
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    iu = np.triu_indices(x.size, k=1)
    dx, dy = dx[iu], dy[iu]
    concordant_minus_discordant = float((dx * dy).sum())
    n_x, n_y = float((dx != 0).sum()), float((dy != 0).sum())
    if n_x == 0 or n_y == 0:
        return 0.0
    return concordant_minus_discordant / np.sqrt(n_x * n_y)


def accuracy(predicted: Sequence[float], measured: Sequence[float]) -> dict:
    """MAPE and worst error (as fractions of the measured latency) and Kendall's tau."""
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    err = np.abs(p - m) / m
    return {"mape": float(err.mean()), "max_err": float(err.max()), "kendall_tau": kendall_tau(p, m)}


class LatencyPredictor:
    """Predicts a whole model's latency (ms) on one device from its architecture."""

    def __init__(self, table: LatencyTable, *, coef: np.ndarray, intercept: float, mean: np.ndarray,
                 scale: np.ndarray, device: dict | None = None, teacher_latency_ms: float | None = None,
                 ridge: float | None = None, loo_mape: float | None = None):
        self.table, self.coef, self.intercept = table, np.asarray(coef, float), float(intercept)
        self.mean, self.scale = np.asarray(mean, float), np.asarray(scale, float)
        self.device = device or table.device
        self.teacher_latency_ms = teacher_latency_ms
        #: the fit's ridge penalty and its leave-one-out MAPE on the models it was fitted on (None: not chosen so)
        self.ridge, self.loo_mape = ridge, loo_mape

    @classmethod
    def fit(cls, table: LatencyTable, archs: Sequence[Arch], measured_ms: Sequence[float], *,
            ridge: float | None = None, **kwargs) -> LatencyPredictor:
        """Fit on measured models. ``ridge``: the penalty, as a fraction of the mean diagonal of the normal
        equations; None chooses it from :data:`RIDGE_GRID` by the leave-one-out relative error."""
        if len(archs) != len(measured_ms) or len(archs) < 2:
            raise ValueError("fit needs at least two measured architectures, one latency each")
        if min(measured_ms) <= 0:
            raise ValueError("measured latencies must be positive")
        if ridge is not None and ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        X = np.stack([features(a, table) for a in archs])
        y = np.asarray(measured_ms, dtype=float)
        mean, scale = X.mean(axis=0), X.std(axis=0)
        scale[scale == 0] = 1.0
        Z = (X - mean) / scale
        # Ridge on standardised features, weighted by 1 / y so that the fit minimises *relative* error (a 0.4 ms
        # model matters as much as a 20 ms one, as in MAPE): a row's residual is its relative error. The intercept
        # is not penalised.
        A = np.hstack([Z, np.ones((len(Z), 1))]) / y[:, None]
        gram = A.T @ A
        unit = float(np.mean(np.diag(gram)[:-1]))  # the penalty's unit: the coefficients' mean diagonal
        loo = None
        if ridge is None and len(y) <= A.shape[1]:
            ridge = FEW_MODELS_RIDGE
        elif ridge is None:  # leave-one-out in closed form: row i's error without it is e_i / (1 - h_ii)
            ridge, loo = min(((r, _loo_mape(A, gram, r * unit)) for r in RIDGE_GRID), key=lambda t: t[1])
        solution = np.linalg.pinv(gram + _penalty(A.shape[1], ridge * unit)) @ A.T @ np.ones_like(y)
        return cls(table, coef=solution[:-1], intercept=solution[-1], mean=mean, scale=scale, ridge=ridge,
                   loo_mape=loo, **kwargs)

    def predict(self, arch: Arch) -> float:
        z = (features(arch, self.table) - self.mean) / self.scale
        return float(z @ self.coef + self.intercept)

    def predict_many(self, archs: Sequence[Arch]) -> np.ndarray:
        return np.array([self.predict(a) for a in archs])

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        self.table.save(directory / "table.json")
        atomic_write_json(directory / "predictor.json", {
            "features": list(FEATURE_NAMES), "coef": self.coef.tolist(), "intercept": self.intercept,
            "mean": self.mean.tolist(), "scale": self.scale.tolist(), "device": self.device,
            "teacher_latency_ms": self.teacher_latency_ms, "ridge": self.ridge, "loo_mape": self.loo_mape,
        })

    @classmethod
    def load(cls, directory: str | os.PathLike) -> LatencyPredictor:
        """Load a latency profile directory (``RUN/latency/<device-key>/``), possibly copied from another machine."""
        directory = Path(directory)
        if not (directory / "predictor.json").is_file() or not (directory / "table.json").is_file():
            raise FileNotFoundError(f"{directory} is not a latency profile (expected table.json and predictor.json); "
                                    "make one with `nasbert latency --run RUN`")
        data = json.loads((directory / "predictor.json").read_text(encoding="utf-8"))
        if tuple(data["features"]) != FEATURE_NAMES:
            raise ValueError(f"{directory}/predictor.json uses features {data['features']}, this nasbert computes "
                             f"{list(FEATURE_NAMES)}: profile the device again")
        return cls(LatencyTable.load(directory / "table.json"), coef=np.array(data["coef"]),
                   intercept=data["intercept"], mean=np.array(data["mean"]), scale=np.array(data["scale"]),
                   device=data.get("device"), teacher_latency_ms=data.get("teacher_latency_ms"),
                   ridge=data.get("ridge"), loo_mape=data.get("loo_mape"))


def _penalty(size: int, value: float) -> np.ndarray:
    """The ridge term of the normal equations: ``value`` on every coefficient's diagonal but the intercept's."""
    penalty = value * np.eye(size)
    penalty[-1, -1] = 0.0
    return penalty


def _loo_mape(A: np.ndarray, gram: np.ndarray, value: float) -> float:
    """The leave-one-out mean relative error of the weighted ridge fit ``A s = 1`` with penalty ``value``."""
    inverse = np.linalg.pinv(gram + _penalty(A.shape[1], value))
    residual = 1.0 - A @ (inverse @ A.T @ np.ones(len(A)))
    leverage = np.einsum("ij,jk,ik->i", A, inverse, A)
    return float(np.mean(np.abs(residual / np.maximum(1.0 - leverage, 1e-9))))
