"""Search the shrunk space with Optuna, and write what any search found (trials.csv, pareto.json, pareto.png).

NSGA-II (default) runs one multi-objective study minimising (proxy loss, predicted latency), constrained to
the loosest budget; TPE runs one single-objective study per budget, minimising the proxy loss within it;
``random`` samples uniformly (a baseline). Studies live in an Optuna RDB storage (SQLite file
``out_dir/study.db`` by default, PostgreSQL for many machines), so an interrupted search resumes and several
workers can share one study: trials already in the study count toward ``trials``.

>>> from nasbert.search import Objective, run_search
>>> objective = Objective.from_run("RUN")  # doctest: +SKIP
>>> result = run_search(objective, budgets=["2x", "4x", "10M"], trials=300, out_dir="RUN/search")  # doctest: +SKIP
>>> arch, evaluation = result.best("4x")  # doctest: +SKIP

The writers at the bottom (:func:`summarize`) are shared with :mod:`nasbert.search.ray_search`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tqdm.auto import tqdm

from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text, fault_point
from ..space import Arch, SpaceError
from ..budgets import DEFAULT_BUDGETS, Budget, any_budget_violation, parse_budgets
from .objective import Evaluation, Objective
from .study import HEARTBEAT_S, SAMPLERS, SearchError, count_states, enqueue_once, open_study, resolve_storage, \
    run_trials

__all__ = ["SAMPLERS", "BudgetConstraint", "Candidate", "SearchError", "SearchResult", "TrialFunction", "TrialRecord",
           "load_pareto", "load_shortlists", "pareto_front", "run_search", "select_per_budget", "study_plan",
           "study_records", "suggest_arch", "summarize"]

logger = logging.getLogger(__name__)

EVALUATION_FIELDS = ("proxy_loss", "latency_ms", "params", "flops")


class Candidate(NamedTuple):
    """An architecture and its evaluation; unpacks as ``arch, evaluation``."""

    arch: Arch
    evaluation: Evaluation


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial of a search."""

    number: int
    arch: Arch
    evaluation: Evaluation
    study: str = ""
    #: one of the starting points the study evaluated first (``enqueue``)
    enqueued: bool = False

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.arch, self.evaluation)


