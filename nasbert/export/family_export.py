"""Exporting the family: one model per budget, chosen on a proxy of quality and measured latency.

::

    FAMILY/
      family.json              every member (schema in DESIGN.md), the device, the teacher's latency
      teacher.onnx             the teacher, so that `nasbert pick --measure` can time it next to the members
      <member>/                a Hugging Face model directory: config.json, model.safetensors, tokenizer,
                               modeling code, model.onnx, README.md (model card with the measured numbers)

The candidates of a budget are the search's top ones (in an elastic space: its top trials by the cheap proxy and
its best starting points at each attention depth). In an elastic teacher space each is made of the teacher's own
sub-layers: extracted from the teacher's weights with no adapters and calibrated bottom-up on the corpus
(:func:`~nasbert.export.calibrate.calibrate`), and, with ``weights="both"``, also in the block-wise trained
supernet's version. All are timed with the teacher in one interleaved run; a model of the teacher's sub-layers
timed faster than its work allows (a busy host) is judged at that bound (:func:`~nasbert.export.cuts.work_speedup`).
Per budget, among those that meet it on *measured* latency, the one with the highest probe score wins (a short
fine-tune on a sentence-pair task, :mod:`nasbert.search.probe`: the proxy that ranks fine-tuned quality within a
budget; of the starting points, the one with the highest cosine at each attention depth is probed); without a
probe, the one whose final hidden states have the highest mean per-token cosine to the teacher's. Each member's
``choice`` in family.json names the search trial it came from and what came second.

With ``distill`` (``export.distill.steps > 0``), every chosen member is trained further as a whole against the
teacher (:func:`~nasbert.training.distill.distill_arch`) before it is written; the choice itself still rests on
the cosine before distillation and the measured latency, and ``valid_loss`` is then the distilled model's.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import TokenizedCorpus
from ..io import atomic_dir
from ..space import Arch, SearchSpace
from ..supernet import SuperNet
from ..training.distill import DistillResult, distill_arch
from ..budgets import latency_limits
from ..latency.models import measure_models, speedup
from ..onnxio import OnnxParityError, export_int8, export_onnx
from ..training.evaluation import TeacherStates, state_cosine, whole_model_loss
from .calibrate import calibrate
from .card import write_model_card
from .config import WEIGHTS, ExportConfig
from .cuts import busy, judged_ms, work_speedup
from .family import Family, FamilyMember
from .hf import write_hf_files

__all__ = ["ExportInputs", "export_family"]

logger = logging.getLogger(__name__)


#: cosines closer than this are a tie, which the faster candidate wins
COSINE_TIE = 1e-5


def _member_name(budget_name: str, params: int) -> str:
    return f"nasbert-{budget_name}-{params / 1e6:.1f}M".replace("/", "-")


@dataclass
class _Candidate:
    """One model the export may choose: an architecture and the supernet its weights come from."""

    arch: Arch
    source: str  # "supernet" (the trained supernet) or "teacher" (the teacher's own sub-layers)
    label: str  # the search's rank and trial, for the log and the choice record
    predicted_ms: float | None
    proxy_loss: float | None
    trial: int | None = None
    #: a model of the teacher's sub-layers: :func:`~nasbert.export.cuts.work_speedup`, the most it can be faster
    bound: float | None = None
    #: one of the search's starting points (enqueued), not a trial its sampler proposed
    enqueued: bool = False

    @property
    def key(self) -> str:
        return f"{self.source}:{self.arch}"


def _one_per_depth(feasible: list[tuple]) -> list[tuple]:
    """Of ``(cosine, latency, candidate)`` tuples that meet a budget, the search's own candidates and, of its
    starting points, the one with the highest cosine at each attention depth (ties: the faster): the starting points
    of one depth differ in width, where a wider stack's higher cosine is a fair guess; across depths the cosine does
    not rank fine-tuned quality, so the probe chooses."""
    best: dict[tuple, tuple] = {}
    for f in feasible:
        if f[2].enqueued:
            group = (f[2].arch.attention_depth, f[2].source)
            if group not in best or (f[0], -f[1]) > (best[group][0], -best[group][1]):
                best[group] = f
    return [f for f in feasible if not f[2].enqueued or best[(f[2].arch.attention_depth, f[2].source)] is f]


def _choice_text(budget, chosen: tuple, feasible: list[tuple], teacher_ms: float, first: dict | None = None,
                 taken: int = 0, timed_ms: float | None = None, ranked_by: str = "cosine to the teacher") -> str:
    """Why ``chosen`` won among ``feasible`` (the candidates that meet the budget and are not yet the member of a
    tighter budget; ``taken`` more are), each ``(score, latency, candidate)`` with ``score`` the ``ranked_by``.
    ``timed_ms``: the chosen model's timing where it beat its work bound, which then judged it."""
    score, ms, cand = chosen
    digits = 4 if ranked_by.startswith("cosine") else 2
    rest = sorted((f for f in feasible if f[2].key != cand.key), key=lambda f: -f[0])
    trial = f", search trial {cand.trial}" if cand.trial is not None else ""
    text = (f"highest {ranked_by} ({score:.{digits}f}) of {len(feasible)} candidates that meet {budget.name} "
            f"on measured latency ({cand.label}{trial}, {cand.source} weights, {speedup(teacher_ms, ms):.2f}x)")
    if taken:
        text += f"; {taken} more that meet it are already members of tighter budgets"
    if rest:
        r_score, r_ms, r = rest[0]
        text += f"; runner-up {r.label} ({r.source}) at {r_score:.{digits}f}, {speedup(teacher_ms, r_ms):.2f}x"
    if timed_ms is not None:
        text += (f"; it was timed at {speedup(teacher_ms, timed_ms):.3f}x, faster than its work allows, and judged "
                 f"at {cand.bound:.3f}x, the ratio of its work to the teacher's")
    if first is not None and "runs" in first:
        runs = ", ".join(f"{x:.3f}x" for x in first["runs"])
        text += (f"; it was timed near the budget's edge three times ({runs}: the first two on two sides of a "
                 f"limit), and the median decided")
    elif first is not None:
        text += (f"; it was timed near the budget's edge ({first['speedup']:.2f}x) and again, longer, at "
                 f"{speedup(teacher_ms, ms if timed_ms is None else timed_ms):.2f}x, which decided")
    slowest = max(feasible, key=lambda f: f[1])
    if slowest[2].key != cand.key:
        text += (f"; a slower candidate that meets the budget ({slowest[2].label}, "
                 f"{speedup(teacher_ms, slowest[1]):.2f}x) ranks lower, so the faster model is chosen")
    return text


