"""Run the search as a Ray Tune experiment, on this machine or on a cluster. The only module that imports Ray.

Ray Tune drives the same :class:`~nasbert.search.objective.Objective` as the Optuna search, through
``ray.tune.search.optuna.OptunaSearch`` with an NSGA-II sampler over (proxy loss, latency) constrained to the
loosest budget. Each trial is a Tune trial (retried on failure up to ``max_failures`` times); results go
through the same writer as the in-process search (trials.csv, pareto.json, pareto.png in ``out_dir``), and
Tune's own records under ``out_dir/ray/``.

>>> from nasbert.search.ray_search import run_ray_search
>>> result = run_ray_search(objective, budgets=["4x"], trials=500, address="auto",  # doctest: +SKIP
...                         max_concurrent=16, out_dir="RUN/search")
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
from tqdm.auto import tqdm

from ..budgets import DEFAULT_BUDGETS, Budget, parse_budgets
from .objective import Evaluation, Objective
from .optuna_search import (
    EVALUATION_FIELDS, BudgetConstraint, SearchResult, TrialRecord, _quiet_optuna, suggest_arch, summarize,
)

__all__ = ["run_ray_search"]

logger = logging.getLogger(__name__)


class _DefineByRun:
    """OptunaSearch's define-by-run space: sample the blocks and set the budget constraint on the Optuna trial at
    ask time (the objective is pure and cheap, so the trainable's evaluation is the same)."""

    def __init__(self, objective: Objective, constraint: BudgetConstraint):
        self.objective, self.constraint = objective, constraint

    def __call__(self, ot_trial) -> None:
        suggest_arch(ot_trial, self.objective, self.constraint)


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II sampler, picklable: Tune pickles its search algorithm with the experiment, and the sampler
    holds a thread lock (Optuna 5), which is left out and made anew on unpickling."""

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_thread_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def _evaluate_trial(config: dict, objective: Objective) -> None:
    """The Tune trainable: evaluate one architecture and report its evaluation."""
    from ray import tune

    arch = objective.arch_from_params(config)
    ev = objective(arch)
    tune.report({**ev.to_dict(), "arch": str(arch)})


def run_ray_search(
    objective: Objective,
    *,
    budgets: Iterable[str | Budget] | str = DEFAULT_BUDGETS,
    trials: int = 200,
    address: str | None = None,
    num_cpus: int | None = None,
    max_concurrent: int = 2,
    max_failures: int = 2,
    seed: int = 0,
    out_dir: str | os.PathLike,
    top_k: int = 5,
    population_size: int = 50,
    experiment_name: str = "nasbert-search",
    show_progress: bool = True,
) -> SearchResult:
    """Search with Ray Tune (``OptunaSearch``, NSGA-II) and write the same outputs as :func:`run_search`.

    ``address``: None starts a local Ray instance (``num_cpus`` of them) that is shut down afterwards;
    ``"auto"`` or ``"ray://host:10001"`` joins a running cluster. An already initialised Ray is used as is.
    """
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be a positive integer, got {trials!r}")
    if max_concurrent < 1 or max_failures < 0:
        raise ValueError("max_concurrent must be >= 1 and max_failures >= 0")
    budgets = parse_budgets(budgets)
    teacher_ms = objective.teacher_latency_ms
    for b in budgets:
        b.latency_limit_ms(teacher_ms)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)

    started = _ray_init(address, num_cpus)
    try:
        sampler = PicklableNSGAIISampler(population_size=population_size, seed=seed)
        with _quiet_optuna():  # OptunaSearch creates its study at once, which Optuna logs at INFO
            searcher = OptunaSearch(space=_DefineByRun(objective, BudgetConstraint(budgets, teacher_ms)),
                                    metric=["proxy_loss", "latency_ms"], mode=["min", "min"], sampler=sampler,
                                    seed=seed)
        bar = tqdm(total=trials, desc="ray search", unit="trial", disable=not show_progress)

        class _Progress(tune.Callback):
            """Advances the driver's progress bar; Tune pickles its callbacks with the experiment, and the bar
            (it holds a lock) stays in this process."""

            def __init__(self, progress):
                self.progress = progress

            def __getstate__(self):
                return {"progress": None}

            def on_trial_complete(self, iteration, trials, trial, **info):
                if self.progress is not None:
                    self.progress.update(1)

        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_evaluate_trial, objective=objective), {"cpu": 1}),
            tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=max_concurrent),
                                        num_samples=trials, reuse_actors=True),
            run_config=tune.RunConfig(name=experiment_name, storage_path=str(out / "ray"), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=max_failures),
                                      callbacks=[_Progress(bar)]),
        )
        # The legacy reporter honours verbose=0; the default one prints its tables regardless.
        previous = os.environ.get("RAY_AIR_NEW_OUTPUT")
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        try:
            grid = tuner.fit()
        finally:
            bar.close()
            if previous is None:
                os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
            else:
                os.environ["RAY_AIR_NEW_OUTPUT"] = previous
    finally:
        if started:
            ray.shutdown()

    finished = []
    for i in range(len(grid)):
        res = grid[i]
        if res.error is not None or not all(k in (res.metrics or {}) for k in EVALUATION_FIELDS):
            logger.warning("ray trial %s failed: %s", (res.metrics or {}).get("trial_id", i), res.error)
            continue
        finished.append(res)
    finished.sort(key=lambda res: str(res.metrics.get("trial_id", "")))  # ids end in the trial's index
    records = [TrialRecord(n, objective.arch_from_params({k: res.config[k] for k in objective.param_names}),
                           Evaluation.from_mapping(res.metrics), study=experiment_name)
               for n, res in enumerate(finished)]
    if len(records) < trials:
        logger.warning("ray search: %d of %d trials finished", len(records), trials)
    info = {"backend": "ray", "sampler": "nsga2", "seed": seed, "experiment": experiment_name,
            "storage": str(out / "ray"), "trials": trials, "max_concurrent": max_concurrent}
    return summarize(records, budgets=budgets, teacher_latency_ms=teacher_ms, out_dir=out, top_k=top_k, info=info)


def _ray_init(address: str | None, num_cpus: int | None) -> bool:
    """Start (address None) or join a Ray instance unless one is running; returns whether this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
    if address is None:
        kwargs.update(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    elif not str(address).startswith("ray://"):
        kwargs.update(log_to_driver=False)
    ray.init(address=address, **kwargs)
    return True


def _whole_model_losses(supernet_dir: str, teacher: str, archs: list[str], batches: list) -> dict[str, float]:
    """Runs in a Ray task: load the supernet and the teacher, evaluate ``archs`` as whole models."""
    from ..training.evaluation import whole_model_loss
    from ..space import Arch
    from ..supernet import SuperNet
    from ..teacher import load_teacher

    supernet = SuperNet.from_pretrained(supernet_dir)
    model, _, _ = load_teacher(teacher)
    return {a: whole_model_loss(supernet, model, Arch.parse(a), batches) for a in archs}


def ray_whole_model_losses(supernet_dir: str | os.PathLike, teacher: str, archs: Iterable[str], batches: list, *,
                           address: str | None = None, num_cpus: int | None = None) -> dict[str, float]:
    """The export's whole-model re-evaluation of candidate architectures, spread over Ray tasks (one CPU each;
    every task loads the saved supernet and the teacher itself, so only paths and batches travel)."""
    import ray

    archs = list(archs)
    started = _ray_init(address, num_cpus)
    try:
        n_tasks = max(1, min(len(archs), int(ray.available_resources().get("CPU", 1))))
        task = ray.remote(num_cpus=1)(_whole_model_losses)
        batches_ref = ray.put(batches)
        futures = [task.remote(str(supernet_dir), teacher, archs[i::n_tasks], batches_ref) for i in range(n_tasks)]
        losses: dict[str, float] = {}
        for part in ray.get(futures):
            losses.update(part)
        return losses
    finally:
        if started:
            ray.shutdown()
