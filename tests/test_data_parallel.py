"""Data-parallel block-wise training: two replicas joined by torch.distributed (gloo), each stepping on half the
batch, end where one process stepping on the whole batch ends (DataParallel, BlockLearner, BlockwiseTrainer)."""

from __future__ import annotations

import os

import pytest
from conftest import free_port
import torch
import torch.multiprocessing as mp

from nasbert.space import SearchSpace
from nasbert.supernet import SuperNet
from nasbert.training import TrainConfig
from nasbert.training.blockwise import BlockBatch, BlockLearner, DataParallel

STEPS = 3


def _setup(seed: int = 0):
    """A tiny supernet without dropout (so that a step is deterministic), block 1's paths and batches."""
    space = SearchSpace.load("tiny")
    torch.manual_seed(seed)
    supernet = SuperNet(space, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    generator = torch.Generator().manual_seed(seed)
    h = space.teacher.hidden_size
    batches = [BlockBatch(torch.randn(4, 6, h, generator=generator), torch.randn(4, 6, h, generator=generator),
                          torch.ones(4, 6, dtype=torch.long), torch.zeros(4, 6, dtype=torch.long))
               for _ in range(STEPS)]
    paths = [space.largest_arch().blocks[1], space.smallest_arch().blocks[1]]
    return supernet, batches, paths


def _shard(batch: BlockBatch, dp: DataParallel) -> BlockBatch:
    return BlockBatch(*(dp.shard(t) for t in (batch.inputs, batch.target, batch.attention_mask,
                                              batch.token_type_ids)))


def _replica(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        supernet, batches, paths = _setup()
        dp = DataParallel(rank, world)
        learner = BlockLearner(supernet, 1, TrainConfig(steps=STEPS, warmup_steps=0), data_parallel=dp)
        losses = [learner.step(_shard(b, dp), paths) for b in batches]
        torch.save({"losses": losses, "weights": {n: p.detach() for n, p in supernet.block_parameters(1)}},
                   f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_replicas_on_half_batches_step_as_one_process_on_the_whole(tmp_path):
    supernet, batches, paths = _setup()
    learner = BlockLearner(supernet, 1, TrainConfig(steps=STEPS, warmup_steps=0))
    losses = [learner.step(b, paths) for b in batches]
    weights = {n: p.detach() for n, p in supernet.block_parameters(1)}

    mp.start_processes(_replica, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    replicas = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for rep in replicas:
        assert rep["losses"] == pytest.approx(losses, rel=1e-5)
        for name, w in weights.items():
            torch.testing.assert_close(rep["weights"][name], w, rtol=1e-5, atol=1e-6)
    fresh, _, _ = _setup()  # the steps did change the weights: the comparison is not trivially true
    assert any(not torch.equal(w, dict(fresh.block_parameters(1))[n].detach()) for n, w in weights.items())


def test_a_batch_that_does_not_split_is_refused():
    from nasbert.config import ConfigError

    with pytest.raises(ConfigError, match="equal shares"):
        TrainConfig(batch_size=5, workers=2)
    with pytest.raises(ValueError, match="rank"):
        DataParallel(2, 2)