def _judged_latency(candidates: dict[str, _Candidate], latency_ms: dict[str, float], teacher_ms: float
                    ) -> dict[str, float]:
    """The latency each candidate is judged at: the measured one, except for a model of the teacher's own
    sub-layers timed faster than its work allows (:func:`~nasbert.export.cuts.work_speedup`), which is judged at
    that bound: on a busy host the teacher slows down more than a small model, which inflates small models'
    speed-ups. Warns when a cut is over by more than :data:`~nasbert.export.cuts.BUSY_MARGIN`."""
    judged = {key: judged_ms(latency_ms[key], teacher_ms, c.bound) for key, c in candidates.items()}
    over = [key for key in judged if judged[key] != latency_ms[key]]
    if over:
        worst = max(over, key=lambda k: judged[k] / latency_ms[k])
        text = "; ".join(f"{candidates[k].label} ({candidates[k].source}) {speedup(teacher_ms, latency_ms[k]):.3f}x > "
                         f"{candidates[k].bound:.3f}x" for k in over)
        percent = 100 * (judged[worst] / latency_ms[worst] - 1)
        if not busy(latency_ms[worst], judged[worst]):
            logger.info("%d models of the teacher's sub-layers timed up to %.1f%% faster than their work allows (%s), within the timing's "
                        "noise: judged at their work's speed-up", len(over), percent, text)
        else:
            logger.warning("%d models of the teacher's sub-layers timed faster than their work allows (%s; up to %.1f%% over): the host was "
                           "probably busy while they and the teacher (%.2f ms) were timed, which inflates the "
                           "speed-ups of small models, so those models are judged at their work's speed-up. Export on "
                           "an idle machine, and check the family with `nasbert pick --measure`. (Where per-call "
                           "overheads dominate, small models or a GPU, such a model can beat its work legitimately: set "
                           "export.work_bound: false there.)", len(over), text, percent, teacher_ms)
    return judged