@dataclass
class SearchResult:
    """What a search found. ``selections[budget.name]`` ranks the best distinct feasible architectures (best
    first; empty when no trial met the budget)."""

    budgets: tuple[Budget, ...]
    trials: list[TrialRecord]
    front: list[Candidate]
    selections: dict[str, list[Candidate]]
    teacher_latency_ms: float | None
    files: dict[str, Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def best(self, budget: str | Budget) -> Candidate | None:
        """The best architecture found within ``budget`` (a name such as ``"4x"``), or None."""
        name = budget.name if isinstance(budget, Budget) else parse_budgets([budget])[0].name
        ranked = self.selections[name]
        return ranked[0] if ranked else None


# --------------------------------------------------------------------------------------------------------------
# Constraint shared by the samplers
# --------------------------------------------------------------------------------------------------------------


class BudgetConstraint:
    """The one constraint every sampler gets: <= 0 when an evaluation meets at least one budget (the loosest).

    Set on each trial with ``trial.set_constraint(BudgetConstraint.key, constraint(evaluation))`` (Optuna 5's
    replacement of ``constraints_func``); NSGA-II and TPE then prefer feasible trials. A class, not a closure,
    so that a trial function holding it can be pickled (it travels to Ray workers).
    """

    key = "budget"

    def __init__(self, budgets: Sequence[Budget], teacher_latency_ms: float | None):
        self.budgets, self.teacher_latency_ms = tuple(budgets), teacher_latency_ms

    def __call__(self, evaluation: Evaluation) -> float:
        return any_budget_violation(self.budgets, evaluation.latency_ms, evaluation.params, self.teacher_latency_ms)


def suggest_arch(trial, objective: Objective, constraint: BudgetConstraint | None = None) -> tuple[Arch, Evaluation]:
    """Sample an architecture in an Optuna trial (:meth:`Objective.suggest_params`: one categorical per block, or an
    elastic space's head and neuron counts per layer), evaluate it, and record the evaluation (user attribute
    ``evaluation``) and the budget constraint on the trial."""
    arch = objective.arch_from_params(objective.suggest_params(trial))
    ev = objective(arch)
    # One attribute, not five: each is a committed write in an RDB storage.
    trial.set_user_attr("evaluation", {"arch": str(arch), **ev.to_dict()})
    if constraint is not None:
        trial.set_constraint(constraint.key, constraint(ev))
    return arch, ev


def _evaluation_of(trial, objective: Objective) -> Evaluation:
    saved = trial.user_attrs.get("evaluation")
    if isinstance(saved, dict) and all(k in saved for k in EVALUATION_FIELDS):
        return Evaluation.from_mapping(saved)
    return objective(objective.arch_from_params(trial.params))


# --------------------------------------------------------------------------------------------------------------
# The Optuna search
# --------------------------------------------------------------------------------------------------------------


def run_search(
    objective: Objective,
    *,
    budgets: Iterable[str | Budget] | str = DEFAULT_BUDGETS,
    sampler: str = "nsga2",
    trials: int = 200,
    storage: Any = None,
    study_name: str = "nasbert",
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    top_k: int = 5,
    population_size: int = 50,
    show_progress: bool = True,
    enqueue: Sequence[Arch] = (),
    starting_k: int = 0,
    edge_margin: float = 0.0,
    heartbeat_s: int | None = HEARTBEAT_S,
) -> SearchResult:
    """Search ``objective`` under ``budgets`` with Optuna and write trials.csv, pareto.json, pareto.png to
    ``out_dir`` (nothing is written without one).

    ``storage``: an Optuna RDB URL or storage object; None means ``sqlite:///out_dir/study.db`` (in memory
    without ``out_dir``), ``"memory"`` forces memory. ``trials`` is the number of complete trials a study should
    hold: trials already in it (from an interrupted run, or other processes searching it now) count, and the
    trials of a process that died are retried (:mod:`nasbert.search.study`; ``heartbeat_s``). With
    ``sampler="tpe"`` each budget has its own study (``{study_name}-{budget}``) of ``trials`` trials. ``enqueue``:
    architectures a new study evaluates first (Optuna's ``enqueue_trial``), e.g. the layer-dropped teachers, so
    that the search starts from them and keeps them only where its proxy agrees; those outside the searched
    candidates are left out. Each budget's selection is its ``top_k`` trials by proxy loss, then its best
    ``starting_k`` enqueued ones at each attention depth, predicted up to ``edge_margin`` beyond its limit
    (:func:`select_per_budget`).

    >>> result = run_search(objective, budgets=["3x"], trials=100, storage="memory")  # doctest: +SKIP
    """
    budgets, teacher_ms, out = _check_search(objective, sampler, trials, top_k, budgets, out_dir)
    storage_obj, storage_desc = resolve_storage(storage, out, heartbeat_s=heartbeat_s)
    records: list[TrialRecord] = []
    for name, study_budgets, multi in study_plan(sampler, budgets, study_name):
        study = open_study(storage_obj, name, sampler=sampler, seed=seed, multi=multi,
                           population_size=population_size, shown=storage_desc)
        enqueue_starting_points(study, objective, enqueue)
        trial_fn = TrialFunction(objective, study_budgets, teacher_ms, sampler, multi)
        logger.info("study %r (%s, %s): %s; %d trials wanted", name, sampler, storage_desc,
                    _states_text(study), trials)
        done = len(complete_trials(study))
        if done < trials:
            with tqdm(total=trials, initial=done, desc=f"search {name}", disable=not show_progress,
                      unit="trial") as bar:
                run_trials(study, trial_fn, trials,
                           on_trial=lambda: (bar.update(1), fault_point("search.trial")))
        records += study_records(study, objective)

    info = {"backend": "optuna", "sampler": sampler, "seed": seed, "study_name": study_name,
            "storage": storage_desc, "trials": trials}
    return summarize(records, budgets=budgets, teacher_latency_ms=teacher_ms, out_dir=out, top_k=top_k, info=info,
                     starting_k=starting_k, edge_margin=edge_margin)


# --------------------------------------------------------------------------------------------------------------
# Pieces shared with the Ray search
# --------------------------------------------------------------------------------------------------------------


def _check_search(objective: Objective, sampler: str, trials, top_k: int, budgets, out_dir):
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be a positive integer, got {trials!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k!r}")
    budgets = parse_budgets(budgets)
    teacher_ms = objective.teacher_latency_ms
    for b in budgets:
        b.latency_limit_ms(teacher_ms)  # a speed-up budget without a teacher latency fails here, before any trial
    return budgets, teacher_ms, (Path(out_dir) if out_dir is not None else None)


def study_plan(sampler: str, budgets: Sequence[Budget], study_name: str) -> list[tuple[str, tuple[Budget, ...], bool]]:
    """The studies of a search, each ``(name, its budgets, multi-objective)``: one for NSGA-II and random search,
    one per budget for TPE."""
    if sampler == "tpe":
        return [(f"{study_name}-{b.name}", (b,), False) for b in budgets]
    return [(study_name, tuple(budgets), True)]


class TrialFunction:
    """The Optuna objective of one study: sample an architecture, evaluate it, return (proxy loss, latency) or the
    proxy loss. A class, so that it travels to Ray workers."""

    def __init__(self, objective: Objective, budgets: Sequence[Budget], teacher_ms: float | None, sampler: str,
                 multi: bool):
        self.objective, self.multi = objective, multi
        self.constraint = BudgetConstraint(budgets, teacher_ms) if sampler != "random" else None

    def __call__(self, trial):
        _, ev = suggest_arch(trial, self.objective, self.constraint)
        return (ev.proxy_loss, ev.latency_ms) if self.multi else ev.proxy_loss


def enqueue_starting_points(study, objective: Objective, archs: Sequence[Arch]) -> int:
    """Queue ``archs`` as a new study's first trials (none if the study has trials); those outside the searched
    candidates are left out."""
    params = []
    for arch in archs:
        try:
            params.append(objective.params_from_arch(arch))
        except SpaceError:
            logger.info("not enqueued (outside the searched candidates): %s", arch)
    return enqueue_once(study, params)


def complete_trials(study) -> list:
    import optuna

    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def study_records(study, objective: Objective) -> list[TrialRecord]:
    """The complete trials of a study as :class:`TrialRecord` (a retried trial is a starting point if its first
    try was)."""
    return [TrialRecord(t.number, objective.arch_from_params(t.params), _evaluation_of(t, objective),
                        study=study.study_name, enqueued="fixed_params" in t.system_attrs)
            for t in complete_trials(study)]


def _states_text(study) -> str:
    counts = count_states(study)
    return ", ".join(f"{n} {state.lower()}" for state, n in counts.items() if n) or "no trials yet"


# --------------------------------------------------------------------------------------------------------------
# Results: front, per-budget selection and files (shared by every search backend)
# --------------------------------------------------------------------------------------------------------------


def pareto_front(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The non-dominated trials over (proxy loss, latency), both minimised, one per distinct architecture,
    sorted by increasing latency (so by decreasing proxy loss)."""
    distinct: dict[Arch, TrialRecord] = {}
    for r in sorted(records, key=lambda r: (r.study, r.number)):
        distinct.setdefault(r.arch, r)
    ordered = sorted(distinct.values(), key=lambda r: (r.evaluation.latency_ms, r.evaluation.proxy_loss,
                                                       r.study, r.number))
    front: list[TrialRecord] = []
    best_loss = float("inf")
    for r in ordered:  # a sweep by latency: keep each trial that beats every faster one on proxy loss
        if r.evaluation.proxy_loss < best_loss:
            front.append(r)
            best_loss = r.evaluation.proxy_loss
    return front


def select_per_budget(records: Sequence[TrialRecord], budgets: Sequence[Budget], teacher_latency_ms: float | None,
                      *, top_k: int = 5, starting_k: int = 0, edge_margin: float = 0.0
                      ) -> dict[str, list[TrialRecord]]:
    """For each budget, the ``top_k`` best distinct architectures that meet it, by proxy loss (then latency); then,
    from the enqueued starting points of its band, the ``starting_k`` best by proxy loss at each attention depth
    (:attr:`~nasbert.space.Arch.attention_depth`) that are not among them.

    The cheap proxy does not rank fine-tuned quality within a budget and prefers the wider of two stacks at one
    latency, so a budget's starting points span the depths its band holds, for the probe to choose among. A
    latency budget's band is the predicted latencies up to its limit plus ``edge_margin`` (the predictor erred by 7%
    on one starting point of the default run; the export times every candidate) and above the next tighter
    budget's limit plus the margin (a starting point below that is that budget's). Per depth, it takes the best
    ones within the margin below the limit, the best ones of the margin above it (the export keeps them only where
    it measures them within), and the best ones below the margin (which the export's timing is all but sure to
    accept: a depth's widest starting point that is predicted to meet the limit can measure over it)."""
    ranked = sorted(records, key=lambda r: (r.evaluation.proxy_loss, r.evaluation.latency_ms, r.study, r.number))
    starting = [r for r in ranked if r.enqueued]
    limits = {b.name: b.latency_limit_ms(teacher_latency_ms) for b in budgets}
    out = {}
    for b in budgets:
        seen, chosen = set(), []

        def take(pool, k: int) -> None:
            n = 0
            for r in pool:
                if n == k:
                    break
                if r.arch not in seen:
                    seen.add(r.arch)
                    chosen.append(r)
                    n += 1

        def meets(r: TrialRecord) -> bool:
            return b.allows(r.evaluation.latency_ms, r.evaluation.params, teacher_latency_ms)

        take((r for r in ranked if meets(r)), top_k)
        if not chosen or not starting_k:
            out[b.name] = chosen
            continue
        limit, near, floor = limits[b.name], [], 0.0
        if limit is not None:
            tighter = [v for v in limits.values() if v is not None and v < limit]
            floor = max(tighter) * (1 + edge_margin) if tighter else 0.0
            near = [r for r in starting if limit < r.evaluation.latency_ms <= limit * (1 + edge_margin)]
        inside = [r for r in starting if meets(r) and r.evaluation.latency_ms > floor]
        safe = limit * (1 - edge_margin) if limit is not None else float("inf")
        tiers = ([r for r in inside if r.evaluation.latency_ms > safe], near,
                 [r for r in inside if r.evaluation.latency_ms <= safe])
        for depth in sorted({r.arch.attention_depth for r in inside + near}, reverse=True):
            for tier in tiers:
                take((r for r in tier if r.arch.attention_depth == depth), starting_k)
        out[b.name] = chosen
    return out


def summarize(records: Sequence[TrialRecord], *, budgets: Sequence[Budget], teacher_latency_ms: float | None,
              out_dir: str | os.PathLike | None, top_k: int = 5, info: dict | None = None,
              starting_k: int = 0, edge_margin: float = 0.0) -> SearchResult:
    """Turn finished trials into a :class:`SearchResult`; with ``out_dir``, write trials.csv, pareto.json and
    pareto.png there (atomically). Budgets no trial met are warned about, naming the closest trial reached."""
    records = sorted(records, key=lambda r: (r.study, r.number))
    front = pareto_front(records)
    chosen = select_per_budget(records, budgets, teacher_latency_ms, top_k=top_k, starting_k=starting_k,
                               edge_margin=edge_margin)
    warnings = []
    for b in budgets:
        if chosen[b.name]:
            continue
        if records:
            fastest = min(r.evaluation.latency_ms for r in records)
            smallest = min(r.evaluation.params for r in records)
            limit = (f"{b.latency_limit_ms(teacher_latency_ms):.4g} ms" if b.kind != "params"
                     else f"{b.params_limit():,} params")
            msg = (f"no trial meets budget {b.name} ({limit}): the fastest of {len(records)} trials takes "
                   f"{fastest:.4g} ms and the smallest has {smallest:,} params; relax the budget or search longer")
        else:
            msg = f"no trial finished, so nothing meets budget {b.name}"
        logger.warning("%s", msg)
        warnings.append(msg)
    result = SearchResult(
        budgets=tuple(budgets), trials=list(records), front=[r.candidate for r in front],
        selections={name: [r.candidate for r in rs] for name, rs in chosen.items()},
        teacher_latency_ms=teacher_latency_ms, warnings=warnings, info=dict(info or {}),
    )
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        result.files = {"trials_csv": out / "trials.csv", "pareto_json": out / "pareto.json",
                        "pareto_png": out / "pareto.png"}
        _write_trials_csv(result.files["trials_csv"], records, budgets, teacher_latency_ms)
        _write_pareto_json(result.files["pareto_json"], records, front, chosen, budgets, teacher_latency_ms,
                           result.info, warnings)
        _plot_pareto(result.files["pareto_png"], records, front, chosen, budgets, teacher_latency_ms)
        logger.info("search results: %s", ", ".join(str(p) for p in result.files.values()))
    return result


def _trial_json(r: TrialRecord, teacher_latency_ms: float | None) -> dict:
    ev = r.evaluation
    return {"number": r.number, "study": r.study, "enqueued": r.enqueued, "arch": str(r.arch),
            "blocks": r.arch.to_dict()["blocks"],
            **ev.to_dict(),
            "speedup": (teacher_latency_ms / ev.latency_ms) if teacher_latency_ms and ev.latency_ms > 0 else None}


def _write_trials_csv(path: Path, records, budgets, teacher_latency_ms) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["number", "study", "arch", *EVALUATION_FIELDS, *(f"feasible_{b.name}" for b in budgets)])
    for r in records:
        ev = r.evaluation
        writer.writerow([r.number, r.study, str(r.arch), repr(ev.proxy_loss), repr(ev.latency_ms), ev.params, ev.flops,
                         *(int(b.allows(ev.latency_ms, ev.params, teacher_latency_ms)) for b in budgets)])
    atomic_write_text(path, buf.getvalue())


