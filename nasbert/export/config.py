"""Configuration of the search and export stages."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..budgets import DEFAULT_BUDGETS
from ..config import ConfigError
from ..latency.models import EDGE_MARGIN
from ..training.config import DistillConfig

__all__ = ["WEIGHTS", "ExportConfig", "SearchConfig"]

#: ``export.weights`` -> the weight versions each candidate of an elastic space competes in
WEIGHTS = {"teacher": ("teacher",), "supernet": ("supernet",), "both": ("teacher", "supernet")}


@dataclass(frozen=True)
class SearchConfig:
    """The search under budgets (``nasbert search``)."""

    #: latency in ms on the profiled device ("12ms"), speed-up over the teacher ("4x"), or parameters ("10M")
    budgets: tuple[str, ...] = DEFAULT_BUDGETS
    #: "nsga2" (multi-objective, default), "tpe" (one constrained study per budget) or "random"
    sampler: str = "nsga2"
    trials: int = 200
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
    #: elastic spaces: a budget's candidates are its top_k trials by the cheap proxy and its best starting_k among
    #: the search's starting points (the teacher's bottom layers and their pruned versions, which the cheap proxy
    #: ranks low whether or not they fine-tune well); 0: none
    starting_k: int = 2

    def __post_init__(self) -> None:
        if self.sampler not in ("nsga2", "tpe", "random"):
            raise ConfigError(f"search.sampler must be nsga2, tpe or random, got {self.sampler!r}")
        if self.trials < 1 or self.top_k < 1:
            raise ConfigError("search.trials and search.top_k must be at least 1")
        if self.proxy not in ("cosine", "mse"):
            raise ConfigError(f"search.proxy must be cosine or mse, got {self.proxy!r}")
        if self.probe_train < 1 or self.probe_test < 1 or self.starting_k < 0:
            raise ConfigError("search.probe_train and search.probe_test must be at least 1, search.starting_k at "
                              "least 0")
        if self.calibrate_rows < 1 or self.proxy_batches < 1:
            raise ConfigError("search.calibrate_rows and search.proxy_batches must be at least 1")
        if not self.budgets:
            raise ConfigError("search.budgets must name at least one budget, e.g. [2x, 3x, 4x]")


@dataclass(frozen=True)
class ExportConfig:
    """Export of the family (``nasbert export``)."""

    #: validation batches of the whole-model re-evaluation
    eval_batches: int = 4
    #: also write model.onnx (checked against PyTorch at atol 1e-4)
    onnx: bool = True
    #: a candidate timed within this relative distance of a budget's latency limit is timed again with the teacher,
    #: 5x longer, and that run decides whether it meets the budget (0 = never)
    edge_margin: float = EDGE_MARGIN
    #: judge a teacher cut timed faster than its work allows (the ratio of the teacher's FLOPs to the cut's,
    #: nasbert.export.cuts.work_speedup) at that ratio: a busy host inflates the speed-ups of small models (the
    #: bottom 3 of 6 layers timed at 2.39x, 1.94-1.99x idle). It holds where the teacher and the cut run the same
    #: kernels at sizes where compute dominates (ONNX Runtime on CPU: measured 0-4% under it); turn it off where
    #: per-call overheads dominate (small models, GPU launch-bound), as there the cut can beat it legitimately
    work_bound: bool = True
    #: the weights a candidate of an elastic teacher space competes with: "teacher" (the teacher's own sub-layers,
    #: calibrated; no adapters), "supernet" (the block-wise trained supernet's) or "both" (each on the proxy)
    weights: str = "teacher"
    #: a candidate made of the teacher's own sub-layers is calibrated bottom-up on this many rows of the training
    #: corpus before it is compared and exported (nasbert.export.calibrate): the heads and neurons whose output
    #: matters most on the text are kept and their output weights refitted by least squares. 0 keeps the units the
    #: weight magnitudes rank first, with the teacher's output weights (the magnitude-pruned model). 128 rows of 128
    #: tokens give every least-squares system at least 10 tokens per unknown (1,537 for the built-in teacher's FFN)
    calibrate_rows: int = 128
    #: also write model.int8.onnx (ONNX Runtime dynamic quantisation, within a relative-error bound) and time it
    int8: bool = True
    #: whole-model distillation of every chosen member before it is written (steps 0 = none)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        if isinstance(self.calibrate_rows, bool) or not isinstance(self.calibrate_rows, int) \
                or self.calibrate_rows < 0:
            raise ConfigError(f"export.calibrate_rows must be an integer >= 0 (0: no calibration), got "
                              f"{self.calibrate_rows!r}")
        if self.eval_batches < 1:
            raise ConfigError(f"export.eval_batches must be at least 1, got {self.eval_batches}")
        if not 0.0 <= self.edge_margin < 1.0:
            raise ConfigError(f"export.edge_margin must be in [0, 1), got {self.edge_margin}")
        if self.weights not in WEIGHTS:
            raise ConfigError(f"export.weights must be one of {sorted(WEIGHTS)}, got {self.weights!r}")