def _bound_record(cand: _Candidate, timed_ms: float, judged_ms: float, teacher_ms: float) -> dict:
    """What a member's record keeps of its work bound: the bound (a cut), and the timed speed-up where the bound
    judged it instead (its ``latency_ms`` and ``speedup`` are then the bound's)."""
    if cand.bound is None:
        return {}
    return {"work_speedup": cand.bound,
            **({"timed_speedup": speedup(teacher_ms, timed_ms)} if timed_ms != judged_ms else {})}


@dataclass
class ExportInputs:
    """What the export works from: the run's models, data and device (``stage_export`` builds it from a run).

    ``teacher_supernet``: the supernet of the teacher's own weights (``SuperNet.from_teacher(space, teacher,
    reorder="units")``), which an elastic space's candidates are extracted from; ``calibration``: token ids (rows,
    seq_len) of unlabelled text they are calibrated on (None: magnitude-pruned); ``proxy_batches``: the unmasked
    validation sequences the cosine is computed on (default ``valid_batches``); ``corpus``: the training corpus, for
    ``distill.steps > 0``, with ``teacher_cache`` (a :class:`~nasbert.training.teacher_cache.TeacherStateCache` of
    ``corpus.train``) if there is one; ``evaluate({name: arch}) -> {name: loss}``: the supernet candidates' whole-model
    losses computed elsewhere (Ray tasks); ``probe``: a :class:`~nasbert.search.probe.Probe` that ranks the
    candidates meeting a budget (a short fine-tune) instead of the cosine."""

    supernet: SuperNet
    teacher: Any
    tokenizer: Any
    teacher_name: str
    space: SearchSpace
    device: dict
    valid_batches: list[dict]
    proxy_batches: list[dict] | None = None
    teacher_supernet: SuperNet | None = None
    calibration: Any = None
    corpus: TokenizedCorpus | None = None
    teacher_cache: Any = None
    evaluate: Callable | None = None
    probe: Any = None


