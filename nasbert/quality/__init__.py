"""Quality against the free baselines: layer-dropped teachers and uniform models at the same measured latency
(:mod:`.baselines`), and the fine-tuned report that compares them with the family and the teacher
(:mod:`.report`, ``nasbert report``)."""

from .baselines import Baseline, choose_baselines, kept_layers, layer_counts, layerdrop_baselines, uniform_baselines
from .report import ReportConfig, ReportError, build_report

__all__ = ["Baseline", "ReportConfig", "ReportError", "build_report", "choose_baselines", "kept_layers",
           "layer_counts", "layerdrop_baselines", "uniform_baselines"]
