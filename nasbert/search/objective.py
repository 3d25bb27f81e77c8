"""The search objective: a pure function of an architecture.

NAS-BERT (Xu et al. 2021, section 3.3) ranks the architectures of the shrunk space by the *sum of their block
losses*: each block was trained to reproduce its teacher block, and the loss each surviving path reached on
validation batches was recorded by progressive shrinking. The latency is predicted on the profiled device and
parameters and FLOPs are counted exactly, so evaluating an architecture needs no model and no device.

>>> objective = Objective.from_run("RUN")  # doctest: +SKIP
>>> objective(arch)  # doctest: +SKIP
Evaluation(proxy_loss=1.93, latency_ms=4.1, params=11324160, flops=1450000000)

Samplers see an architecture as one categorical per block, the index of its path in that block's candidates:
``objective.arch_from_params({"block0": 3, "block1": 0})`` and back with ``objective.params_from_arch``.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from ..latency.predictor import LatencyPredictor
from ..latency.profile import LatencyProfile
from ..space import Arch, BlockArch, SearchSpace, SpaceError

__all__ = ["Evaluation", "Objective", "load_block_losses"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    """What the search knows about one architecture."""

    proxy_loss: float
    latency_ms: float
    params: int
    flops: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Evaluation:
        return cls(float(data["proxy_loss"]), float(data["latency_ms"]), int(data["params"]), int(data["flops"]))


def load_block_losses(space_yaml: str | os.PathLike) -> list[dict[str, float]]:
    """The validation loss of every surviving path, one ``{str(path): loss}`` per block, from ``RUN/space.yaml``.

    Paths listed without a ``valid_loss`` (plain strings, or a null loss) are left out.
    """
    path = Path(space_yaml)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    candidates = data.get("candidates") if isinstance(data, Mapping) else None
    if not isinstance(candidates, list):
        raise SpaceError(f"{path}: no 'candidates': the search needs the surviving paths of a trained run "
                         "(run `nasbert train --out RUN` first)")
    losses = []
    for n, entries in enumerate(candidates):
        block: dict[str, float] = {}
        for entry in entries or []:
            if isinstance(entry, Mapping) and entry.get("valid_loss") is not None:
                key = str(Arch.parse(str(entry["path"])).blocks[0])  # canonical spelling
                block[key] = float(entry["valid_loss"])
        losses.append(block)
    return losses


class Objective:
    """``objective(arch) -> Evaluation``: proxy loss (sum of block losses), predicted latency, params, FLOPs.

    ``space`` must carry the surviving ``candidates`` of each block; ``block_losses`` holds one
    ``{str(path): valid_loss}`` per block (:func:`load_block_losses`). ``seq_len`` (for FLOPs) defaults to the
    sequence length the latency profile was measured at.
    """

    def __init__(self, space: SearchSpace, block_losses: Sequence[Mapping[str, float]], predictor: LatencyPredictor,
                 *, seq_len: int | None = None):
        if space.candidates is None:
            raise SpaceError(f"space {space.name!r} has no surviving candidates: the search runs on the space a "
                             "trained run wrote (RUN/space.yaml)")
        if len(block_losses) != space.num_blocks:
            raise SpaceError(f"block_losses has {len(block_losses)} blocks, space {space.name!r} has "
                             f"{space.num_blocks}")
        self.space, self.predictor = space, predictor
        self.block_losses = tuple({str(k): float(v) for k, v in block.items()} for block in block_losses)
        device = predictor.device or {}
        self.seq_len = int(seq_len if seq_len is not None else device.get("seq_len", 128))
        # What samplers choose from: the candidates that have a recorded loss, in their stored order.
        self.choices: tuple[tuple[BlockArch, ...], ...] = tuple(
            tuple(p for p in space.candidates[n] if str(p) in self.block_losses[n]) for n in range(space.num_blocks)
        )
        for n, (paths, chosen) in enumerate(zip(space.candidates, self.choices)):
            if not chosen:
                raise SpaceError(f"block {n}: none of its {len(paths)} candidates has a recorded validation loss")
            if len(chosen) < len(paths):
                logger.warning("block %d: %d of %d candidates have no recorded loss and are left out of the search",
                               n, len(paths) - len(chosen), len(paths))
        self._index = tuple({p: i for i, p in enumerate(chosen)} for chosen in self.choices)

    # ---------------------------------------------------------------- construction from a run

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, *, latency_profile: str | os.PathLike | None = None,
                 seq_len: int | None = None) -> Objective:
        """The objective of a trained and profiled run: ``RUN/space.yaml`` and ``RUN/latency/<device>/`` (or
        ``latency_profile``, a profile directory possibly made on another machine)."""
        run = Path(run_dir)
        space_file = run / "space.yaml"
        if not space_file.is_file():
            raise FileNotFoundError(f"{space_file} does not exist: train the supernet first "
                                    f"(`nasbert train --out {run}`)")
        predictor = LatencyProfile.find(run, latency_profile).predictor
        return cls(SearchSpace.load(space_file), load_block_losses(space_file), predictor, seq_len=seq_len)

    @property
    def teacher_latency_ms(self) -> float | None:
        return self.predictor.teacher_latency_ms

    # ---------------------------------------------------------------- the objective

    def proxy_loss(self, arch: Arch) -> float:
        """Sum over blocks of the validation loss each block's path reached in training."""
        total = 0.0
        for n, block in enumerate(arch.blocks):
            loss = self.block_losses[n].get(str(block))
            if loss is None:
                raise SpaceError(f"block {n}: path {str(block)!r} has no recorded validation loss; the search only "
                                 "evaluates the surviving candidates of each block")
            total += loss
        return total

    def __call__(self, arch: Arch) -> Evaluation:
        self.space.validate(arch)
        proxy = self.proxy_loss(arch)
        latency = self.predictor.predict(arch)
        if not math.isfinite(latency):
            raise ValueError(f"the latency predictor gave {latency} for {arch}")
        return Evaluation(proxy_loss=proxy, latency_ms=latency, params=self.space.num_params(arch),
                          flops=self.space.flops(arch, self.seq_len))

    # ---------------------------------------------------------------- sampler encoding

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(f"block{n}" for n in range(self.space.num_blocks))

    def choice_counts(self) -> dict[str, int]:
        """``{"block0": number of paths, ...}``: the size of each categorical."""
        return {name: len(c) for name, c in zip(self.param_names, self.choices)}

    def suggest_params(self, trial) -> dict[str, int]:
        """The sampler's choice in an Optuna trial: one categorical per block (:meth:`arch_from_params` reads it)."""
        return {key: trial.suggest_categorical(key, list(range(n))) for key, n in self.choice_counts().items()}

    def arch_from_params(self, params: Mapping[str, Any]) -> Arch:
        """``{"block0": i, ...}`` (indices into each block's choices) -> :class:`Arch`."""
        blocks = []
        for n, name in enumerate(self.param_names):
            if name not in params:
                raise KeyError(f"missing {name!r} in {dict(params)!r}")
            i = params[name]
            if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < len(self.choices[n]):
                raise ValueError(f"{name} = {i!r} is not an index into its {len(self.choices[n])} paths")
            blocks.append(self.choices[n][int(i)])
        return Arch(tuple(blocks))

    def params_from_arch(self, arch: Arch) -> dict[str, int]:
        """The inverse of :meth:`arch_from_params`."""
        if len(arch.blocks) != self.space.num_blocks:
            raise SpaceError(f"arch has {len(arch.blocks)} blocks, the space has {self.space.num_blocks}")
        out = {}
        for n, (name, block) in enumerate(zip(self.param_names, arch.blocks)):
            if block not in self._index[n]:
                raise SpaceError(f"block {n}: path {str(block)!r} is not among the searched candidates")
            out[name] = self._index[n][block]
        return out