def export_family(inputs: ExportInputs, budgets: Sequence, candidates: dict[str, list[tuple[Arch, object]]], *,
                  out: str | Path, config: ExportConfig | None = None, seed: int = 0,
                  top_k: int | None = None) -> Family:
    """Re-evaluate the top ``top_k`` candidates of every budget (None: every one given), time them with the
    teacher, export the best that meets its budget to ``out``. ``candidates[budget.name]`` is the search's ranking:
    ``(arch, evaluation[, trial number[, enqueued]])`` whose evaluation has ``proxy_loss`` and ``latency_ms``
    (predicted). ``inputs`` holds the models, data and device (:class:`ExportInputs`); ``config`` (default
    ``ExportConfig()``) how to export.

    In an elastic space each candidate competes with the teacher's own weights, no adapters, calibrated on
    ``inputs.calibration``, and with ``config.weights`` "supernet" or "both" with the trained supernet's. The best
    candidate that meets a budget is the one with the highest probe score (``inputs.probe``), or without a probe the
    highest per-token cosine of its final states to the teacher's. ``valid_loss`` is the whole-model MSE over
    ``inputs.valid_batches``. With ``config.distill.steps > 0`` every chosen model is distilled as a whole on
    ``inputs.corpus`` before it is written; with ``config.int8`` (and ``config.onnx``) every member also gets
    ``model.int8.onnx``, timed with the teacher. A candidate timed within ``config.edge_margin`` of a budget's limit
    is timed again, longer, and that run decides (:func:`~nasbert.latency.models.measure_models`). With
    ``config.work_bound``, a model of the teacher's sub-layers timed faster than its work allows
    (:func:`~nasbert.export.cuts.work_speedup`) is judged, and recorded, at that bound."""
    from .. import __version__

    config = config if config is not None else ExportConfig()
    supernet, teacher, tokenizer, teacher_name, space = (inputs.supernet, inputs.teacher, inputs.tokenizer,
                                                         inputs.teacher_name, inputs.space)
    device, valid_batches, proxy_batches = inputs.device, inputs.valid_batches, inputs.proxy_batches
    teacher_supernet, calibration, corpus = inputs.teacher_supernet, inputs.calibration, inputs.corpus
    teacher_cache, evaluate, probe = inputs.teacher_cache, inputs.evaluate, inputs.probe
    write_onnx, write_int8, distill = config.onnx, config.int8, config.distill
    edge_margin, weights, work_bound = config.edge_margin, config.weights, config.work_bound

    distilling = distill is not None and distill.steps > 0
    if distilling and corpus is None:
        raise ValueError("export with distill.steps > 0 needs the training corpus: pass corpus=")
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {sorted(WEIGHTS)}, got {weights!r}")
    if space.elastic and teacher_supernet is None and weights != "supernet":
        raise ValueError("an elastic space's candidates need teacher_supernet=SuperNet.from_teacher(space, teacher, "
                         "reorder=\"units\")")
    proxy_batches = proxy_batches or valid_batches
    sources = {"supernet": supernet, "teacher": teacher_supernet}
    versions = WEIGHTS[weights] if space.elastic else ("supernet",)

    shortlist: dict[str, list[_Candidate]] = {b.name: [] for b in budgets}
    for b in budgets:
        for i, entry in enumerate(list(candidates.get(b.name, []))[:top_k]):
            arch, ev, trial, enqueued = (*entry, None, False, False)[:4]
            label = "starting point" if enqueued else f"search #{i + 1}"
            bound = work_speedup(space, arch, device["seq_len"]) if work_bound and space.elastic else None
            shortlist[b.name] += [_Candidate(arch, src, label, float(ev.latency_ms),
                                             float(ev.proxy_loss), trial=trial,
                                             bound=bound if src == "teacher" else None, enqueued=bool(enqueued))
                               for src in versions]
    unique: dict[str, _Candidate] = {c.key: c for ranked in shortlist.values() for c in ranked}
    if not unique:
        raise ValueError("the search found no candidate that meets any budget: loosen the budgets "
                         "(e.g. --budgets 1.5x) or run more trials")
    logger.info("re-evaluating %d candidate models as whole models", len(unique))

    def extract(c: _Candidate):
        """The candidate's model as its weights give it (a teacher cut keeps no adapters), before calibration."""
        return sources[c.source].extract(c.arch, drop_identity_adapters=c.source == "teacher")

    models = {key: extract(c) for key, c in unique.items()}
    calibrated: dict[str, dict] = {}  # candidate key -> its calibration record
    states = TeacherStates(teacher)  # every candidate is compared with the teacher on the same batches
    for key, c in unique.items():
        if c.source == "teacher" and calibration is not None:
            records = [r.to_dict() for r in calibrate(models[key], c.arch, space, teacher, calibration)]
            if records:
                calibrated[key] = {"sublayers": records}

    def uncalibrated(c: _Candidate) -> dict:
        """A calibrated member's model before calibration (as its extraction gives it), compared with the
        teacher, for its record: made again for the members only, not for every candidate."""
        model = extract(c)
        return {"cosine": state_cosine(model, states, None, proxy_batches),
                "valid_loss": whole_model_loss(model, states, None, valid_batches)}

    on_supernet = {str(c.arch): c.arch for c in unique.values() if c.source == "supernet"}
    remote = evaluate(on_supernet) if evaluate is not None and on_supernet else {}
    losses = {f"supernet:{a}": v for a, v in remote.items()}
    cosine: dict[str, float] = {}
    for key, c in unique.items():
        standalone = c.source == "teacher"  # the extracted (and calibrated) model itself
        net, arch = (models[key], None) if standalone else (sources[c.source], c.arch)
        cosine[key] = state_cosine(net, states, arch, proxy_batches)
        if key not in losses:
            losses[key] = whole_model_loss(net, states, arch, valid_batches)
    # exact, and without adapters where the extraction dropped them (a teacher cut from the teacher's weights)
    params = {key: space.num_params(c.arch, adapters=models[key].config.adapters) for key, c in unique.items()}
    measured = measure_models(models, teacher, engine=device["engine"], device=device["device"],
                              threads=device["threads"], batch=device["batch"], seq_len=device["seq_len"],
                              vocab_size=space.teacher.vocab_size, seed=seed,
                              precision=device.get("precision", "fp32"),
                              limits=lambda t: latency_limits(budgets, t), edge_margin=edge_margin)
    teacher_ms = measured.teacher_latency_ms
    for key in measured.retimed:
        logger.info("%s (%s) %s", unique[key].label, unique[key].source, measured.retiming(key))
    judged = _judged_latency(unique, measured.latency_ms, teacher_ms)

    probed: dict[str, float] = {}

    def probe_all(keys: list[str]) -> None:
        """Probe the candidates of ``keys`` not probed yet, several at once (``probe.score_many``)."""
        keys = [k for k in dict.fromkeys(keys) if k not in probed]
        names = [unique[k].source if unique[k].trial is None else f"trial{unique[k].trial}-{unique[k].source}"
                 for k in keys]
        probed.update(zip(keys, probe.score_many([(models[k], n) for k, n in zip(keys, names)], tokenizer)))

    def rank(key: str) -> float:
        """What chooses among a budget's feasible candidates: the probe score where there is a probe."""
        if probe is None:
            return cosine[key]
        probe_all([key])
        return probed[key]

    def probe_pool(budget, pool: list[tuple]) -> list[tuple]:
        """With a probe, each probe is a fine-tune: a budget ranks its own candidates only, one per depth."""
        own = {c.key for c in shortlist[budget.name]}
        return _one_per_depth([f for f in pool if f[2].key in own] or pool)

    def meets(budget) -> list[tuple]:
        """``(cosine, judged latency, candidate)`` of every candidate that meets ``budget`` on measured latency."""
        return [(cosine[key], judged[key], c) for key, c in unique.items()
                if budget.allows(judged[key], params[key], teacher_ms)]

    if probe is not None:  # every budget's probes at once, so that they run side by side (a tighter budget's
        # member, which a looser budget then leaves out, is rarely on its shortlist: any other is probed below)
        probe_all([f[2].key for budget in budgets for f in probe_pool(budget, meets(budget))])

    ranked_by = "cosine to the teacher" if probe is None else f"score on the {probe.describe()}"
    members: list[FamilyMember] = []
    chosen: dict[str, tuple] = {}
    taken: set[str] = set()
    distilled: dict[str, DistillResult] = {}  # candidate key -> DistillResult (two budgets may choose one model)
    # Tightest budget first; a looser budget prefers a model no tighter budget took, so that the family holds
    # distinct models where the candidates allow it (the best model of a tight budget meets the looser ones too).
    for budget in sorted(budgets, key=lambda b: b.sort_key(teacher_ms), reverse=True):
        # Every re-evaluated candidate is eligible (one shortlisted for a tighter budget may win a looser one),
        # except with a probe, where a budget probes only its own shortlist while one of them meets it.
        feasible = meets(budget)
        if not feasible:
            logger.warning("budget %s: none of the %d candidates meets it on measured latency; nothing exported "
                           "for it", budget.name, len(shortlist[budget.name]))
            continue
        pool = [f for f in feasible if f[2].key not in taken] or feasible
        n_taken = len(feasible) - len(pool)
        if probe is not None:
            pool = probe_pool(budget, pool)
        pool = [(rank(c.key), ms, c) for _, ms, c in pool]
        top = max(f[0] for f in pool)  # ties (within COSINE_TIE, e.g. two weight versions untrained): the faster
        best = min((f for f in pool if f[0] >= top - COSINE_TIE), key=lambda f: f[1])
        _, latency, cand = best
        cos = cosine[cand.key]
        timed = measured.latency_ms[cand.key]
        taken.add(cand.key)
        arch, loss, loss_before = cand.arch, losses[cand.key], None
        model = models[cand.key]
        member_dir = _member_name(budget.name, params[cand.key])
        if distilling:
            if cand.key not in distilled:
                distilled[cand.key] = distill_arch(sources[cand.source], arch, teacher, corpus, tokenizer,
                                                   config=distill, seed=seed, progress=False,
                                                   valid_batches=valid_batches,
                                                   freeze_adapters=cand.source == "teacher",
                                                   teacher_cache=teacher_cache)
            result = distilled[cand.key]
            model, loss_before, loss = result.model, result.valid_loss_before, result.valid_loss_after
        members.append(FamilyMember(
            name=member_dir, path=member_dir, arch=arch.to_dict(), params=params[cand.key],
            flops=space.flops(arch, device["seq_len"], adapters=model.config.adapters), latency_ms=latency,
            predicted_latency_ms=cand.predicted_ms, speedup=speedup(teacher_ms, latency),
            proxy_loss=cand.proxy_loss, valid_loss=loss, budget=budget.name,
            onnx=f"{member_dir}/model.onnx" if write_onnx else None,
            distill_steps=distill.steps if distilling else 0, valid_loss_before_distill=loss_before,
            source=cand.source, cosine=cos,
            choice=_choice_text(budget, best, pool, teacher_ms, measured.retimed.get(cand.key),
                                taken=n_taken, timed_ms=timed if timed != latency else None,
                                ranked_by=ranked_by),
            extra={**({"trial": cand.trial} if cand.trial is not None else {}),
                   **({"probe": probed[cand.key], "probe_task": probe.describe()} if cand.key in probed else {}),
                   **_bound_record(cand, timed, latency, teacher_ms),
                   **({"calibration": calibrated[cand.key]["sublayers"],
                       "uncalibrated": uncalibrated(cand)} if cand.key in calibrated else {})},
        ))
        chosen[member_dir] = (arch, model)
        logger.info("budget %s: %s (%s, %s weights), %.2f ms measured (%.2fx), cosine %.4f, whole-model loss "
                    "%.4f%s", budget.name, arch, cand.label, cand.source, latency, speedup(teacher_ms, latency), cos,
                    loss, f" after {distill.steps} distillation steps (before {loss_before:.4f})" if distilling
                    else "")
    members.sort(key=lambda m: -m.latency_ms)  # slowest (loosest budget) first, as the budgets were given
    if not members:
        raise ValueError("no candidate meets its budget on the measured latency: loosen the budgets or profile "
                         "the device again (`nasbert latency --force`)")

    # every candidate the export timed, so that a choice can be checked against all the others
    timed = sorted(({"label": c.label, "source": c.source, "arch": str(c.arch), "params": params[key],
                     "latency_ms": measured.latency_ms[key], "speedup": speedup(teacher_ms, measured.latency_ms[key]),
                     "cosine": cosine[key], "valid_loss": losses[key], **measured.first_speedup(key),
                     **({"probe": probed[key]} if key in probed else {}),
                     **({"trial": c.trial} if c.trial is not None else {}),
                     "attention_depth": c.arch.attention_depth,
                     **({"work_speedup": c.bound} if c.bound is not None else {})}
                    for key, c in unique.items()),
                   key=lambda row: row["latency_ms"])
    family = Family(teacher=teacher_name, device=dict(device), teacher_latency_ms=teacher_ms, models=members,
                    created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    nasbert_version=__version__, extra={"candidates": timed})
    out = Path(out)
    with atomic_dir(out) as tmp:
        for member in members:
            arch, model = chosen[member.path]
            write_hf_files(model, tmp / member.path, tokenizer=tokenizer)
            if write_onnx:
                export_onnx(model, tmp / member.onnx)  # raises if ONNX and PyTorch differ by > 1e-4
        if write_onnx:
            export_onnx(teacher, tmp / "teacher.onnx")
        if write_onnx and write_int8:
            family = dataclasses.replace(family, models=_with_int8(tmp, family.models, chosen, teacher, device,
                                                                   vocab_size=space.teacher.vocab_size, seed=seed))
        for member in family.models:
            write_model_card(member, family, tmp / member.path, space_summary=space.summary())
        family.save(tmp)
    return dataclasses.replace(family, directory=out)


