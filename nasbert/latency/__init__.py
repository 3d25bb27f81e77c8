"""Latency on a real device: measurement harness, lookup table, learned predictor and its measured accuracy."""

from .measure import OnnxRuntimeEngine, Timing, TorchEngine, device_info, measure_interleaved, summarize
from .predictor import LatencyPredictor, accuracy, features, kendall_tau
from .profile import LatencyConfig, LatencyProfile, profile_device
from .table import LatencyTable, arch_entries, build_table

__all__ = ["LatencyConfig", "LatencyPredictor", "LatencyProfile", "LatencyTable", "OnnxRuntimeEngine", "Timing",
           "TorchEngine", "accuracy", "arch_entries", "build_table", "device_info", "features", "kendall_tau",
           "measure_interleaved", "profile_device", "summarize"]
