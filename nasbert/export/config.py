"""Configuration of the search and export stages."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ConfigError
from ..latency.models import EDGE_MARGIN
from ..training.config import DistillConfig

__all__ = ["CUT_WEIGHTS", "ExportConfig", "SearchConfig"]

#: ``export.cut_weights`` -> the weight versions each teacher cut competes in
CUT_WEIGHTS = {"teacher": ("teacher",), "both": ("teacher", "supernet")}


@dataclass(frozen=True)
class SearchConfig:
    """The search under budgets (``nasbert search``)."""

    #: latency in ms on the profiled device ("12ms"), speed-up over the teacher ("4x"), or parameters ("10M")
    budgets: tuple[str, ...] = ("2x", "3x", "4x")
    #: "nsga2" (multi-objective, default), "tpe" (one constrained study per budget) or "random"
    sampler: str = "nsga2"
    trials: int = 300
    #: an Optuna RDB URL; null = SQLite in RUN/search/study.db
    storage: str | None = None
    #: candidates per budget re-evaluated as whole models and timed before one is exported
    top_k: int = 3

    def __post_init__(self) -> None:
        if self.sampler not in ("nsga2", "tpe", "random"):
            raise ConfigError(f"search.sampler must be nsga2, tpe or random, got {self.sampler!r}")
        if self.trials < 1 or self.top_k < 1:
            raise ConfigError("search.trials and search.top_k must be at least 1")
        if not self.budgets:
            raise ConfigError("search.budgets must name at least one budget, e.g. [2x, 3x, 4x]")


@dataclass(frozen=True)
class ExportConfig:
    """Export of the family (``nasbert export``)."""

    #: validation batches of the whole-model re-evaluation
    eval_batches: int = 4
    #: also write model.onnx (checked against PyTorch at atol 1e-4)
    onnx: bool = True
    #: add the teacher's own bottom sub-layers ("teacher cuts", nasbert.export.cuts) to every budget's
    #: candidates, where the space can express them
    teacher_cuts: bool = True
    #: gaps a teacher cut may have below its top sub-layer: 0 (the bottom sub-layers only, the default: a cut
    #: that skips one, e.g. layer 2's FFN without its attention, fine-tuned 2.8 points below the gap-free cut of
    #: the same size on SST-2, docs/benchmarks.md) or 1
    teacher_cut_gaps: int = 0
    #: teacher cuts that end on an FFN also come with that FFN pruned to 1/4, 1/2 and 3/4 of its most important
    #: neurons, so that a cut can fill a budget that falls between two sub-layers. On the built-in teacher the 3x
    #: member this gives (the bottom 2 layers with 3/4 of layer 1's FFN, the teacher's weights, 3.15x) scored 53.6
    #: on the panel against 49.9 for the unpruned cut; at 2x the pruned and unpruned members tie (docs/benchmarks.md)
    teacher_cut_ffn: bool = True
    #: teacher cuts with an FFN also come with every FFN pruned to 3/4, half and (up to 3 layers) 3/8 and 1/8 of its
    #: most important neurons (SearchSpace.every_ffn_inners), which buys attention sub-layers with FFN neurons: on the
    #: built-in teacher the bottom 4 attentions with 3/4 of the 3 FFNs between them and the bottom 3 layers with every
    #: FFN at 3/8 and at 1/8 are the 2x, 3x and 4x members (2.02x, 3.16x and 4.13x; docs/benchmarks.md)
    teacher_cut_ffn_every: bool = True
    #: a candidate timed within this relative distance of a budget's latency limit is timed again with the teacher,
    #: 5x longer, and that run decides whether it meets the budget (0 = never)
    edge_margin: float = EDGE_MARGIN
    #: judge a teacher cut timed faster than its work allows (the ratio of the teacher's FLOPs to the cut's,
    #: nasbert.export.cuts.work_speedup) at that ratio: a busy host inflates the speed-ups of small models (the
    #: bottom 3 of 6 layers timed at 2.39x, 1.94-1.99x idle). It holds where the teacher and the cut run the same
    #: kernels at sizes where compute dominates (ONNX Runtime on CPU: measured 0-4% under it); turn it off where
    #: per-call overheads dominate (small models, GPU launch-bound), as there the cut can beat it legitimately
    work_bound: bool = True
    #: where a teacher cut meets a budget, the largest such cut is the member (with ``cut_weights: both``, its two
    #: weight versions compete on the cosine) and the search's candidates compete only at budgets no cut meets.
    #: False lets them compete with the cut on the cosine, which does not rank fine-tuned quality across
    #: architectures: a searched model whose cosine beat the 4x cut's fine-tuned 3.3 points below it on SST-2
    #: (docs/benchmarks.md)
    cuts_first: bool = True
    #: the weights a teacher cut competes with: "teacher" (the teacher's own sub-layers, no adapters) or "both"
    #: (also the trained supernet's, on the cosine). The trained versions fine-tuned no better and lost CoLA at 3x
    #: (docs/benchmarks.md); the teacher's are also the faster
    cut_weights: str = "teacher"
    #: a teacher-cut member's pruned FFNs are calibrated on this many rows of the training corpus
    #: (nasbert.export.calibrate): the neurons whose output matters most on the text are kept and their output
    #: weights refitted by least squares to reproduce the whole FFN. 0 keeps the neurons the weight magnitudes rank
    #: first, with the teacher's output weights
    calibrate_rows: int = 512
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
        if self.cut_weights not in CUT_WEIGHTS:
            raise ConfigError(f"export.cut_weights must be one of {sorted(CUT_WEIGHTS)}, got {self.cut_weights!r}")
        if self.teacher_cut_gaps not in (0, 1):
            raise ConfigError(f"export.teacher_cut_gaps must be 0 or 1, got {self.teacher_cut_gaps}")
