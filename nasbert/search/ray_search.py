"""Run the search on Ray workers, on this machine or on a cluster: one shared Optuna study. The only search module
that imports Ray.

The driver creates the study in an RDB storage (``storage``: PostgreSQL for a cluster; SQLite, by default
``RUN/search/study.db``, where every node shares the filesystem) and queues its starting points. It puts the
objective (the teacher's weights, the calibration data, the latency predictor) in Ray's object store once; each of
``workers`` Ray actors loads it once, opens the same storage and runs Optuna trials in the study until it holds
``trials`` complete ones (:func:`nasbert.search.study.run_trials`, Optuna's own distributed pattern: every worker
asks the shared study's sampler for its next trial). So the heavy trials, each candidate extracted, calibrated and
scored, run on the workers, and:

- kill the driver at any time and run the same command: the search continues in the same study, its dead
  workers' trials failed by their heartbeat and retried, none lost or counted twice;
- a second ``nasbert search`` on the same storage (on Ray or not) joins the same study;
- a worker that dies is replaced (``max_failures`` times in all), and its trial retried.

The outputs are the in-process search's (trials.csv, pareto.json, pareto.png, via
:func:`~nasbert.search.optuna_search.summarize`).

>>> from nasbert.search.ray_search import run_ray_search
>>> result = run_ray_search(objective, budgets=["4x"], trials=500, address="auto", workers=16,  # doctest: +SKIP
...                         storage="postgresql://nas@db/search", out_dir="RUN/search")
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from ..budgets import DEFAULT_BUDGETS, Budget
from ..redact import redact_url
from ..space import Arch
from ..utils import ray_init
from .objective import Objective
from .optuna_search import (
    SearchResult, TrialFunction, _check_search, complete_trials, enqueue_starting_points, study_plan, study_records,
    summarize,
)
from .study import HEARTBEAT_S, SearchError, open_study, resolve_storage, run_trials

__all__ = ["run_ray_search"]

logger = logging.getLogger(__name__)


class SearchWorker:
    """One Ray worker of a search (made a Ray actor by :func:`run_ray_search`): it holds the objective, loaded once
    from the object store, and runs trials in the shared study until the study holds its count."""

    def __init__(self, objective: Objective, url: str, heartbeat_s: int | None, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.objective, self.url, self.heartbeat_s = objective, url, heartbeat_s

    def run(self, name: str, budgets: Sequence[Budget], multi: bool, sampler: str, seed: int, population_size: int,
            trials: int) -> int:
        """Run trials of study ``name`` until it holds ``trials`` complete ones; returns how many this worker
        completed."""
        if self.url.startswith("sqlite:///") and not Path(self.url[len("sqlite:///"):]).is_file():
            import socket

            raise SearchError(f"storage {redact_url(self.url)} is not on this node ({socket.gethostname()}): SQLite "
                              "works where every node shares the filesystem; on a cluster give --storage "
                              "postgresql://USER@HOST/DB")
        storage, shown = resolve_storage(self.url, None, heartbeat_s=self.heartbeat_s)
        study = open_study(storage, name, sampler=sampler, seed=seed, multi=multi, population_size=population_size,
                           shown=shown)
        fn = TrialFunction(self.objective, budgets, self.objective.teacher_latency_ms, sampler, multi)
        return run_trials(study, fn, trials)


def run_ray_search(
    objective: Objective,
    *,
    budgets: Iterable[str | Budget] | str = DEFAULT_BUDGETS,
    sampler: str = "nsga2",
    trials: int = 200,
    storage: str | None = None,
    study_name: str = "nasbert",
    address: str | None = None,
    num_cpus: int | None = None,
    workers: int = 2,
    threads: int = 1,
    max_failures: int = 2,
    seed: int = 0,
    out_dir: str | os.PathLike,
    top_k: int = 5,
    population_size: int = 50,
    show_progress: bool = True,
    enqueue: Sequence[Arch] = (),
    starting_k: int = 0,
    edge_margin: float = 0.0,
    heartbeat_s: int = HEARTBEAT_S,
) -> SearchResult:
    """Search with ``workers`` Ray actors (``threads`` CPUs each) sharing one Optuna study in ``storage`` (an RDB
    URL; None: SQLite in ``out_dir/study.db``), and write the same outputs as :func:`run_search`, whose other
    arguments these are.

    ``address``: None starts a local Ray instance (``num_cpus`` of them) that is shut down afterwards;
    ``"auto"`` or ``"ray://host:10001"`` joins a running cluster. An already initialised Ray is used as is.
    ``max_failures``: workers that may die (each is replaced, and its trial retried) before the search stops.
    """
    import ray

    budgets, teacher_ms, out = _check_search(objective, sampler, trials, top_k, budgets, out_dir)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1 or threads < 1 or max_failures < 0:
        raise ValueError(f"workers and threads must be at least 1 and max_failures at least 0, got {workers!r}, "
                         f"{threads!r}, {max_failures!r}")
    if storage is not None and (not isinstance(storage, str) or storage in ("memory", ":memory:")):
        raise SearchError("the Ray search's workers share one study through a database: give an RDB URL "
                          "(postgresql://USER@HOST/DB on a cluster), or no storage for SQLite in RUN/search/study.db "
                          "where every node shares the filesystem")
    out.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    storage_obj, shown = resolve_storage(url, None, heartbeat_s=heartbeat_s)
    plan = study_plan(sampler, budgets, study_name)
    studies = []
    for name, _, multi in plan:
        study = open_study(storage_obj, name, sampler=sampler, seed=seed, multi=multi,
                           population_size=population_size, shown=shown)
        enqueue_starting_points(study, objective, enqueue)
        studies.append(study)

    started = ray_init(address, num_cpus)
    try:
        actor = ray.remote(SearchWorker).options(num_cpus=threads, max_restarts=0)
        objective_ref = ray.put(objective)  # the weights reach each worker once, not per trial

        def new_worker():
            return actor.remote(objective_ref, url, heartbeat_s, threads)

        pool = [new_worker() for _ in range(workers)]
        failures = 0
        for (name, study_budgets, multi), study in zip(plan, studies):
            done = len(complete_trials(study))
            logger.info("ray search: study %r in %s, %d of %d trials done, %d workers", name, shown, done, trials,
                        workers)
            args = (name, study_budgets, multi, sampler)
            running = {pool[i].run.remote(*args, seed + 1 + i, population_size, trials): i for i in range(workers)}
            with tqdm(total=trials, initial=min(done, trials), desc=f"ray search {name}", unit="trial",
                      disable=not show_progress) as bar:
                while running:
                    ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                    now = min(len(complete_trials(study)), trials)
                    bar.update(now - bar.n)
                    for ref in ready:
                        i = running.pop(ref)
                        try:
                            ray.get(ref)
                        except ray.exceptions.RayActorError as e:
                            failures += 1
                            if failures > max_failures:
                                raise SearchError(f"ray search: {failures} workers died (max_failures "
                                                  f"{max_failures}); the last: {e}. Run the same command again to "
                                                  "go on with the study") from None
                            logger.warning("ray search: worker %d died (%s); starting another, and its trial will "
                                           "be retried", i, str(e).splitlines()[0] if str(e) else type(e).__name__)
                            pool[i] = new_worker()
                            running[pool[i].run.remote(*args, seed + 1 + i + workers * failures, population_size,
                                                       trials)] = i
                        except ray.exceptions.RayTaskError as e:
                            raise e.as_instanceof_cause() from None
        for worker in pool:
            ray.kill(worker)
    finally:
        if started:
            ray.shutdown()

    records = []
    for study in studies:
        records += study_records(study, objective)
    info = {"backend": "ray", "sampler": sampler, "seed": seed, "study_name": study_name, "storage": shown,
            "trials": trials, "workers": workers, "threads": threads}
    return summarize(records, budgets=budgets, teacher_latency_ms=teacher_ms, out_dir=out, top_k=top_k, info=info,
                     starting_k=starting_k, edge_margin=edge_margin)


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
    started = ray_init(address, num_cpus)
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
