"""The objective of an elastic teacher space: every candidate extracted, calibrated and compared with the teacher.

An architecture of an elastic space (:meth:`nasbert.space.SearchSpace.elastic_for`) is made of the teacher's own
sub-layers, some with fewer heads or neurons, some skipped. A trial extracts it from the teacher's weights (no adapters),
calibrates it on rows of unlabelled text (:class:`nasbert.export.calibrate.TeacherCalibration`: which heads and
neurons to keep, output weights refitted, each sub-layer on the teacher's inputs to it, fitted once for every size
so that a trial only looks it up; the export recalibrates its chosen models bottom-up), and scores
the calibrated model against the teacher's final hidden states on fixed, unmasked validation sequences. The proxy
loss the search minimises is ``1 - cosine`` (the mean per-token cosine to the teacher's states; ``proxy="mse"``: the
MSE). Latency is predicted on the profiled device and parameters and FLOPs are counted exactly, as in
:class:`~nasbert.search.objective.Objective`, which this replaces for elastic spaces; Optuna and Ray Tune call it
the same way.

Why the cosine: it is blind to the scale of the states, which a pruned model that skips sub-layers changes while
keeping their direction, and which a fine-tuned classifier does not read through its LayerNorm and pooler; the MSE
charges a model for that scale. The proxy is a prior with that reason; how it ranks fine-tuned scores within a
budget is measured in docs/benchmarks.md.

>>> objective = CalibratedObjective(space, predictor, teacher, calibration=rows, batches=batches)  # doctest: +SKIP
>>> objective(arch)  # doctest: +SKIP
Evaluation(proxy_loss=0.12, latency_ms=14.1, params=11324160, flops=1450000000)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ..export.calibrate import TeacherCalibration, calibrate
from ..latency.predictor import LatencyPredictor
from ..space import Arch, SearchSpace, SpaceError
from ..supernet import SuperNet
from .objective import Objective

__all__ = ["PROXIES", "CalibratedObjective", "calibrated_model"]

logger = logging.getLogger(__name__)

#: what a calibrated candidate is compared with the teacher by
PROXIES = ("cosine", "mse")


def calibrated_model(source: SuperNet, arch: Arch, teacher, calibration: torch.Tensor | None):
    """``arch`` extracted from ``source`` (a supernet of the teacher's weights, ``reorder="units"``) without adapters
    and calibrated bottom-up on ``calibration`` (token ids (rows, seq_len); None: magnitude-pruned, as extracted).
    Returns the model and the calibration records."""
    model = source.extract(arch, drop_identity_adapters=True)
    records = calibrate(model, arch, source.space, teacher, calibration) if calibration is not None else []
    return model, records


class CalibratedObjective(Objective):
    """``objective(arch) -> Evaluation`` for an elastic space: the proxy loss of the candidate calibrated on
    ``calibration`` (token ids (rows, seq_len)), against the teacher's final states on ``batches`` (unmasked
    validation batches, :func:`~nasbert.training.evaluation.plain_batches`). ``source``: the supernet of the
    teacher's own weights (default: built from ``teacher`` with ``reorder="units"``)."""

    def __init__(self, space: SearchSpace, predictor: LatencyPredictor, teacher, *, calibration: torch.Tensor,
                 batches: Sequence[dict], proxy: str = "cosine", source: SuperNet | None = None,
                 seq_len: int | None = None):
        if not space.elastic:
            raise SpaceError(f"space {space.name!r} is not an elastic teacher space: its candidates are not the "
                             "teacher's own sub-layers, so they cannot be calibrated (use Objective)")
        if proxy not in PROXIES:
            raise ValueError(f"proxy must be one of {', '.join(PROXIES)}, got {proxy!r}")
        if not batches:
            raise ValueError("the calibrated objective needs at least one validation batch")
        if space.candidates is None:  # an untrained run: every path of the space
            space = space.with_candidates([tuple(space.iter_block_paths(n)) for n in range(space.num_blocks)])
        super().__init__(space, [{str(p): 0.0 for p in c} for c in space.candidates], predictor, seq_len=seq_len)
        self.teacher = teacher.eval()
        self.source = (source or SuperNet.from_teacher(_full(space), teacher, reorder="units")).eval()
        self.batches, self.proxy = list(batches), proxy
        self.calibration = TeacherCalibration(teacher, self.source.space, calibration)
        with torch.no_grad():
            self._targets = [teacher(**b).last_hidden_state[b["attention_mask"].bool()] for b in self.batches]
        self._cache: dict[str, float] = {}

    @torch.no_grad()
    def proxy_loss(self, arch: Arch) -> float:
        key = str(arch)
        if key not in self._cache:
            model = self.source.extract(arch, drop_identity_adapters=True)
            self.calibration.apply(model, arch)
            self._cache[key] = self.score(model)
        return self._cache[key]

    @torch.no_grad()
    def score(self, model) -> float:
        """The proxy loss of a standalone model (e.g. a calibrated candidate) against the teacher's states."""
        model.eval()
        total = 0.0
        for batch, target in zip(self.batches, self._targets):
            out = model(**batch).last_hidden_state[batch["attention_mask"].bool()]
            if self.proxy == "cosine":
                total += 1.0 - float(torch.nn.functional.cosine_similarity(out, target, dim=-1).mean())
            else:
                total += float(torch.nn.functional.mse_loss(out, target))
        return total / len(self.batches)


def _full(space: SearchSpace) -> SearchSpace:
    """The space without its shrunk candidates: the supernet of the teacher's weights holds every op."""
    import dataclasses

    return dataclasses.replace(space, candidates=None)
