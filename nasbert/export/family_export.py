"""Exporting the family: one model per budget, chosen on whole-model loss and measured latency.

::

    FAMILY/
      family.json              every member (schema in DESIGN.md), the device, the teacher's latency
      teacher.onnx             the teacher, so that `nasbert pick --measure` can time it next to the members
      <member>/                a Hugging Face model directory: config.json, model.safetensors, tokenizer,
                               modeling code, model.onnx, README.md (model card with the measured numbers)

With ``distill`` (``export.distill.steps > 0``), every chosen member is trained further as a whole against the
teacher (:func:`~nasbert.training.distill.distill_arch`) before it is written; the choice itself still rests on
the supernet's losses and the measured latency, and ``valid_loss`` is then the distilled model's.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence
from pathlib import Path

from ..data import TokenizedCorpus
from ..io import atomic_dir
from ..space import Arch, SearchSpace
from ..supernet import SuperNet
from ..training.config import DistillConfig
from ..training.distill import DistillResult, distill_arch
from .card import write_model_card
from .family import Family, FamilyMember
from .hf import write_hf_files
from .onnx import export_onnx
from .selection import measure_models, speedup, whole_model_loss

__all__ = ["export_family"]

logger = logging.getLogger(__name__)


def _member_name(budget_name: str, params: int) -> str:
    return f"nasbert-{budget_name}-{params / 1e6:.1f}M".replace("/", "-")


def export_family(
    *,
    supernet: SuperNet,
    teacher,
    tokenizer,
    teacher_name: str,
    space: SearchSpace,
    budgets: Sequence,
    candidates: dict[str, list[tuple[Arch, object]]],
    valid_batches: list[dict],
    device: dict,
    out: str | Path,
    top_k: int = 3,
    write_onnx: bool = True,
    seed: int = 0,
    evaluate=None,
    distill: DistillConfig | None = None,
    corpus: TokenizedCorpus | None = None,
) -> Family:
    """Re-evaluate the top ``top_k`` candidates of every budget, time them with the teacher, export the best
    that meets its budget. ``candidates[budget.name]`` is the search's ranking: ``(arch, evaluation)`` pairs
    whose evaluation has ``proxy_loss`` and ``latency_ms`` (predicted). ``evaluate({name: arch}) -> {name: loss}``
    replaces the in-process whole-model evaluation (e.g. Ray tasks). With ``distill.steps > 0`` every chosen
    model is distilled as a whole on ``corpus`` (the training corpus) before it is written."""
    from .. import __version__

    distilling = distill is not None and distill.steps > 0
    if distilling and corpus is None:
        raise ValueError("export with distill.steps > 0 needs the training corpus: pass corpus=")

    shortlist: dict[str, list[tuple[Arch, object]]] = {b.name: list(candidates.get(b.name, []))[:top_k]
                                                       for b in budgets}
    unique: dict[str, Arch] = {str(a): a for ranked in shortlist.values() for a, _ in ranked}
    if not unique:
        raise ValueError("the search found no candidate that meets any budget: loosen the budgets "
                         "(e.g. --budgets 1.5x) or run more trials")
    logger.info("re-evaluating %d candidate models as whole models", len(unique))
    if evaluate is not None:
        losses = evaluate(unique)
    else:
        losses = {name: whole_model_loss(supernet, teacher, arch, valid_batches) for name, arch in unique.items()}
    models = {name: supernet.extract(arch) for name, arch in unique.items()}
    measured = measure_models(models, teacher, engine=device["engine"], device=device["device"],
                              threads=device["threads"], batch=device["batch"], seq_len=device["seq_len"],
                              vocab_size=space.teacher.vocab_size, seed=seed)
    teacher_ms = measured.teacher_latency_ms

    members: list[FamilyMember] = []
    chosen: dict[str, tuple] = {}
    taken: set[str] = set()
    distilled: dict[str, DistillResult] = {}  # arch name -> DistillResult (two budgets may choose one model)
    # Tightest budget first; a looser budget prefers a model no tighter budget took, so that the family holds
    # distinct models where the candidates allow it (the best model of a tight budget meets the looser ones too).
    for budget in sorted(budgets, key=lambda b: b.sort_key(teacher_ms), reverse=True):
        # Every re-evaluated candidate is eligible: one shortlisted for a tighter budget may win a looser one.
        feasible = []
        for arch, evaluation in (c for ranked in shortlist.values() for c in ranked):
            name, params = str(arch), space.num_params(arch)
            if name not in [f[2] for f in feasible] and budget.allows(measured.latency_ms[name], params, teacher_ms):
                feasible.append((losses[name], measured.latency_ms[name], name, arch, evaluation))
        if not feasible:
            logger.warning("budget %s: none of the %d candidates meets it on measured latency; nothing exported "
                           "for it", budget.name, len(shortlist[budget.name]))
            continue
        fresh = [f for f in feasible if f[2] not in taken] or feasible
        loss, latency, name, arch, evaluation = min(fresh, key=lambda x: (x[0], x[1]))
        taken.add(name)
        member_dir = _member_name(budget.name, space.num_params(arch))
        model, loss_before = models[name], None
        if distilling:
            if name not in distilled:
                distilled[name] = distill_arch(supernet, arch, teacher, corpus, tokenizer, config=distill,
                                               seed=seed, progress=False, valid_batches=valid_batches)
            result = distilled[name]
            model, loss_before, loss = result.model, result.valid_loss_before, result.valid_loss_after
        members.append(FamilyMember(
            name=member_dir, path=member_dir, arch=arch.to_dict(), params=space.num_params(arch),
            flops=space.flops(arch, device["seq_len"]), latency_ms=latency,
            predicted_latency_ms=float(evaluation.latency_ms), speedup=speedup(teacher_ms, latency),
            proxy_loss=float(evaluation.proxy_loss), valid_loss=loss, budget=budget.name,
            onnx=f"{member_dir}/model.onnx" if write_onnx else None,
            distill_steps=distill.steps if distilling else 0, valid_loss_before_distill=loss_before,
        ))
        chosen[member_dir] = (arch, model)
        logger.info("budget %s: %s, %.2f ms measured (%.2fx), whole-model loss %.4f%s", budget.name, arch, latency,
                    speedup(teacher_ms, latency), loss,
                    f" after {distill.steps} distillation steps (before {loss_before:.4f})" if distilling else "")
    members.sort(key=lambda m: -m.latency_ms)  # slowest (loosest budget) first, as the budgets were given
    if not members:
        raise ValueError("no candidate meets its budget on the measured latency: loosen the budgets or profile "
                         "the device again (`nasbert latency --force`)")

    family = Family(teacher=teacher_name, device=dict(device), teacher_latency_ms=teacher_ms, models=members,
                    created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    nasbert_version=__version__)
    out = Path(out)
    with atomic_dir(out) as tmp:
        for member in members:
            arch, model = chosen[member.path]
            directory = tmp / member.path
            write_hf_files(model, directory, tokenizer=tokenizer)
            if write_onnx:
                export_onnx(model, directory / "model.onnx")  # raises if ONNX and PyTorch differ by > 1e-4
            write_model_card(member, family, directory, space_summary=space.summary())
        if write_onnx:
            export_onnx(teacher, tmp / "teacher.onnx")
        family.save(tmp)
    return family