def _write_pareto_json(path: Path, records, front, chosen, budgets, teacher_latency_ms, info, warnings) -> None:
    data = {
        "objectives": ["proxy_loss", "latency_ms"],
        "teacher_latency_ms": teacher_latency_ms,
        "n_trials": len(records),
        "search": info,
        "front": [_trial_json(r, teacher_latency_ms) for r in front],
        "budgets": [
            {"budget": b.name, "text": b.text, "kind": b.kind, "value": b.value,
             "latency_limit_ms": b.latency_limit_ms(teacher_latency_ms), "params_limit": b.params_limit(),
             "feasible_trials": sum(b.allows(r.evaluation.latency_ms, r.evaluation.params, teacher_latency_ms)
                                    for r in records),
             "best": [_trial_json(r, teacher_latency_ms) for r in chosen[b.name]]}
            for b in budgets
        ],
        "warnings": warnings,
    }
    atomic_write_json(path, data)


def load_shortlists(path: str | os.PathLike, *, run: str | os.PathLike | None = None
                    ) -> tuple[tuple[Budget, ...], dict[str, list[tuple[Arch, Evaluation, int | None, bool]]]]:
    """What a search wrote to ``pareto.json``: its budgets, and each budget's ranked candidates (best first) as
    ``(arch, evaluation, trial number, enqueued)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the search first (`nasbert search --run "
                                f"{run if run is not None else path.parent.parent}`)")
    pareto = json.loads(path.read_text(encoding="utf-8"))
    budgets = parse_budgets([b["budget"] for b in pareto["budgets"]])
    shortlists = {b["budget"]: [(Arch.parse(c["arch"]), Evaluation.from_mapping(c), c.get("number"),
                                 bool(c.get("enqueued", False))) for c in b["best"]]
                  for b in pareto["budgets"]}
    return budgets, shortlists


def load_pareto(path: str | os.PathLike, *, run: str | os.PathLike | None = None
                ) -> tuple[tuple[Budget, ...], dict[str, list[Candidate]]]:
    """What a search wrote to ``pareto.json``: its budgets, and each budget's ranked candidates (best first)."""
    budgets, shortlists = load_shortlists(path, run=run)
    return budgets, {name: [Candidate(arch, ev) for arch, ev, *_ in ranked] for name, ranked in shortlists.items()}


