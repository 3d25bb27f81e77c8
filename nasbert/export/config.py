"""Configuration of the export stage."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ConfigError
from ..latency.models import EDGE_MARGIN
from ..training.config import DistillConfig

__all__ = ["WEIGHTS", "ExportConfig"]

#: ``export.weights`` -> the weight versions each candidate of an elastic space competes in
WEIGHTS = {"teacher": ("teacher",), "supernet": ("supernet",), "both": ("teacher", "supernet")}


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
