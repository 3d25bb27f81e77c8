"""The training stage: block-wise distillation with progressive shrinking, checkpointed and resumable.

::

    RUN/train/
      checkpoint/      supernet.safetensors, optimizer.pt, state.json  (replaced atomically)
      metrics.jsonl    one line per logged step, evaluation and shrinking round
      candidates.json  surviving paths per block with their validation loss, parameters and FLOPs
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..data import BatchIterator, TokenizedCorpus, mask_tokens
from ..io import atomic_dir, atomic_write_json, fault_point, recover_dir, truncate_jsonl
from ..space import Arch, BlockArch
from ..supernet import SuperNet
from ..utils import torch_threads
from .blockwise import BlockBatch, BlockLearner, DataParallel, block_batches, sandwich_paths, score_paths
from .config import SPREAD_KEYS, TrainConfig
from .progressive import ProgressiveSchedule, stage_loss, teacher_targets, whole_model_loss
from .shrinking import BlockCandidates, shrink_round

__all__ = ["BlockwiseTrainer"]

logger = logging.getLogger(__name__)

STATE_VERSION = 1


class BlockwiseTrainer:
    """Trains ``supernet`` against ``teacher`` on ``corpus``; ``workdir`` holds checkpoints and metrics.

    >>> trainer = BlockwiseTrainer(supernet, teacher, corpus, TrainConfig(steps=100), tokenizer=tok,
    ...                            workdir="RUN/train", seed=0)  # doctest: +SKIP
    >>> result = trainer.train()  # resumes from RUN/train/checkpoint if there is one  # doctest: +SKIP
    """

    def __init__(
        self,
        supernet: SuperNet,
        teacher: torch.nn.Module,
        corpus: TokenizedCorpus,
        config: TrainConfig,
        *,
        tokenizer,
        workdir: str | Path,
        seed: int = 0,
        show_progress: bool = True,
        block_runner=None,
        block_latency=None,
        cache_root: str | Path | None = None,
        data_parallel: DataParallel | None = None,
    ):
        self.device = torch.device(config.device)
        self.supernet = supernet.to(self.device)
        self.teacher = teacher.to(self.device).eval()
        self.space = supernet.space
        self.corpus = corpus
        self.config = config
        self.seed = seed
        self.workdir = Path(workdir)
        self.show_progress = show_progress
        self.special_ids = sorted(set(tokenizer.all_special_ids))
        self.mask_token_id = tokenizer.mask_token_id
        self.vocab_size = self.space.teacher.vocab_size
        if corpus.train.shape[0] < config.batch_size:
            raise ValueError(
                f"the corpus has {corpus.train.shape[0]} training sequences, fewer than train.batch_size = "
                f"{config.batch_size}: use a bigger corpus or a smaller batch"
            )
        self.seq_len = corpus.train.shape[1]
        #: progressive mode: which block each step trains (None: block-wise, all at once)
        self.schedule = (ProgressiveSchedule(self.space.num_blocks, config.steps, config.progressive_final_fraction)
                         if config.mode == "progressive" else None)
        if self.schedule is not None and block_runner is not None:
            raise ValueError("train.mode: progressive trains one block after another in one process; "
                             "disable ray (ray.enabled: false) or use train.mode: blockwise")
        #: this process's share of a data-parallel run (Ray Train, run/ray_train.py); None: the whole batch.
        #: Every replica runs the same loop on the same weights; only replica 0 writes metrics and checkpoints.
        self.data_parallel = data_parallel
        if data_parallel is not None:
            if self.schedule is not None or block_runner is not None:
                raise ValueError("data-parallel training runs train.mode: blockwise in each worker's own process: "
                                 "use it without progressive mode and without block actors")
            if config.batch_size % data_parallel.world:
                raise ValueError(f"train.batch_size = {config.batch_size} does not split into {data_parallel.world} "
                                 "equal shares: make it a multiple of the number of workers")
        self.writes = data_parallel is None or data_parallel.rank == 0
        self.learners = [BlockLearner(self.supernet, n, config if self.schedule is None else
                                      dataclasses.replace(config, steps=self.schedule.updates_per_block),
                                      data_parallel=data_parallel)
                         for n in range(self.space.num_blocks)]
        self.batches = BatchIterator(corpus.train.shape[0], config.batch_size, seed=seed)
        self.mask_generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.step = 0
        self.rounds_done = 0
        #: ``block_latency(path) -> ms`` from a latency table bins the paths for shrinking (FLOPs if None)
        self.candidates = [BlockCandidates.full(self.space, n, self.seq_len, block_latency)
                           for n in range(self.space.num_blocks)]
        self.valid_batches = self._validation_batches()
        eval_rng = np.random.default_rng(seed + 1)
        self.eval_paths = [self._eval_paths(n, eval_rng) for n in range(self.space.num_blocks)]
        #: runs the blocks' steps elsewhere (``RayBlockRunner``); None runs them in this process
        self.block_runner = block_runner
        #: the teacher's states of the masked training sequences, kept on disk (``train.teacher_cache``)
        self.teacher_cache = None
        if config.teacher_cache and self.schedule is None:
            from ..utils import cache_dir
            from .teacher_cache import TeacherStateCache

            root = Path(cache_root) if cache_root is not None else cache_dir() / "teacher-states"
            if data_parallel is not None:  # each replica fills its own rows; one cache per replica, no shared writes
                root = root / f"replica{data_parallel.rank}-of-{data_parallel.world}"
            self.teacher_cache = TeacherStateCache(
                root, self.teacher, self.space,
                corpus.train, mlm_probability=config.mlm_probability, seed=seed, mask_token_id=self.mask_token_id,
                special_ids=self.special_ids, vocab_size=self.vocab_size, device=self.device)

    def _sync(self) -> None:
        """Bring the blocks' weights and optimiser states back from the runner, if blocks train elsewhere."""
        if self.block_runner is not None:
            self.block_runner.pull(self.supernet, self.learners)

    # ---------------------------------------------------------------- data

    def _validation_batches(self) -> list[list[BlockBatch]]:
        """Teacher states of the fixed validation batches (masked with a fixed seed), per batch and block."""
        n_batches = max(self.config.eval_batches, self.config.shrink.eval_batches)
        rows = self.corpus.valid
        generator = torch.Generator().manual_seed(self.seed + 12345)
        out = []
        for start in range(0, min(len(rows), n_batches * self.config.batch_size), self.config.batch_size):
            ids = rows[start : start + self.config.batch_size]
            out.append(self._teacher_batch(ids, generator))
        return out

    def _corrupt(self, ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """MLM-masked copy of ``ids`` on the training device."""
        corrupted, _ = mask_tokens(ids, vocab_size=self.vocab_size, mask_token_id=self.mask_token_id,
                                   special_ids=self.special_ids, generator=generator,
                                   mlm_probability=self.config.mlm_probability)
        return corrupted.to(self.device)

    def _teacher_batch(self, ids: torch.Tensor, generator: torch.Generator, *, shard: bool = False
                       ) -> list[BlockBatch]:
        """Block batches of ``ids``; ``shard``: of this replica's rows only (the masking is drawn for the whole
        batch, so that every replica's generator stays in step). Validation batches are never sharded: every
        replica scores and shrinks on the same rows and so keeps the same paths."""
        corrupted = self._corrupt(ids, generator)
        if shard and self.data_parallel is not None:
            corrupted = self.data_parallel.shard(corrupted)
        mask = torch.ones_like(corrupted)
        return block_batches(self.teacher, self.space, corrupted, mask)

    def _eval_paths(self, block: int, rng: np.random.Generator) -> list[BlockArch]:
        largest, smallest = sandwich_paths(self.space, self.candidates[block].paths)
        paths = [largest, smallest]
        while len(paths) < max(self.config.eval_paths, 2):
            p = self.space.sample_block(block, rng)
            if p not in paths:
                paths.append(p)
        return paths[: max(self.config.eval_paths, 2)]

    # ---------------------------------------------------------------- one step

    def _paths_for_step(self, block: int) -> list[BlockArch]:
        survivors = self.candidates[block].paths
        random_paths = [survivors[int(i)] for i in self.rng.integers(0, len(survivors), size=self._n_random())]
        if self.config.sampling == "uniform":
            return random_paths
        largest, smallest = sandwich_paths(self.space, survivors)
        return [largest, smallest, *random_paths]

    def _n_random(self) -> int:
        return 1 if self.config.sampling == "uniform" else self.config.sandwich_random

    @property
    def total_steps(self) -> int:
        """Steps of the training loop: ``config.steps`` block-wise; every stage and the final one progressively."""
        return self.config.steps if self.schedule is None else self.schedule.total_steps

    def train_step(self) -> list[float]:
        """One optimiser step over every block. Returns the mean loss of each block's paths (NaN for blocks a
        progressive stage does not train)."""
        if self.schedule is not None:
            return self._progressive_step()
        indices = self.batches.next_indices()
        if self.teacher_cache is not None:
            per_block = self.teacher_cache.batches(indices if self.data_parallel is None
                                                   else self.data_parallel.shard(indices))
        else:
            per_block = self._teacher_batch(self.corpus.train[indices], self.mask_generator, shard=True)
        paths = [self._paths_for_step(n) for n in range(self.space.num_blocks)]
        if self.block_runner is not None:
            losses = self.block_runner.step(per_block, paths)
        else:
            losses = [learner.step(batch, p) for learner, batch, p in zip(self.learners, per_block, paths)]
        self.step += 1
        return losses

    def _progressive_step(self) -> list[float]:
        corrupted = self._corrupt(self.corpus.train[self.batches.next_indices()], self.mask_generator)
        targets = teacher_targets(self.teacher, self.space, corrupted, torch.ones_like(corrupted))
        paths = [self._paths_for_step(n)[0] for n in range(self.space.num_blocks)]
        block = self.schedule.stage(self.step)
        trained = range(self.space.num_blocks) if block is None else [block]
        self.supernet.train()
        for n in trained:
            self.learners[n].optimizer.zero_grad(set_to_none=True)
        weight = self.config.attention_kl_weight
        if block is None:
            loss, mse, _ = whole_model_loss(self.supernet, Arch(tuple(paths)), corrupted, targets,
                                            attention_weight=weight)
        else:
            loss, mse, _ = stage_loss(self.supernet, block, paths, corrupted, targets, attention_weight=weight)
        loss.backward()
        for n in trained:
            learner = self.learners[n]
            torch.nn.utils.clip_grad_norm_(learner.parameters, self.config.max_grad_norm)
            learner.optimizer.step()
            learner.scheduler.step()
        self.step += 1
        return [mse if n in trained else math.nan for n in range(self.space.num_blocks)]

    # ---------------------------------------------------------------- evaluation and shrinking

    def evaluate(self) -> dict[str, Any]:
        self._sync()
        batches = self.valid_batches[: self.config.eval_batches]
        result: dict[str, Any] = {"step": self.step, "event": "eval", "blocks": []}
        for n in range(self.space.num_blocks):
            losses = score_paths(self.supernet, n, self.eval_paths[n], [b[n] for b in batches])
            result["blocks"].append({"mean": float(np.mean(losses)), "largest": losses[0], "smallest": losses[1]})
        result["mean"] = float(np.mean([b["mean"] for b in result["blocks"]]))
        return result

    def _shrink_due(self) -> bool:
        s = self.config.shrink
        if not s.enabled or self.rounds_done >= s.max_rounds or self.step < s.warmup_steps:
            return False
        if all(c.done(s) for c in self.candidates):
            return False
        return (self.step - s.warmup_steps) % max(1, s.steps_between_rounds) == 0

    def shrink(self) -> dict[str, Any]:
        s = self.config.shrink
        self._sync()
        batches = self.valid_batches[: s.eval_batches]
        report: dict[str, Any] = {"step": self.step, "event": "shrink", "round": self.rounds_done + 1, "blocks": []}
        for n in range(self.space.num_blocks):
            if self.candidates[n].done(s):
                report["blocks"].append({"before": len(self.candidates[n].paths), "scored": 0, "dropped": 0,
                                         "after": len(self.candidates[n].paths)})
                continue
            score = lambda paths, n=n: score_paths(self.supernet, n, paths, [b[n] for b in batches])  # noqa: E731
            self.candidates[n], block_report = shrink_round(self.candidates[n], score, s, self.rng)
            report["blocks"].append(block_report)
        self.rounds_done += 1
        return report

    def final_scores(self) -> None:
        """Score every surviving path with the final weights: these losses are the search's proxy."""
        batches = self.valid_batches[: self.config.shrink.eval_batches]
        for n, cand in enumerate(self.candidates):
            losses = score_paths(self.supernet, n, cand.paths, [b[n] for b in batches])
            cand.losses = {str(p): float(loss) for p, loss in zip(cand.paths, losses)}

    # ---------------------------------------------------------------- checkpoints

    @property
    def checkpoint_dir(self) -> Path:
        return self.workdir / "checkpoint"

    def save_checkpoint(self) -> None:
        self._sync()
        if not self.writes:
            return
        with atomic_dir(self.checkpoint_dir) as tmp:
            state = {k: v.detach().contiguous().cpu() for k, v in self.supernet.state_dict().items()}
            save_file(state, tmp / "supernet.safetensors")
            torch.save({"learners": [learner.state_dict() for learner in self.learners],
                        "mask_generator": self.mask_generator.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        # dropout on a GPU draws from the device's own generator
                        "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda"
                        else torch.empty(0, dtype=torch.uint8)}, tmp / "optimizer.pt")
            meta = {
                "version": STATE_VERSION,
                "step": self.step,
                "rounds_done": self.rounds_done,
                "rng": self.rng.bit_generator.state,
                "batches": self.batches.state_dict(),
                "candidates": [c.to_dict() for c in self.candidates],
                "config": _jsonable(self.config),
            }
            fault_point("train.checkpoint")  # inside the write: the weights are there, state.json is not
            (tmp / "state.json").write_text(json.dumps(meta), encoding="utf-8")

    def load_checkpoint(self) -> bool:
        """Resume from ``workdir/checkpoint`` if present. Returns whether a checkpoint was loaded."""
        path = self.checkpoint_dir
        recover_dir(path)  # a kill inside a checkpoint swap leaves the old or the new version beside it
        if not (path / "state.json").is_file():
            if self.writes:
                truncate_jsonl(self.metrics_path, -1)  # every line of an attempt killed before its first checkpoint
            return False
        meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
        if meta.get("version") != STATE_VERSION:
            raise RuntimeError(f"checkpoint {path} has format {meta.get('version')}, expected {STATE_VERSION}")
        if _resumable(meta["config"]) != _resumable(_jsonable(self.config)):
            raise RuntimeError(
                f"checkpoint {path} was written with another training config; rerun with the same config, "
                "or with --force to start training again"
            )
        self.supernet.load_state_dict(load_file(path / "supernet.safetensors", device=str(self.device)))
        # On the CPU: generator states must stay there, and the optimisers move their state to their parameters.
        extra = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        for learner, state in zip(self.learners, extra["learners"]):
            learner.load_state_dict(state)
        self.mask_generator.set_state(extra["mask_generator"])
        torch.set_rng_state(extra["torch_rng"])
        if self.device.type == "cuda" and extra.get("cuda_rng") is not None and extra["cuda_rng"].numel():
            torch.cuda.set_rng_state(extra["cuda_rng"], self.device)
        self.step, self.rounds_done = meta["step"], meta["rounds_done"]
        self.rng.bit_generator.state = meta["rng"]
        self.batches.load_state_dict(meta["batches"])
        self.candidates = [BlockCandidates.from_dict(c) for c in meta["candidates"]]
        if self.writes:
            truncate_jsonl(self.metrics_path, self.step)
        logger.info("resumed from %s at step %d", path, self.step)
        return True

    # ---------------------------------------------------------------- the loop

    @property
    def metrics_path(self) -> Path:
        return self.workdir / "metrics.jsonl"

    def _log(self, record: dict[str, Any]) -> None:
        if not self.writes:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def train(self, *, stop_after: int | None = None) -> dict[str, Any] | None:
        """Run (or resume) training to ``config.steps``; returns a summary.

        ``stop_after``: checkpoint and return None after this step, as an interrupted run would (the next call
        resumes from there).
        """
        with torch_threads(self.config.threads):  # process-wide: the caller's count comes back afterwards
            return self._train(stop_after)

    def _train(self, stop_after: int | None) -> dict[str, Any] | None:
        start = time.perf_counter()
        self.workdir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(self.seed)  # dropout draws from the global generator; a resume restores its state
        resumed_at = self.step if self.load_checkpoint() else None
        if resumed_at is not None and self.block_runner is not None:
            self.block_runner.push(self.supernet, self.learners)
        tokens_per_step = self.config.batch_size * self.seq_len
        running = None
        total = self.total_steps
        bar = tqdm(total=total, initial=self.step, desc="train" if self.schedule is None else "train (progressive)",
                   unit="step", disable=not (self.show_progress and self.writes), dynamic_ncols=True)
        while self.step < total:
            t0 = time.perf_counter()
            stage = None if self.schedule is None else self.schedule.stage(self.step)
            losses = self.train_step()
            running = losses if running is None else [
                x if math.isnan(r) else r if math.isnan(x) else 0.9 * r + 0.1 * x for r, x in zip(running, losses)]
            record = {"step": self.step, "event": "train", "losses": [None if math.isnan(x) else x for x in losses],
                      "lr": self.learners[stage or 0].lr,
                      "tokens_per_s": tokens_per_step / (time.perf_counter() - t0)}
            if self.schedule is not None:
                record["stage"] = "whole" if stage is None else stage
            self._log(record)
            fault_point("train.step")
            bar.update(1)
            bar.set_postfix({f"b{n}": f"{r:.4f}" for n, r in enumerate(running) if not math.isnan(r)})
            if self.config.eval_every and self.step % self.config.eval_every == 0 and self.step < total:
                self._log(self.evaluate())
            if self._shrink_due():
                t0 = time.perf_counter()
                report = self.shrink()
                report["seconds"] = round(time.perf_counter() - t0, 2)
                self._log(report)
                logger.info("shrinking round %d: %s", report["round"],
                            ", ".join(f"block {n}: {b['before']} -> {b['after']}" for n, b in enumerate(report["blocks"])))
            if self.step % self.config.checkpoint_every == 0 or self.step in (total, stop_after):
                self.save_checkpoint()
            if self.step == stop_after:
                bar.close()
                return None
        bar.close()
        final = self.evaluate()
        self._log(final)
        t0 = time.perf_counter()
        self.final_scores()
        self._log({"step": self.step, "event": "final_scores", "paths": [len(c.paths) for c in self.candidates],
                   "seconds": round(time.perf_counter() - t0, 2)})
        if self.writes:
            self.write_candidates()
        return {
            "steps": self.step, "resumed_at": resumed_at, "shrinking_rounds": self.rounds_done,
            "valid_loss": final["mean"], "valid_loss_per_block": [b["mean"] for b in final["blocks"]],
            "surviving_paths": [len(c.paths) for c in self.candidates],
            "seconds": round(time.perf_counter() - start, 1),
            "teacher_cache": None if self.teacher_cache is None else {
                "path": str(self.teacher_cache.path), "hits": self.teacher_cache.hits,
                "misses": self.teacher_cache.misses},
        }

    def write_candidates(self) -> Path:
        """``candidates.json``: per block, every surviving path with its validation loss, parameters and FLOPs
        (and lookup-table latency when binning used one)."""
        path = self.workdir / "candidates.json"
        atomic_write_json(path, {"seq_len": self.seq_len, "blocks": [c.records() for c in self.candidates]})
        return path


def _resumable(config: dict) -> dict:
    """What a checkpoint must share with the config that resumes it: all but how the work is spread (the number
    of data-parallel workers and threads do not change a step)."""
    return {k: v for k, v in config.items() if k not in SPREAD_KEYS}


def _jsonable(config: TrainConfig) -> dict:
    from ..config import to_mapping

    return json.loads(json.dumps(to_mapping(config)))