def _plot_pareto(path: Path, records, front, chosen, budgets, teacher_latency_ms) -> None:
    """All trials (proxy loss vs predicted latency), the front, the latency budgets and each budget's pick."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if records:
        ax.scatter([r.evaluation.latency_ms for r in records], [r.evaluation.proxy_loss for r in records],
                   s=9, color="0.65", alpha=0.6, label=f"trials ({len(records)})")
    if front:
        ax.plot([r.evaluation.latency_ms for r in front], [r.evaluation.proxy_loss for r in front], "-o",
                color="C0", ms=3.5, lw=1.3, label=f"Pareto front ({len(front)})")
    colors = [f"C{i + 1}" for i in range(len(budgets))]
    for b, color in zip(budgets, colors):
        limit = b.latency_limit_ms(teacher_latency_ms)
        if limit is not None:
            ax.axvline(limit, color=color, ls="--", lw=1, label=f"budget {b.name} ({limit:.3g} ms)")
        if chosen[b.name]:
            best = chosen[b.name][0].evaluation
            ax.scatter([best.latency_ms], [best.proxy_loss], marker="*", s=160, color=color, edgecolor="k",
                       zorder=5)
            ax.annotate(f"{b.name}: {best.proxy_loss:.3g} @ {best.latency_ms:.3g} ms",
                        (best.latency_ms, best.proxy_loss), textcoords="offset points", xytext=(6, 6), fontsize=8,
                        color=color)
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("proxy loss (sum of block losses)")
    title = "search: proxy loss vs latency"
    if teacher_latency_ms:
        title += f" (teacher {teacher_latency_ms:.3g} ms)"
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
