"""Progressive shrinking of each block's candidate paths (NAS-BERT section 3.2.2).

Paths of a block are binned by cost: each path's rank by parameters and its rank by latency (the lookup
table's, when the run has a latency profile; FLOPs otherwise) are averaged, and the paths are cut into ``bins`` equal-count bins of that joint rank,
so that a bin holds paths of about the same size *and* speed. Each round samples up to ``samples_per_bin``
paths per bin, scores them on validation batches, and drops the worse half of the sampled ones, never leaving a
bin with fewer than ``keep_per_bin`` paths. Shrinking is over when every bin holds at most ``keep_per_bin``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..space import BlockArch, SearchSpace, op_flops, op_params
from .config import ShrinkConfig

__all__ = ["BlockCandidates", "block_cost", "shrink_round", "bin_of"]


def block_cost(space: SearchSpace, path: BlockArch, seq_len: int) -> tuple[int, int]:
    """(parameters, FLOPs) of a block's layers alone (no embeddings or adapters)."""
    params = sum(op_params(op, path.width, ffn_ratio=space.ffn_ratio, head_size=space.head_size) for op in path.layers)
    flops = sum(op_flops(op, path.width, seq_len, ffn_ratio=space.ffn_ratio, head_size=space.head_size) for op in path.layers)
    return params, flops


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    return ranks


def bin_of(params: np.ndarray, latency: np.ndarray, bins: int) -> np.ndarray:
    """Bin index (0 = cheapest) of each path, by its mean rank of parameters and latency."""
    n = len(params)
    joint = (_ranks(np.asarray(params, dtype=float)) + _ranks(np.asarray(latency, dtype=float))) / 2
    order = np.argsort(joint, kind="stable")
    out = np.empty(n, dtype=int)
    out[order] = np.minimum(np.arange(n) * bins // max(n, 1), bins - 1)
    return out


@dataclass
class BlockCandidates:
    """The surviving paths of one block, with their costs and the last validation loss each was given.

    ``latency_ms`` is each path's lookup-table latency when a latency profile exists; binning uses it, and the
    paths' FLOPs otherwise.
    """

    paths: list[BlockArch]
    params: list[int]
    flops: list[int]
    latency_ms: list[float] | None = None
    losses: dict[str, float] = field(default_factory=dict)

    @classmethod
    def full(cls, space: SearchSpace, block: int, seq_len: int,
             block_latency: Callable[[BlockArch], float] | None = None) -> BlockCandidates:
        paths = list(space.iter_block_paths(block))
        costs = [block_cost(space, p, seq_len) for p in paths]
        latency = [float(block_latency(p)) for p in paths] if block_latency is not None else None
        return cls(paths, [c[0] for c in costs], [c[1] for c in costs], latency)

    def bins(self, n_bins: int) -> np.ndarray:
        speed = self.latency_ms if self.latency_ms is not None else self.flops
        return bin_of(np.array(self.params), np.array(speed, dtype=float), n_bins)

    def done(self, config: ShrinkConfig) -> bool:
        counts = np.bincount(self.bins(config.bins), minlength=config.bins)
        return bool(counts.max() <= config.keep_per_bin)

    def subset(self, keep: Sequence[int]) -> BlockCandidates:
        names = [str(self.paths[i]) for i in keep]
        return BlockCandidates(
            [self.paths[i] for i in keep], [self.params[i] for i in keep], [self.flops[i] for i in keep],
            None if self.latency_ms is None else [self.latency_ms[i] for i in keep],
            {n: self.losses[n] for n in names if n in self.losses},
        )

    def records(self) -> list[dict]:
        """One mapping per path: ``path``, ``valid_loss``, ``params``, ``flops`` (and ``latency_ms``)."""
        out = []
        for i, path in enumerate(self.paths):
            record = {"path": str(path), "valid_loss": self.losses.get(str(path)), "params": int(self.params[i]),
                      "flops": int(self.flops[i])}
            if self.latency_ms is not None:
                record["latency_ms"] = float(self.latency_ms[i])
            out.append(record)
        return out

    def to_dict(self) -> dict:
        return {"paths": [str(p) for p in self.paths], "params": self.params, "flops": self.flops,
                "latency_ms": self.latency_ms, "losses": self.losses}

    @classmethod
    def from_dict(cls, data: dict) -> BlockCandidates:
        from ..space import Arch

        paths = [Arch.parse(p).blocks[0] for p in data["paths"]]
        return cls(paths, list(data["params"]), list(data["flops"]), data.get("latency_ms"), dict(data["losses"]))


def shrink_round(
    candidates: BlockCandidates,
    score: Callable[[Sequence[BlockArch]], Sequence[float]],
    config: ShrinkConfig,
    rng: np.random.Generator,
) -> tuple[BlockCandidates, dict]:
    """One round: sample, score, drop the worse half per bin. Returns the survivors and a report."""
    bins = candidates.bins(config.bins)
    sampled: list[int] = []
    for b in range(config.bins):
        members = np.flatnonzero(bins == b)
        if len(members) > config.keep_per_bin:
            k = min(config.samples_per_bin, len(members))
            sampled.extend(int(i) for i in rng.choice(members, size=k, replace=False))
    losses = list(score([candidates.paths[i] for i in sampled])) if sampled else []
    for i, loss in zip(sampled, losses):
        candidates.losses[str(candidates.paths[i])] = float(loss)
    loss_of = dict(zip(sampled, losses))

    dropped: set[int] = set()
    for b in range(config.bins):
        members = np.flatnonzero(bins == b)
        scored = sorted((i for i in members if i in loss_of), key=lambda i: (loss_of[i], i))
        n_drop = min(len(scored) // 2, len(members) - config.keep_per_bin)
        dropped.update(scored[len(scored) - n_drop:] if n_drop > 0 else [])

    keep = [i for i in range(len(candidates.paths)) if i not in dropped]
    survivors = candidates.subset(keep)
    report = {"before": len(candidates.paths), "scored": len(sampled), "dropped": len(dropped),
              "after": len(survivors.paths)}
    return survivors, report
