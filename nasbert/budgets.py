"""Search budgets: a latency in ms, a speed-up over the teacher, or a parameter count.

A speed-up is relative to the teacher's latency measured on the profiled device, so ``"4x"`` means a quarter
of that latency on the same device, engine, threads and sequence length.

>>> parse_budget("4x").latency_limit_ms(teacher_latency_ms=20.0)
5.0
>>> parse_budget("12.5 ms").allows(latency_ms=12.0, params=10**9, teacher_latency_ms=None)
True
>>> parse_budget("500k").params_limit()
500000
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .config import ConfigError

__all__ = ["DEFAULT_BUDGETS", "Budget", "any_budget_violation", "budget_violation", "latency_limits", "parse_budget",
           "parse_budgets", "parse_params"]

#: What ``nasbert search`` looks for when no budget is given: speed-ups over the teacher.
DEFAULT_BUDGETS: tuple[str, ...] = ("2x", "3x", "4x", "6x")

KINDS = ("latency_ms", "speedup", "params")
_ACCEPTED = "a latency such as '12.5ms', a speed-up over the teacher such as '4x', or a parameter count such " \
            "as '10M', '500k' or '12000000'"
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_MULTIPLIERS = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000, "b": 1_000_000_000}


def _fmt(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class Budget:
    """One budget. Build with :func:`parse_budget`; ``text`` is what the user wrote."""

    kind: str
    value: float
    text: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown budget kind {self.kind!r}; known kinds: {', '.join(KINDS)}")
        if not math.isfinite(self.value) or self.value <= 0:
            raise ConfigError(f"budget {self.text!r} must be a positive, finite number")

    @property
    def name(self) -> str:
        """A canonical short name: ``"4x"``, ``"12.5ms"``, ``"10M"``, ``"500k"``."""
        if self.kind == "speedup":
            return f"{_fmt(self.value)}x"
        if self.kind == "latency_ms":
            return f"{_fmt(self.value)}ms"
        for suffix, mult in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            q = self.value / mult
            if q >= 1 and abs(q * 10 - round(q * 10)) < 1e-9:  # at most one decimal: 1.5M, 500k, not 12.345k
                return f"{_fmt(self.value / mult)}{suffix}"
        return str(int(self.value))

    def latency_limit_ms(self, teacher_latency_ms: float | None) -> float | None:
        """The latest a model may be (ms), or None for a parameter budget."""
        if self.kind == "latency_ms":
            return float(self.value)
        if self.kind == "speedup":
            if teacher_latency_ms is None or not teacher_latency_ms > 0:
                raise ConfigError(f"budget {self.text!r} is a speed-up over the teacher, but the latency profile has "
                                  "no teacher latency: profile the device again, or give the budget in ms")
            return float(teacher_latency_ms) / float(self.value)
        return None

    def params_limit(self) -> int | None:
        """The most parameters a model may have, or None for a latency budget."""
        return int(self.value) if self.kind == "params" else None

    def allows(self, latency_ms: float, params: int, teacher_latency_ms: float | None) -> bool:
        """Whether a model of ``latency_ms`` and ``params`` meets this budget."""
        return budget_violation(self, latency_ms, params, teacher_latency_ms) <= 0.0

    def sort_key(self, teacher_latency_ms: float | None = None) -> tuple:
        """Loosest first within a kind: latency budgets by decreasing limit, then parameter budgets."""
        if self.kind == "params":
            return (1, -self.value)
        return (0, -self.latency_limit_ms(teacher_latency_ms))

    def __str__(self) -> str:
        return self.name


def parse_budget(text: str | Budget) -> Budget:
    """Parse ``"12.5ms"`` / ``"12.5 ms"`` (latency), ``"4x"`` (speed-up over the teacher), ``"10M"`` / ``"500k"`` /
    ``"12000000"`` (parameters). A :class:`Budget` is returned unchanged.

    >>> parse_budget("4X")
    Budget(kind='speedup', value=4.0, text='4X')
    """
    if isinstance(text, Budget):
        return text
    if not isinstance(text, str):
        raise ConfigError(f"budget {text!r} is not a string: give {_ACCEPTED}")
    s = text.strip()
    m = re.fullmatch(rf"({_NUMBER})\s*(ms|x|[kmgb]?)", s, flags=re.IGNORECASE)
    if m is None:
        raise ConfigError(f"cannot read budget {text!r}: give {_ACCEPTED}")
    value, unit = float(m.group(1)), m.group(3).lower()
    if unit == "ms":
        kind = "latency_ms"
    elif unit == "x":
        kind = "speedup"
        if value <= 1.0:
            raise ConfigError(f"budget {text!r}: a speed-up over the teacher must be greater than 1x")
    else:
        kind = "params"
        value = value * _MULTIPLIERS[unit]
        if value != int(value):
            raise ConfigError(f"budget {text!r}: a parameter count must be a whole number")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"budget {text!r} must be positive: give {_ACCEPTED}")
    return Budget(kind, value, s)


def parse_budgets(texts: Iterable[str | Budget] | str) -> tuple[Budget, ...]:
    """Parse several budgets (a list, or one comma-separated string); duplicates are errors."""
    if isinstance(texts, (str, Budget)):
        texts = [t for t in texts.split(",") if t.strip()] if isinstance(texts, str) else [texts]
    budgets = tuple(parse_budget(t) for t in texts)
    if not budgets:
        raise ConfigError(f"no budget given: give at least one, {_ACCEPTED}")
    names = [b.name for b in budgets]
    if len(set(names)) != len(names):
        raise ConfigError(f"budgets {names} list the same budget twice")
    return budgets


def budget_violation(budget: Budget, latency_ms: float, params: int, teacher_latency_ms: float | None) -> float:
    """How far over ``budget`` a model is, as a fraction of the limit (<= 0: within it)."""
    if budget.kind == "speedup":  # (latency - teacher / s) / (teacher / s), without the division's rounding
        budget.latency_limit_ms(teacher_latency_ms)  # raises without a teacher latency
        return (float(latency_ms) * budget.value - teacher_latency_ms) / teacher_latency_ms
    latency_limit, params_limit = budget.latency_limit_ms(teacher_latency_ms), budget.params_limit()
    if latency_limit is not None:
        return (float(latency_ms) - latency_limit) / latency_limit
    return (float(params) - params_limit) / params_limit


_PARAMS = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([kKmMbB]?)\s*$")
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9}


def parse_params(text: str | int) -> int:
    """A parameter count: ``"10M"`` -> 10_000_000; also ``"500k"``, ``"1.5M"``, ``"12000000"``, ``"2B"``.

    >>> parse_params("1.5M"), parse_params("500k"), parse_params("12000000")
    (1500000, 500000, 12000000)
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _PARAMS.match(str(text)) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"parameter count {text!r} not understood: write a number, optionally with k, M or B "
                             "(e.g. 10M, 500k, 1.5M, 12000000)")
        value = round(float(match.group(1)) * _SCALE[match.group(2).lower()])
    if value <= 0:
        raise ValueError(f"parameter count must be positive, got {text!r}")
    return value


def any_budget_violation(budgets: Sequence[Budget], latency_ms: float, params: int,
                         teacher_latency_ms: float | None) -> float:
    """The smallest violation over ``budgets``: <= 0 exactly when the model meets at least one of them, i.e.
    the loosest budget. Samplers use it as their single constraint (Optuna: feasible when <= 0)."""
    return min(budget_violation(b, latency_ms, params, teacher_latency_ms) for b in budgets)


def latency_limits(budgets: Sequence[Budget], teacher_latency_ms: float | None) -> list[float]:
    """The latency limits (ms) of ``budgets`` for a teacher of ``teacher_latency_ms``; parameter budgets have none.

    >>> latency_limits(parse_budgets("2x,10M,15ms"), 40.0)
    [20.0, 15.0]
    """
    return [b.latency_limit_ms(teacher_latency_ms) for b in budgets if b.kind != "params"]
