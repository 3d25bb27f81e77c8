"""Data-parallel block-wise training on Ray Train: ``train.workers`` replicas, one batch split among them.

``nasbert train --ray-address auto train.workers=4`` runs a ``ray.train.torch.TorchTrainer`` (gloo on CPU, NCCL on
GPU). Each worker builds the same trainer from the run directory (:func:`nasbert.run.stages.train_inputs`) with a
:class:`~nasbert.training.blockwise.DataParallel` share: every replica draws the same batch, masking and paths, runs
the teacher and the blocks on its rows, and averages the gradients, so a step is the single-process step (at equal
global batch the loss curve is the same up to floating-point order). Replica 0 writes the metrics, the checkpoints
and, at the end, the trained supernet and the shrunk space, in the formats of in-process training.

A worker that dies stops the group; Ray Train starts it again (``max_failures`` times) and every replica resumes
from ``RUN/train/checkpoint``, as a rerun of the command would. The run directory must be on a filesystem every
node shares (as the SQLite search storage must).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..io import atomic_write_json
from ..utils import ray_init

__all__ = ["train_data_parallel"]

logger = logging.getLogger(__name__)

#: group restarts after a worker dies before the training stops (each resumes from the last checkpoint)
MAX_FAILURES = 3


def _train_loop(loop_config: dict[str, Any]) -> None:
    """One data-parallel worker (Ray Train calls it in each worker's process)."""
    import ray.train
    import torch

    from ..training.blockwise import DataParallel
    from .rundir import RunConfig, RunDir
    from .stages import finish_train, train_inputs

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    run = RunDir.load(loop_config["run"])
    config = RunConfig.from_dict(loop_config["config"], source="the driver's config")
    torch.set_num_threads(max(1, config.train.threads))
    first = rank == 0
    inputs = train_inputs(run, config, show_progress=loop_config["show_progress"] and first)
    trainer = inputs.trainer(run, config, show_progress=loop_config["show_progress"] and first,
                             data_parallel=DataParallel(rank, world))
    result = trainer.train()
    if first:
        finish_train(run, inputs, trainer)
        # Ray Train keeps a run's metrics only with a checkpoint; the summary goes to the driver through the run
        atomic_write_json(_summary_path(run), {**result, "binning": inputs.binning, "workers": world})


def _summary_path(run) -> Path:
    return Path(run.train_dir) / "ray" / "summary.json"


def train_data_parallel(run, config, *, address: str | None = None, num_cpus: int | None = None,
                        show_progress: bool = True, max_failures: int = MAX_FAILURES) -> dict[str, Any]:
    """Train ``run``'s supernet with ``config.train.workers`` Ray Train workers; returns replica 0's summary.

    ``address``: None starts a local Ray instance (``num_cpus``) that is shut down afterwards; ``"auto"`` or
    ``"ray://host:10001"`` joins a running cluster."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    workers, gpu = config.train.workers, config.train.device.startswith("cuda")
    threads = max(1, config.train.threads)
    _summary_path(run).unlink(missing_ok=True)  # an earlier attempt's
    started = ray_init(address, num_cpus)
    try:
        storage = Path(run.train_dir) / "ray"
        storage.mkdir(parents=True, exist_ok=True)
        logger.info("data-parallel training: %d Ray Train workers (%s, %d thread(s) each)", workers,
                    "NCCL" if gpu else "gloo", threads)
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={"run": str(Path(run.path).resolve()), "config": config.to_dict(),
                               "show_progress": show_progress},
            torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu,
                                         resources_per_worker={"CPU": threads}),
            run_config=RunConfig(name="train", storage_path=str(storage.resolve()),
                                 failure_config=FailureConfig(max_failures=max_failures)),
        )
        previous = os.environ.get("RAY_AIR_NEW_OUTPUT")
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        try:
            result = trainer.fit()
        finally:
            if previous is None:
                os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
            else:
                os.environ["RAY_AIR_NEW_OUTPUT"] = previous
    finally:
        if started:
            ray.shutdown()
    if result.error is not None:
        raise RuntimeError(f"data-parallel training failed: {result.error}") from result.error
    return json.loads(_summary_path(run).read_text(encoding="utf-8"))
