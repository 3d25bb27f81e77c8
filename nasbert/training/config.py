"""Configuration of block-wise training and progressive shrinking."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ConfigError, check_types

__all__ = ["DistillConfig", "RayConfig", "ShrinkConfig", "TrainConfig"]

SAMPLING = ("uniform", "sandwich")
MODES = ("blockwise", "progressive")
SCHEDULES = ("linear", "cosine", "constant")


@dataclass(frozen=True)
class ShrinkConfig:
    """Progressive shrinking (NAS-BERT section 3.2.2). NAS-BERT's own values: bins 10, samples_per_bin 2000,
    keep_per_bin 10; the defaults here are scaled down for a CPU run."""

    enabled: bool = True
    #: paths of a block are binned by parameters (and again by latency / FLOPs) into this many bins
    bins: int = 10
    #: each round scores at most this many paths per bin
    samples_per_bin: int = 100
    #: shrinking stops once every bin holds at most this many paths
    keep_per_bin: int = 10
    #: training steps before the first round
    warmup_steps: int = 50
    #: training steps between rounds
    steps_between_rounds: int = 50
    #: upper bound on rounds (shrinking may stop earlier, once every bin is small enough)
    max_rounds: int = 3
    #: validation batches each path is scored on
    eval_batches: int = 1

    def __post_init__(self) -> None:
        for name in ("bins", "samples_per_bin", "keep_per_bin", "max_rounds", "eval_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"shrink.{name} must be at least 1, got {getattr(self, name)}")
        if self.samples_per_bin < 2:
            raise ConfigError("shrink.samples_per_bin must be at least 2 (each round drops the worse half)")
        for name in ("warmup_steps", "steps_between_rounds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"shrink.{name} must be >= 0, got {getattr(self, name)}")


#: TrainConfig keys that say how the work is spread, not what a step computes: a checkpoint resumes under other
#: values, and a run goes on with them
SPREAD_KEYS = ("workers", "threads")


@dataclass(frozen=True)
class TrainConfig:
    """Block-wise distillation. The defaults suit the built-in teacher on 2 CPU cores; see experiments/ for GPU."""

    steps: int = 200
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: tuple[float, ...] = (0.9, 0.98)
    warmup_steps: int = 20
    schedule: str = "linear"
    max_grad_norm: float = 1.0
    #: "uniform": one random path per block and step (NAS-BERT); "sandwich": largest + smallest + random paths.
    #: Uniform is the default: at equal wall time it gave a 38% lower mean validation loss over random paths
    #: (docs/benchmarks.md, "sandwich vs uniform").
    sampling: str = "uniform"
    #: random paths per block and step in sandwich mode (on top of the largest and the smallest)
    sandwich_random: int = 1
    mlm_probability: float = 0.15
    #: validation of a fixed set of paths every this many steps (0 = only at the end)
    eval_every: int = 100
    eval_batches: int = 4
    #: fixed paths per block the validation loss is reported on
    eval_paths: int = 8
    checkpoint_every: int = 50
    #: torch intra-op threads (0 = torch's default); with workers > 1, each worker's (0: 1)
    threads: int = 0
    device: str = "cpu"
    #: data-parallel replicas (Ray Train, ``nasbert train --ray-address ... train.workers=N``; gloo on CPU, NCCL on
    #: GPU): each step's batch is split into ``workers`` equal shares and the gradients averaged, so a step is the
    #: single-process step (run/ray_train.py). 1: in this process
    workers: int = 1
    #: "teacher": MHA / FFN ops start from the teacher (the point of nasbert); "random": the baseline
    init: str = "teacher"
    #: "blockwise": NAS-BERT's, every block at once on the teacher's states; "progressive": MobileBERT's
    #: progressive knowledge transfer, blocks one after another on the student's own frozen earlier blocks with
    #: feature MSE + attention KL, then the whole model (training/progressive.py). ``steps`` is the number of
    #: updates each block gets in both modes.
    mode: str = "blockwise"
    #: progressive mode: the share of each block's updates spent in the final whole-model stage
    progressive_final_fraction: float = 0.25
    #: progressive mode: weight of the attention-distribution KL next to the feature MSE (0 = MSE only)
    attention_kl_weight: float = 1.0
    #: block-wise mode: mask every training sequence once and keep the teacher's states at the block boundaries
    #: on disk (fp16, memory-mapped, shared by later epochs and runs on the same corpus and teacher;
    #: training/teacher_cache.py). Off: a new masking at every visit and a teacher forward at every step.
    teacher_cache: bool = False
    shrink: ShrinkConfig = field(default_factory=ShrinkConfig)

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLING:
            raise ConfigError(f"train.sampling must be one of {', '.join(SAMPLING)}, got {self.sampling!r}")
        if self.mode not in MODES:
            raise ConfigError(f"train.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 <= self.progressive_final_fraction < 1:
            raise ConfigError("train.progressive_final_fraction must be in [0, 1), got "
                              f"{self.progressive_final_fraction}")
        if self.attention_kl_weight < 0:
            raise ConfigError(f"train.attention_kl_weight must be >= 0, got {self.attention_kl_weight}")
        if self.mode == "progressive" and self.shrink.enabled:
            raise ConfigError("train.mode: progressive trains the blocks one after another, so there is no point at "
                              "which every block's paths can be compared: set train.shrink.enabled: false with it")
        if self.init not in ("teacher", "random"):
            raise ConfigError(f"train.init must be 'teacher' or 'random', got {self.init!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        for name in ("steps", "batch_size", "eval_batches", "eval_paths", "checkpoint_every", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "sandwich_random", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"train.lr must be in (0, 1), got {self.lr}")
        if not 0 < self.mlm_probability < 1:
            raise ConfigError(f"train.mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.workers > 1 and (self.mode != "blockwise" or self.batch_size % self.workers):
            raise ConfigError(f"train.workers = {self.workers} needs train.mode: blockwise and a train.batch_size that "
                              f"splits into {self.workers} equal shares (got {self.mode}, {self.batch_size})")
        if len(self.betas) != 2:
            raise ConfigError(f"train.betas must hold two numbers, got {list(self.betas)}")


@dataclass(frozen=True)
class RayConfig:
    """Block-parallel training on Ray (one actor per block)."""

    enabled: bool = False
    #: null starts a local Ray instance; "auto" joins a running cluster; or "ray://HOST:PORT"
    address: str | None = None
    #: CPUs of a local instance (null = all)
    num_cpus: int | None = None


@dataclass(frozen=True)
class DistillConfig:
    """Whole-model distillation of a chosen sub-network (NAS-BERT's pre-training KD of the searched models): the
    fixed architecture is trained end to end against the teacher's hidden states at the block boundaries. Used by
    ``export.distill`` (every exported member) and ``nasbert distill`` (one model)."""

    #: optimiser steps; 0 = no whole-model distillation
    steps: int = 0
    batch_size: int = 16
    lr: float = 1e-4
    #: linear warm-up, then linear decay to 0 at ``steps``
    warmup_steps: int = 10
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    mlm_probability: float = 0.15
    #: validation batches of the before / after whole-model loss
    eval_batches: int = 4
    #: torch intra-op threads (0 = torch's default)
    threads: int = 0

    def __post_init__(self) -> None:
        check_types(self, "distill")
        for name in ("batch_size", "eval_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"distill.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("steps", "warmup_steps", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"distill.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"distill.lr must be in (0, 1), got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"distill.weight_decay must be >= 0, got {self.weight_decay}")
        if not self.max_grad_norm > 0:
            raise ConfigError(f"distill.max_grad_norm must be positive, got {self.max_grad_norm}")
        if not 0 < self.mlm_probability < 1:
            raise ConfigError(f"distill.mlm_probability must be in (0, 1), got {self.mlm_probability}")
