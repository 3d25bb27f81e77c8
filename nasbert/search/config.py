"""Configuration of the search stage."""

from __future__ import annotations

from dataclasses import dataclass

from ..budgets import DEFAULT_BUDGETS
from ..config import ConfigError

__all__ = ["SearchConfig"]


@dataclass(frozen=True)
class SearchConfig:
    """The search under budgets (``nasbert search``)."""

    #: latency in ms on the profiled device ("12ms"), speed-up over the teacher ("4x"), or parameters ("10M")
    budgets: tuple[str, ...] = DEFAULT_BUDGETS
    #: "nsga2" (multi-objective, default), "tpe" (one constrained study per budget) or "random"
    sampler: str = "nsga2"
    #: trials of a study, the enqueued starting points first (141 in the built-in teacher's elastic space), then
    #: the sampler's
    trials: int = 250
    #: an Optuna RDB URL; null = SQLite in RUN/search/study.db
    storage: str | None = None
    #: candidates per budget re-evaluated as whole models and timed before one is exported (the best by the
    #: search's proxy; in an elastic space each one that meets its budget is also probed, a fine-tune)
    top_k: int = 1
    #: elastic spaces: what ranks a calibrated candidate against the teacher's final states on unmasked
    #: validation sequences (nasbert.search.calibrated): "cosine" (1 - the mean per-token cosine) or "mse"
    proxy: str = "cosine"
    #: elastic spaces: rows of the training corpus every sub-layer is calibrated on, once, for every size (as
    #: export.calibrate_rows: at least 10 tokens per unknown of the widest least-squares system)
    calibrate_rows: int = 128
    #: elastic spaces: validation batches (of train.batch_size sequences) the proxy is computed on
    proxy_batches: int = 2
    #: elastic spaces: what chooses among a budget's candidates that meet it on measured latency: a short
    #: fine-tune on a small sentence-pair task (nasbert.search.probe): "builtin" (2,000 QNLI pairs shipped with
    #: nasbert), a task name fine-tuning reads (with probe_data_dir), or "none" (the cheap proxy chooses)
    probe: str = "builtin"
    probe_data_dir: str | None = None
    #: rows of the probe task trained on and scored (its first train rows, its first dev rows)
    probe_train: int = 2000
    probe_test: int = 1000
    #: probes run at once, each a process with one thread (on 2 cores, two of them ran 1.29x the steps of one
    #: probe on both cores); the scores do not depend on it
    probe_workers: int = 2
    #: elastic spaces: a budget's candidates are its top_k trials by the cheap proxy and, of the search's starting
    #: points (the teacher's bottom layers and their pruned versions, which the cheap proxy ranks low whether or
    #: not they fine-tune well) in its band of predicted latency, the best starting_k at each attention depth: the
    #: cheap proxy prefers the wider of two stacks of one latency and does not rank fine-tuned quality across
    #: them, so the probe chooses among depths (nasbert.search.optuna_search.select_per_budget); 0: none. Each
    #: depth is one probe (a fine-tune, 20-70 s on 2 cores): the export probes the starting point of each depth
    #: with the highest cosine among those it measures within the budget
    starting_k: int = 1
    #: Ray workers of a search on Ray (``nasbert search --ray-address``), each one thread
    workers: int = 2
    #: seconds between the heartbeats of a running trial in an RDB storage; a trial that misses 4 is taken for dead
    #: (its process was killed), failed and retried (nasbert.search.study)
    heartbeat_s: int = 10

    def __post_init__(self) -> None:
        if self.sampler not in ("nsga2", "tpe", "random"):
            raise ConfigError(f"search.sampler must be nsga2, tpe or random, got {self.sampler!r}")
        if self.trials < 1 or self.top_k < 1:
            raise ConfigError("search.trials and search.top_k must be at least 1")
        if self.proxy not in ("cosine", "mse"):
            raise ConfigError(f"search.proxy must be cosine or mse, got {self.proxy!r}")
        if self.probe_train < 1 or self.probe_test < 1 or self.probe_workers < 1 or self.starting_k < 0:
            raise ConfigError("search.probe_train, search.probe_test and search.probe_workers must be at least 1, "
                              "search.starting_k at least 0")
        if self.workers < 1 or self.heartbeat_s < 1:
            raise ConfigError("search.workers and search.heartbeat_s must be at least 1")
        if self.calibrate_rows < 1 or self.proxy_batches < 1:
            raise ConfigError("search.calibrate_rows and search.proxy_batches must be at least 1")
        if not self.budgets:
            raise ConfigError("search.budgets must name at least one budget, e.g. [2x, 3x, 4x]")
