"""Pick the family member that fits a budget: the best among the members that meet it, as the export ranks (the
highest probe score, a short fine-tune; then the highest cosine to the teacher; the lowest loss for members that
have neither).

A budget is one of: a latency in ms on the family's device, a speed-up over the teacher on that device, or a
parameter count. With ``measure=True`` every member (and the teacher, where the family has ``teacher.onnx``) is
timed again on this machine first, so that the pick is made for where the model will run.

>>> from nasbert import pick
>>> member = pick("runs/minilm/family", speedup=4)  # doctest: +SKIP
>>> member.name, member.latency_ms  # doctest: +SKIP
('x4', 4.3)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..budgets import Budget, latency_limits, parse_params
from .cuts import busy, judged_ms
from .family import Family, FamilyError, FamilyMember

__all__ = ["PRECISIONS", "NoFit", "format_params", "measure_family", "parse_params", "pick", "pick_with_family"]

logger = logging.getLogger(__name__)

TEACHER_ONNX = "teacher.onnx"
_TEACHER_KEY = "\0teacher"  # cannot collide with a member's name in measure_interleaved's mapping
_INT8_KEY = "\0int8"
#: what measure_family records of its own timing in a member's ``extra`` (a new measurement replaces them)
_MEASURED_EXTRA = ("timed_speedup", "first_speedup", "edge_runs", "int8_first_speedup", "int8_edge_runs")
PRECISIONS = ("fp32", "int8", "any")


class NoFit(ValueError):
    """No member of the family meets the budget; the message names the tightest budget that can be met."""


def format_params(n: int) -> str:
    return f"{n:,} ({n / 1e6:.2f}M)"


# ---------------------------------------------------------------------------------------------------- measuring


def _vocab_size(directory: Path) -> int | None:
    try:
        return int(json.loads((directory / "config.json").read_text(encoding="utf-8"))["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _onnx_of(family: Family, member: FamilyMember) -> Path:
    path = family.onnx_path(member) or family.member_dir(member) / "model.onnx"
    if not path.is_file():
        raise FamilyError(f"member {member.name!r} has no ONNX model to measure ({str(path)!r} does not exist); "
                          "export it with ONNX, or pick without --measure")
    return path


def measure_family(family: Family, *, threads: int | None = None, warmup: int = 3, repeats: int = 15,
                   rounds: int = 3, seed: int = 0,
                   limits: Callable[[float], Iterable[float | None]] | None = None) -> Family:
    """A copy of ``family`` with every member's ``latency_ms`` and ``speedup`` measured again on this machine
    (ONNX Runtime, CPU, interleaved; inputs of the family's batch and sequence length). The teacher is measured
    too when the family directory holds ``teacher.onnx``; otherwise its recorded latency is kept. Nothing is
    written to disk. The copy's ``device`` describes this machine. A teacher cut timed faster than its work allows
    (its ``work_speedup``, recorded by the export) is judged at that bound, as the export judges it, and keeps the
    timed speed-up in ``timed_speedup``.

    ``limits(teacher_ms)`` gives the latency limits (ms) the caller will judge the members against (a pick's
    budget). A graph timed within :data:`~nasbert.latency.models.EDGE_MARGIN` of one is timed again, longer, and
    a third time where the two runs fall on two sides of it, as the export does
    (:func:`~nasbert.latency.models.measure_models`); the member keeps its first speed-up in ``first_speedup``
    (``int8_first_speedup`` for its int8 graph) and the three runs' in ``edge_runs`` (``int8_edge_runs``).
    """
    from ..latency.measure import OnnxRuntimeEngine, device_info
    from ..latency.models import time_engines

    threads = int(family.device["threads"] if threads is None else threads)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    batch, seq_len = int(family.device["batch"]), int(family.device["seq_len"])
    paths = {m.name: _onnx_of(family, m) for m in family.models}
    paths.update({m.name + _INT8_KEY: family._root() / m.int8_onnx for m in family.models
                  if m.int8_onnx and (family._root() / m.int8_onnx).is_file()})
    teacher_onnx = family._root() / TEACHER_ONNX
    if teacher_onnx.is_file():
        paths[_TEACHER_KEY] = teacher_onnx
    else:
        logger.warning("no %s in %s: speed-ups use the teacher latency recorded on %s (%.3f ms)", TEACHER_ONNX,
                       family.directory, family.device["key"], family.teacher_latency_ms)
    # Token values do not change a dense encoder's latency; stay inside every member's vocabulary.
    vocabs = [v for v in (_vocab_size(family.member_dir(m)) for m in family.models) if v]
    ids = np.random.default_rng(seed).integers(1, max(2, min(vocabs, default=2)), size=(batch, seq_len))
    feeds = {"input_ids": ids.astype(np.int64), "attention_mask": np.ones((batch, seq_len), np.int64),
             "token_type_ids": np.zeros((batch, seq_len), np.int64)}
    engines = {name: OnnxRuntimeEngine(path, feeds, threads=threads) for name, path in paths.items()}
    logger.info("measuring %d models on this machine (%d threads, batch %d, %d tokens)", len(engines), threads,
                batch, seq_len)
    teacher_here = _TEACHER_KEY in engines
    measured = time_engines(engines, _TEACHER_KEY if teacher_here else family.teacher_latency_ms, warmup=warmup,
                            repeats=repeats, rounds=rounds, seed=seed, limits=limits)
    for name in measured.retimed:
        logger.info("%s %s", name, measured.retiming(name))
    timings, teacher_ms = measured.latency_ms, measured.teacher_latency_ms
    models = []
    for m in family.models:
        ms = timings[m.name]
        int8 = timings.get(m.name + _INT8_KEY)
        extra = {k: v for k, v in m.extra.items() if k not in _MEASURED_EXTRA}
        for prefix, key in (("", m.name), ("int8_", m.name + _INT8_KEY)):
            extra.update({prefix + k: v for k, v in measured.first_speedup(key).items()})
        judged = judged_ms(ms, teacher_ms, m.extra.get("work_speedup") if teacher_here else None)
        if judged != ms:  # as the export judges it (export.work_bound)
            log, why = ((logger.warning, "the host is probably busy") if busy(ms, judged)
                        else (logger.info, "within the timing's noise"))
            log("%s timed at %.2fx, faster than its work allows (%.2fx), %s; judged at the bound", m.name,
                teacher_ms / ms, teacher_ms / judged, why)
            extra["timed_speedup"], ms = teacher_ms / ms, judged
        models.append(dataclasses.replace(m, latency_ms=ms, speedup=teacher_ms / ms, extra=extra,
                                          **({"int8_latency_ms": int8,
                                              "int8_speedup": teacher_ms / int8} if int8 else {})))
    here = device_info(engine="onnxruntime", device="cpu", threads=threads, batch=batch, seq_len=seq_len).to_dict()
    return dataclasses.replace(family, models=models, teacher_latency_ms=teacher_ms, device=here,
                               extra={**family.extra, "measured_here": True,
                                      "teacher_measured_here": teacher_here})


# ---------------------------------------------------------------------------------------------------- picking


def _rank(m: FamilyMember) -> tuple[float, float, float, float, str]:
    """Best first, as the export ranks: the highest probe score (members chosen without a probe have none), the
    highest cosine to the teacher (members of older families have none), then the lowest loss, then the faster
    member."""
    loss, probe = m.loss, m.extra.get("probe")
    return (-probe if probe is not None else math.inf, -m.cosine if m.cosine is not None else math.inf,
            math.inf if loss is None else loss, m.latency_ms, m.name)


def _no_fit(family: Family, latency_ms, speedup, max_params) -> NoFit:
    fastest = min(family.models, key=lambda m: (m.latency_ms, m.name))
    teacher = family.teacher_latency_ms
    if latency_ms is not None:
        best = math.ceil(fastest.latency_ms * 1000) / 1000  # rounded up, so that the budget suggested fits
        return NoFit(f"no model fits {latency_ms} ms on {family.device['key']}: the fastest member, "
                     f"{fastest.name!r}, runs in {fastest.latency_ms:.3f} ms "
                     f"({teacher / fastest.latency_ms:.2f}x faster than the teacher); ask for at least {best} ms")
    if speedup is not None:
        ratio = teacher / fastest.latency_ms
        best = math.floor(ratio * 100) / 100  # rounded down, so that the budget suggested fits
        return NoFit(f"no model fits {speedup}x: the fastest member, {fastest.name!r}, runs {ratio:.2f}x faster "
                     f"than the teacher ({fastest.latency_ms:.3f} ms vs {teacher:.3f} ms on "
                     f"{family.device['key']}); ask for at most {best}x")
    smallest = min(family.models, key=lambda m: (m.params, m.name))
    return NoFit(f"no model fits {format_params(max_params)} parameters: the smallest member, {smallest.name!r}, "
                 f"has {format_params(smallest.params)}; ask for at least {smallest.params}")


def _views(family: Family, precision: str) -> list[FamilyMember]:
    """The (member, precision) pairs ``precision`` allows, each as a member whose ``latency_ms``, ``speedup`` and
    ``onnx`` are that precision's (``extra["precision"]`` says which), best first: members in :func:`_rank`
    order, a member's fp32 graph before its int8 one (int8 trades a little accuracy for speed)."""
    out = []
    for m in sorted(family.models, key=_rank):
        if precision in ("fp32", "any"):
            out.append(dataclasses.replace(m, extra={**m.extra, "precision": "fp32"}))
        if precision in ("int8", "any") and m.int8_onnx and m.int8_latency_ms and m.int8_speedup:
            # the int8 graph's own timing near a budget's edge (measure_family), under the fp32 names
            extra = {k: v for k, v in m.extra.items() if k not in ("first_speedup", "edge_runs")}
            extra.update({k[len("int8_"):]: extra.pop(k) for k in ("int8_first_speedup", "int8_edge_runs")
                          if k in extra})
            out.append(dataclasses.replace(m, latency_ms=m.int8_latency_ms, speedup=m.int8_speedup,
                                           onnx=m.int8_onnx, extra={**extra, "precision": "int8"}))
    if not out:
        raise FamilyError(f"family {str(family.directory)!r} has no timed int8 graph: export it with "
                          "`export.int8: true` (`nasbert export --run RUN --force`), or pick --precision fp32")
    return out


def pick(family: Family | str | os.PathLike, **budget) -> FamilyMember:
    """The best member (highest probe score; then highest cosine to the teacher; where members have neither, lowest
    validation loss, or proxy loss) among those that meet the one budget given: ``latency_ms`` (at most, on the family's device),
    ``speedup`` (at least, over the teacher on the same device) or ``max_params`` (an int or ``"10M"``). Ties go
    to the faster member. ``precision``: ``"fp32"`` graphs (the default), ``"int8"`` graphs or ``"any"`` (see
    :func:`_views`).

    With ``measure=True``, latencies are measured again on this machine first (``threads``: how many; see
    :func:`measure_family`); the member returned carries the new ``latency_ms`` and ``speedup``. Raises
    :class:`NoFit` when none fits.

    >>> pick("runs/minilm/family", max_params="10M").name  # doctest: +SKIP
    'x8'
    """
    return pick_with_family(family, **budget)[0]


def pick_with_family(
    family: Family | str | os.PathLike,
    *,
    latency_ms: float | None = None,
    speedup: float | None = None,
    max_params: int | str | None = None,
    measure: bool = False,
    threads: int | None = None,
    precision: str = "fp32",
) -> tuple[FamilyMember, Family]:
    """:func:`pick` (the arguments are described there), also returning the family its numbers come from
    (re-measured with ``measure``)."""
    given = {k: v for k, v in (("latency_ms", latency_ms), ("speedup", speedup), ("max_params", max_params))
             if v is not None}
    if len(given) != 1:
        raise ValueError("give exactly one budget: latency_ms, speedup or max_params"
                         + (f" (got {', '.join(given)})" if given else ""))
    if max_params is not None:
        max_params = parse_params(max_params)
    for key in ("latency_ms", "speedup"):
        value = given.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise ValueError(f"{key} must be a positive number, got {value!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not isinstance(family, Family):
        family = Family.load(family)
    if not family.models:
        raise FamilyError(f"family {str(family.directory)!r} has no members")
    budget = (Budget("latency_ms", float(latency_ms), f"{latency_ms}ms") if latency_ms is not None else
              Budget("speedup", float(speedup), f"{speedup}x") if speedup is not None else
              Budget("params", float(max_params), str(max_params)))
    if measure:  # with the budget's latency limit, so that a member timed near it is timed again, longer
        family = measure_family(family, threads=threads, limits=lambda teacher_ms: latency_limits([budget], teacher_ms))

    views = _views(family, precision)
    # a speed-up is over the teacher timed in the same run as the graph (an int8 graph's own run)
    fits = [m for m in views if budget.allows(m.latency_ms, m.params, m.latency_ms * m.speedup
                                              if m.extra["precision"] == "int8" else family.teacher_latency_ms)]
    if not fits:
        raise _no_fit(dataclasses.replace(family, models=views), latency_ms, speedup, max_params)
    return fits[0], family