def _with_int8(root: Path, members: list[FamilyMember], chosen: dict, teacher, device: dict, *, vocab_size: int,
               seed: int) -> list[FamilyMember]:
    """Write every member's int8 graph next to its fp32 one (:func:`~nasbert.onnxio.export_int8`, within
    its error bound) and time the int8 graphs with the fp32 members and the teacher in one run."""
    int8: dict[str, dict] = {}
    for m in members:
        try:
            int8[m.path] = export_int8(chosen[m.path][1], root / m.onnx, root / m.path / "model.int8.onnx")
        except OnnxParityError as e:
            logger.warning("%s: no int8 graph: %s", m.name, e)
    if not int8 or device["engine"] != "onnxruntime" or device["device"] != "cpu":
        if int8:
            logger.info("int8 graphs written, not timed: they run on ONNX Runtime's CPU provider, the family's "
                        "device is %s on %s", device["engine"], device["device"])
        return [dataclasses.replace(m, int8_onnx=f"{m.path}/model.int8.onnx", int8_error=int8[m.path]["error"])
                if m.path in int8 else m for m in members]
    graphs = {f"{m.path}/fp32": root / m.onnx for m in members if m.path in int8}
    graphs.update({f"{m.path}/int8": root / m.path / "model.int8.onnx" for m in members if m.path in int8})
    measured = measure_models({}, teacher, engine="onnxruntime", device="cpu", threads=device["threads"],
                              batch=device["batch"], seq_len=device["seq_len"], vocab_size=vocab_size,
                              seed=seed + 1, graphs=graphs)
    out = []
    for m in members:
        if m.path not in int8:
            out.append(m)
            continue
        fp32_ms, int8_ms = measured.latency_ms[f"{m.path}/fp32"], measured.latency_ms[f"{m.path}/int8"]
        logger.info("%s int8: %.2f ms (%.2fx its fp32 graph in the same run, %.2fx the teacher), relative error "
                    "%.3f, %.1f MB", m.name, int8_ms, fp32_ms / int8_ms, measured.teacher_latency_ms / int8_ms,
                    int8[m.path]["error"], int8[m.path]["bytes"] / 2**20)
        out.append(dataclasses.replace(m, int8_onnx=f"{m.path}/model.int8.onnx", int8_latency_ms=int8_ms,
                                       int8_speedup=measured.teacher_latency_ms / int8_ms,
                                       int8_error=int8[m.path]["error"]))
    return out
