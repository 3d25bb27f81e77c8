"""Block-parallel training on Ray: one actor per block. The only training module that imports Ray.

The driver keeps the teacher and does one teacher forward per batch; actor n receives block n's input and
target, runs the same :class:`BlockLearner` step as in-process training on its own copy of the supernet, and
keeps its block's optimiser state. The driver pulls the blocks' weights back before evaluating, shrinking and
checkpointing, so a checkpoint is the same whether or not Ray trained it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ..space import Arch, BlockArch
from ..supernet import SuperNet
from .blockwise import BlockBatch, BlockLearner
from ..utils import ray_init
from .config import TrainConfig

__all__ = ["RayBlockRunner"]

logger = logging.getLogger(__name__)


class _BlockWorker:
    """Runs inside a Ray actor: one block's learner over a private copy of the supernet."""

    def __init__(self, supernet_state: dict, space_dict: dict, hparams: dict, block: int, config: TrainConfig,
                 threads: int, seed: int):
        from ..space import SearchSpace

        torch.set_num_threads(max(1, threads))  # this actor's own process
        torch.manual_seed(seed + 1000 * (block + 1))  # dropout stream of this block
        self.device = torch.device(config.device)
        self.supernet = SuperNet(SearchSpace.from_dict(space_dict), **hparams)
        self.supernet.load_state_dict(supernet_state)
        self.supernet.to(self.device)
        self.learner = BlockLearner(self.supernet, block, config)  # its optimiser holds the parameters on device
        self.block = block

    def step(self, batch: BlockBatch, paths: Sequence[str]) -> float:
        return self.learner.step(_on(batch, self.device), [Arch.parse(p).blocks[0] for p in paths])

    def pull(self) -> tuple[dict, dict]:
        weights = {name: p.detach().cpu() for name, p in self.supernet.block_parameters(self.block)}
        return weights, _state_on_cpu(self.learner.state_dict())

    def push(self, weights: dict, learner_state: dict | None) -> None:
        with torch.no_grad():
            params = dict(self.supernet.block_parameters(self.block))
            for name, value in weights.items():
                params[name].copy_(value)
        if learner_state is not None:
            self.learner.load_state_dict(learner_state)


class RayBlockRunner:
    """Trains the blocks of ``supernet`` as parallel Ray actors.

    ``address``: None starts a local Ray instance (``num_cpus`` of them), ``"auto"`` joins a running cluster,
    or a cluster address such as ``ray://head:10001``.
    """

    def __init__(self, supernet: SuperNet, config: TrainConfig, *, address: str | None = None,
                 num_cpus: int | None = None, seed: int = 0):
        import ray

        self._ray = ray
        self._owns_ray = ray_init(address, num_cpus)
        n_blocks = supernet.space.num_blocks
        cpus = ray.available_resources().get("CPU", 1.0)
        per_actor = max(0.01, min(1.0, cpus / n_blocks))
        gpus = 0.0
        if torch.device(config.device).type == "cuda":  # each actor trains its block on a GPU of the cluster
            available = ray.available_resources().get("GPU", 0.0)
            if available <= 0:
                raise RuntimeError(f"train.device is {config.device!r} but the Ray cluster has no GPU: set "
                                   "train.device: cpu, or join a cluster with GPUs (--ray-address)")
            gpus = min(1.0, available / n_blocks)
        worker = ray.remote(num_cpus=per_actor, num_gpus=gpus)(_BlockWorker)
        state = {k: v.detach().cpu() for k, v in supernet.state_dict().items()}
        state_ref = ray.put(state)
        self.actors = [
            worker.remote(state_ref, supernet.space.to_dict(), supernet.hparams, n, config,
                          max(1, int(per_actor)), seed)
            for n in range(n_blocks)
        ]
        logger.info("Ray: %d block actors, %.2f CPU each", n_blocks, per_actor)

    def step(self, per_block: Sequence[BlockBatch], paths: Sequence[Sequence[BlockArch]]) -> list[float]:
        futures = [actor.step.remote(_cpu(batch), [str(p) for p in block_paths])
                   for actor, batch, block_paths in zip(self.actors, per_block, paths)]
        return [float(x) for x in self._ray.get(futures)]

    def pull(self, supernet: SuperNet, learners: Sequence[BlockLearner]) -> None:
        """Copy every block's weights and optimiser state from its actor into ``supernet`` and ``learners``."""
        results = self._ray.get([actor.pull.remote() for actor in self.actors])
        with torch.no_grad():
            for n, (weights, learner_state) in enumerate(results):
                params = dict(supernet.block_parameters(n))
                for name, value in weights.items():
                    params[name].copy_(value)
                learners[n].load_state_dict(learner_state)

    def push(self, supernet: SuperNet, learners: Sequence[BlockLearner]) -> None:
        """Send the driver's weights and optimiser states to the actors (after resuming from a checkpoint)."""
        futures = []
        for n, actor in enumerate(self.actors):
            weights = {name: p.detach().cpu() for name, p in supernet.block_parameters(n)}
            futures.append(actor.push.remote(weights, learners[n].state_dict()))
        self._ray.get(futures)

    def shutdown(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
        if self._owns_ray:
            self._ray.shutdown()


def _on(batch: BlockBatch, device: torch.device | str) -> BlockBatch:
    return BlockBatch(batch.inputs.to(device), batch.target.to(device), batch.attention_mask.to(device),
                      batch.token_type_ids.to(device))


def _cpu(batch: BlockBatch) -> BlockBatch:
    return _on(batch, "cpu")


def _state_on_cpu(state):
    """An optimiser / scheduler state with every tensor on the CPU, to travel between processes."""
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {k: _state_on_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_state_on_cpu(v) for v in state)
    return state
