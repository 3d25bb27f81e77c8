"""``nasbert report``: is the family worth more than what a user gets for free?

For every budget of a run's family, the report puts side by side, at *measured* latency (one interleaved
timing run with the teacher, the run's latency settings):

* the searched member (``kind: searched``);
* the best layer-dropped teacher (``layerdrop``) and the best uniform model (``uniform``) that serve the same
  budget (within 3% of it: :func:`~nasbert.quality.baselines.serves`), raw and, when the family was distilled
  after the search (or ``distill_steps`` asks for it), with the same whole-model distillation (``+kd{steps}``);
* a member of the teacher's own sub-layers' magnitude-pruned twin (``pruned``: same shape, no calibration);
* the teacher (``teacher``);
* where ``rule`` names one, a former hand rule's choice for the budget (``rule``), calibrated as the export
  calibrates, so that the search's member can be compared with it.

Those kinds, and ``sampled`` (architectures spread over the space, no budget), are the only ones a row has; every
row names its architecture.

Every model is fine-tuned on a task panel (GLUE tasks, SICK, ...) with one recipe (mean pooling), for each
learning rate of a small grid and each seed, and on pair tasks for each way of reading the pair
(``pair_encodings``: cross, the texts as one sequence, and bi, each text apart, Sentence-BERT's classifier); a
model's score on a task is its final dev score at the grid point with the best mean over seeds (``lr_select:
all``), or the best on the first seed (``first-seed``: the grid on seed 0 only, the other seeds at the chosen
point). Scores are the task's main metric x 100.

Everything lands in ``OUT`` (default ``RUN/report``), step by step, so a stopped report goes on where it was::

    OUT/report.json            the settings; a rerun must ask the same (--force starts over)
    OUT/candidates.json        every baseline candidate's measured latency (chooses the baselines)
    OUT/models/<name>/         every model of the report as a Hugging Face directory
    OUT/models.json            the rows: budget, kind, model, params, measured latency and speed-up
    OUT/proxies.json           per model: whole-model loss, block-wise proxy, cosine, params, FLOPs (proxy_scores)
    OUT/ft/<model>/<task>/lr<lr>[-bi]-seed<s>/   one fine-tuning run each (nasbert finetune's output)
    OUT/quality_results.json   the scores per seed, the chosen learning rates, % of the teacher (written after
                               each task of the panel; ``complete`` says whether every task is in)
    OUT/quality.md             the table
    OUT/quality.png            panel score against measured latency, every model
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..config import ConfigError
from ..io import atomic_dir, atomic_write_json, atomic_write_text
from ..latency.profile import LatencyProfile
from ..space import Arch
from .baselines import KINDS, LAYERDROP_MODES, ROW_KINDS, SERVES_TOLERANCE, Baseline, baseline_params, build_raw, \
    choose_baselines, layerdrop_baselines, uniform_baselines

__all__ = ["ReportConfig", "ReportError", "build_baselines", "build_report", "leads", "run_score", "summarize"]

logger = logging.getLogger(__name__)

LR_SELECT = ("all", "first-seed")
PAIR_ENCODINGS = ("cross", "bi")
BASELINE_KINDS = ("layerdrop", "uniform", "pruned")
TEACHER = "teacher"


class ReportError(ValueError):
    """The report cannot be made as asked (the message says what to change)."""


@dataclass(frozen=True)
class ReportConfig:
    """What the report measures and how every model is fine-tuned."""

    tasks: tuple[str, ...] = ("sst2", "cola", "sick")
    #: local data: a GLUE root (or a folder holding glue/ and sick/); None reads the tasks from the hub
    data_dir: str | None = None
    seeds: int = 3
    lrs: tuple[float, ...] = (5e-5, 2e-4, 5e-4)
    lr_select: str = "all"
    #: pair tasks: the ways of reading a pair each model is fine-tuned with, the best kept (a grid axis like the
    #: rate); the smallest members read SICK better with each text apart, the teacher as one sequence
    pair_encodings: tuple[str, ...] = PAIR_ENCODINGS
    epochs: float = 3.0
    #: epochs for some tasks (the others: ``epochs``)
    task_epochs: dict[str, float] = field(default_factory=dict)
    batch_size: int = 32
    max_seq_len: int = 128
    #: training examples per task (a fixed seeded subset, the same for every model and seed); absent = all
    max_train_examples: dict[str, int] = field(default_factory=dict)
    #: the budgets to compare at (None: the family's)
    budgets: tuple[str, ...] | None = None
    #: whole-model distillation steps for the ``+kd`` rows (None: the family's ``distill_steps``; 0: none)
    distill_steps: int | None = None
    layerdrop: tuple[str, ...] = ("bottom", "spread")
    #: the baselines that compete: layer-dropped teachers, uniform models sliced from the trained supernet, and
    #: each member's magnitude-pruned twin (members of the teacher's own sub-layers)
    baselines: tuple[str, ...] = ("layerdrop", "uniform", "pruned")
    #: per budget, a former hand rule's choice to compare the searched member with (an architecture of the run's
    #: elastic space, calibrated as the export calibrates): rows of kind "rule"
    rule: dict[str, str] = field(default_factory=dict)
    #: more architectures of the run's (shrunk) space, spread over its predicted latency range and sliced from the
    #: trained supernet, for the proxies' rank correlation (rows of kind "sampled", with no budget)
    sampled: int = 0
    #: torch threads while fine-tuning and distilling (0 = torch's default)
    threads: int = 0

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError("report: name at least one task (--tasks)")
        if self.seeds < 1:
            raise ConfigError(f"report: --seeds must be at least 1, got {self.seeds}")
        if not self.lrs or any(not 0 < lr < 1 for lr in self.lrs):
            raise ConfigError(f"report: --lrs must be learning rates in (0, 1), got {list(self.lrs)}")
        if self.lr_select not in LR_SELECT:
            raise ConfigError(f"report: --lr-select must be one of {', '.join(LR_SELECT)}, got {self.lr_select!r}")
        if not self.pair_encodings or len(set(self.pair_encodings)) != len(self.pair_encodings) \
                or any(e not in PAIR_ENCODINGS for e in self.pair_encodings):
            raise ConfigError(f"report: --pair-encodings takes one or both of {', '.join(PAIR_ENCODINGS)}, once "
                              f"each; got {list(self.pair_encodings)}")
        if self.epochs <= 0 or self.batch_size < 1 or self.max_seq_len < 8:
            raise ConfigError("report: --epochs must be > 0, --batch-size >= 1 and --max-seq-len >= 8")
        unknown = [m for m in self.layerdrop if m not in LAYERDROP_MODES]
        if unknown:
            raise ConfigError(f"report: --layerdrop takes {', '.join(LAYERDROP_MODES)}, got {', '.join(unknown)}")
        if self.sampled < 0:
            raise ConfigError(f"report: --sampled must be >= 0, got {self.sampled}")
        for budget, arch in self.rule.items():
            if not arch or not budget:
                raise ConfigError(f"report: --rule takes BUDGET=ARCH, got {budget}={arch}")
        if any(b not in BASELINE_KINDS for b in self.baselines):
            raise ConfigError(f"report: --baselines takes {', '.join(BASELINE_KINDS)}, got "
                              f"{', '.join(self.baselines)}")
        if self.distill_steps is not None and self.distill_steps < 0:
            raise ConfigError(f"report: --distill-steps must be >= 0, got {self.distill_steps}")
        for task, n in self.task_epochs.items():
            if task not in self.tasks:
                raise ConfigError(f"report: --epochs names {task!r}, which is not in --tasks ({', '.join(self.tasks)})")
            if not n > 0:
                raise ConfigError(f"report: --epochs {task}={n} must be > 0")
        for task, n in self.max_train_examples.items():
            if task not in self.tasks:
                raise ConfigError(f"report: --max-train-examples names {task!r}, which is not in --tasks "
                                  f"({', '.join(self.tasks)})")
            if n < 1:
                raise ConfigError(f"report: --max-train-examples {task}={n} must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


# ------------------------------------------------------------------------------------------------ the run


@dataclass
class _Run:
    """What the report reads from a run directory."""

    path: Path
    rundir: Any  # nasbert.run.RunDir: the run's layout
    config: Any
    supernet: Any
    teacher: Any
    tokenizer: Any
    teacher_source: str
    family: Any
    family_dir: Path
    #: the latency profile of the run's configured device (RUN/latency/<device-key>/)
    profile: LatencyProfile
    device: dict

    @property
    def space(self):
        return self.supernet.space

    @functools.cached_property
    def teacher_supernet(self):
        """The supernet of the teacher in its own unit order (``reorder=False``): layer-dropped teachers' source."""
        from ..supernet import SuperNet

        return SuperNet.from_teacher(self.space, self.teacher, reorder=False).eval()

    @functools.cached_property
    def units_supernet(self):
        """The supernet of the teacher with its heads and neurons in weight-magnitude order (``reorder="units"``):
        magnitude-pruned twins' source."""
        from ..supernet import SuperNet

        return SuperNet.from_teacher(self.space.without_candidates(), self.teacher, reorder="units").eval()

    def calibrated(self, arch):
        """``arch`` of the teacher's own sub-layers, calibrated bottom-up as the run's export calibrates."""
        from ..search.calibrated import calibrated_model

        rows = self.config.export.calibrate_rows
        return calibrated_model(self.units_supernet, arch, self.teacher, self.corpus.train[:rows] if rows else None)[0]

    @functools.cached_property
    def corpus(self):
        """The run's tokenised training corpus (from the cache)."""
        from ..data import load_corpus
        from ..utils import cache_dir

        return load_corpus(self.config.corpus, self.tokenizer, cache_dir=cache_dir() / "corpus", show_progress=False)


def _load_run(run: Path, family_dir: Path | None) -> _Run:
    from ..export.family import FAMILY_FILE, Family
    from ..run import MANIFEST, RunDir
    from ..supernet import SuperNet
    from ..teacher import load_teacher

    if not (run / MANIFEST).is_file():
        raise ReportError(f"{run} is not a run directory (no manifest.json): pass the --out of a `nasbert run`")
    rundir = RunDir.load(run)
    family_dir = family_dir or rundir.family_dir
    if not (family_dir / FAMILY_FILE).is_file():
        raise ReportError(f"{family_dir} has no family.json: finish the run first (`nasbert run --out {run}`), or "
                          "pass --family")
    config = rundir.config
    family = Family.load(family_dir)
    supernet = SuperNet.from_pretrained(rundir.supernet_dir)
    teacher, tokenizer, source = load_teacher(config.teacher if config.teacher is not None
                                              else supernet.space.teacher.name)
    profile = rundir.profile(config.latency)
    device = profile.device if profile.complete else dict(family.device)
    return _Run(run, rundir, config, supernet, teacher, tokenizer, source, family, family_dir, profile, device)


def _measure(run: _Run, models: dict[str, Any], seed: int, budgets):
    """Every model and the teacher in one interleaved run; a model near a budget's limit is timed again, longer
    (the export's rule, ``export.edge_margin`` of the run). Returns the :class:`~nasbert.latency.models.Measured`."""
    from ..budgets import latency_limits
    from ..latency.models import measure_models

    d = run.device
    measured = measure_models(models, run.teacher, engine=d["engine"], device=d.get("device", "cpu"),
                              threads=d["threads"], batch=d["batch"], seq_len=d["seq_len"],
                              vocab_size=run.space.teacher.vocab_size, seed=seed,
                              limits=lambda t: latency_limits(budgets, t), edge_margin=run.config.export.edge_margin)
    for name in measured.retimed:
        logger.info("%s %s", name, measured.retiming(name))
    return measured


# ------------------------------------------------------------------------------------------------ models


def _settings(run: _Run, config: ReportConfig) -> dict:
    """What fixes the models of a report or baselines directory (a rerun must ask the same)."""
    return {"run": str(run.path.resolve()), "family": str(run.family_dir.resolve()),
            "budgets": [b.name for b in _budgets(run, config)], "distill_steps": _distill_steps(run, config),
            "layerdrop": list(config.layerdrop), "sampled": config.sampled}


def sampled_archs(run: _Run, n: int) -> list:
    """``n`` architectures of the run's shrunk space spread evenly over its predicted latency range (the latency
    profile's predictor), drawn with the run's seed."""
    from ..latency.profile import sample_archs
    from ..space import SearchSpace

    if n == 0:
        return []
    space = SearchSpace.load(run.rundir.space_file)
    pool = sample_archs(space, 20 * n, np.random.default_rng(run.config.seed + 4242))
    if not run.profile.complete:
        raise ReportError(f"--sampled needs the run's latency profile ({run.profile.path}): run `nasbert latency --run "
                          f"{run.path}`")
    predicted = run.profile.predictor.predict_many(pool)
    order = np.argsort(predicted)
    picks = sorted({int(order[round(i * (len(pool) - 1) / max(1, n - 1))]) for i in range(n)})
    return [pool[i] for i in picks]


def _distill_steps(run: _Run, config: ReportConfig) -> int:
    family_steps = max((m.distill_steps for m in run.family.models), default=0)
    if config.distill_steps is None:
        return family_steps
    if family_steps and config.distill_steps != family_steps:
        raise ReportError(f"the family's members were distilled for {family_steps} steps after the search; the "
                          f"baselines get the same budget, so --distill-steps must be {family_steps} (or left out)")
    return config.distill_steps


def _budgets(run: _Run, config: ReportConfig):
    from ..search import parse_budgets

    names = config.budgets or tuple(dict.fromkeys(m.budget for m in run.family.models))
    budgets = parse_budgets(list(names))
    missing = [b.name for b in budgets if not any(m.budget == b.name for m in run.family.models)]
    if missing:
        raise ReportError(f"the family has no member for budget {', '.join(missing)} (its budgets: "
                          f"{', '.join(sorted({m.budget for m in run.family.models}))})")
    return budgets


def prepare_models(run: _Run, out: Path, config: ReportConfig, *, progress: bool = True) -> dict:
    """Choose the baselines, write every model of the report to ``OUT/models/``, time them all with the teacher.
    Returns (and writes) ``models.json``. Each model directory is written atomically and kept on a rerun."""
    from ..export.hf import write_hf_files
    from ..modeling import NasBertModel
    from ..training.distill import distill_arch

    models_file = out / "models.json"
    if models_file.is_file():
        return json.loads(models_file.read_text())
    space, seed = run.space, run.config.seed
    budgets = _budgets(run, config)
    distill_steps = _distill_steps(run, config)
    family_distilled = any(m.distill_steps for m in run.family.models)
    teacher_supernet = run.teacher_supernet

    # 1. Every candidate, timed once with the family and the teacher: the baselines each budget allows.
    candidates = [*(layerdrop_baselines(space, config.layerdrop) if "layerdrop" in config.baselines else []),
                  *(uniform_baselines(space) if "uniform" in config.baselines else [])]
    cand_file = out / "candidates.json"
    if cand_file.is_file():
        timed = json.loads(cand_file.read_text())
    else:
        logger.info("timing %d baseline candidates with the teacher", len(candidates))
        raw = {b.name: build_raw(b, teacher_supernet=teacher_supernet, trained_supernet=run.supernet)
               for b in candidates}
        m = _measure(run, raw, seed, budgets)
        latency, teacher_ms = m.latency_ms, m.teacher_latency_ms
        timed = {"teacher_latency_ms": teacher_ms,
                 "candidates": [{**b.to_dict(), "params": baseline_params(b, space), "latency_ms": latency[b.name],
                                 "speedup": teacher_ms / latency[b.name], **m.first_speedup(b.name)}
                                for b in candidates]}
        atomic_write_json(cand_file, timed)
    latency = {c["name"]: c["latency_ms"] for c in timed["candidates"]}
    chosen = choose_baselines(candidates, latency, timed["teacher_latency_ms"], budgets, space)

    # 2. The rows: the teacher, then per budget the searched member and the chosen baselines (raw, +kd).
    rows: list[dict] = [{"budget": None, "kind": "teacher", "name": TEACHER, "arch": str(space.teacher_arch()),
                         "distill_steps": 0}]
    builders: dict[str, Any] = {
        TEACHER: lambda: teacher_supernet.extract(space.teacher_arch(), drop_identity_adapters=True)}

    def distilled(supernet, arch: Arch, *, freeze: bool):
        distill = dataclasses.replace(run.config.export.distill, steps=distill_steps, threads=config.threads)
        return distill_arch(supernet, arch, run.teacher, run.corpus, run.tokenizer, config=distill, seed=seed,
                            progress=progress, freeze_adapters=freeze).model

    for budget in budgets:
        member = next(m for m in run.family.models if m.budget == budget.name)
        arch = Arch.from_dict(member.arch)
        name = member.name
        builders.setdefault(name, lambda d=run.family.member_dir(member): NasBertModel.from_pretrained(d))
        rows.append({"budget": budget.name, "kind": "searched", "name": name, "arch": str(arch),
                     "distill_steps": member.distill_steps})
        if distill_steps and not family_distilled:  # the member gets the +kd rows' distillation too
            kd = f"{name}+kd{distill_steps}"
            builders.setdefault(kd, lambda a=arch: distilled(run.supernet, a, freeze=False))
            rows.append({"budget": budget.name, "kind": "searched", "name": kd, "arch": str(arch),
                         "distill_steps": distill_steps})
        if budget.name in config.rule:
            rule = Arch.parse(config.rule[budget.name])
            space.validate(rule)
            # the member itself where the search chose the rule's architecture: one model, fine-tuned once
            same = str(rule) == str(arch) and member.source == "teacher" and not member.distill_steps
            rule_name = name if same else f"rule-{budget.name}"
            builders.setdefault(rule_name, lambda a=rule: run.calibrated(a))
            rows.append({"budget": budget.name, "kind": "rule", "name": rule_name, "arch": str(rule),
                         "distill_steps": 0})
        if "pruned" in config.baselines and member.source == "teacher" and space.elastic:
            twin = f"pruned-{name}"  # same shape, heads and neurons by weight magnitude, no calibration
            builders.setdefault(twin, lambda a=arch: run.units_supernet.extract(a, drop_identity_adapters=True))
            rows.append({"budget": budget.name, "kind": "pruned", "name": twin, "arch": str(arch),
                         "distill_steps": 0})
        for kind in KINDS:
            b: Baseline | None = chosen[budget.name].get(kind)
            if b is None:
                continue
            builders.setdefault(b.name, lambda b=b: build_raw(b, teacher_supernet=teacher_supernet,
                                                              trained_supernet=run.supernet))
            rows.append({"budget": budget.name, "kind": kind, "name": b.name, "arch": str(b.arch),
                         "distill_steps": 0})
            if distill_steps:
                kd = f"{b.name}+kd{distill_steps}"
                source = teacher_supernet if kind == "layerdrop" else run.supernet
                builders.setdefault(kd, lambda b=b, s=source: distilled(s, b.arch, freeze=b.kind == "layerdrop"))
                rows.append({"budget": budget.name, "kind": kind, "name": kd, "arch": str(b.arch),
                             "distill_steps": distill_steps})

    for i, arch in enumerate(sampled_archs(run, config.sampled)):
        name = f"sampled{i:02d}"
        builders.setdefault(name, lambda a=arch: run.supernet.extract(a))
        rows.append({"budget": None, "kind": "sampled", "name": name, "arch": str(arch), "distill_steps": 0})

    # 3. Write every model once (atomically: an existing directory is a finished one).
    for name, build in tqdm(builders.items(), desc="report models", unit="model", disable=not progress):
        directory = out / "models" / name
        if not (directory / "config.json").is_file():
            model = build()
            with atomic_dir(directory) as tmp:
                write_hf_files(model, tmp, tokenizer=run.tokenizer)

    # 4. The reported latency: every row's model and the teacher, in one interleaved run.
    loaded = {name: NasBertModel.from_pretrained(out / "models" / name).eval() for name in builders}
    m = _measure(run, loaded, seed + 1, budgets)
    latency, teacher_ms = m.latency_ms, m.teacher_latency_ms
    for row in rows:
        model = loaded[row["name"]]
        row.update(path=f"models/{row['name']}", params=sum(p.numel() for p in model.parameters()),
                   latency_ms=latency[row["name"]], speedup=teacher_ms / latency[row["name"]],
                   **m.first_speedup(row["name"]))
    assert all(row["kind"] in ROW_KINDS for row in rows), rows
    result = {"teacher_latency_ms": teacher_ms, "device": run.device, "rows": rows,
              "serves_tolerance": SERVES_TOLERANCE,
              "baselines": {b: {k: v.name for k, v in per.items()} for b, per in chosen.items()}}
    atomic_write_json(models_file, result)
    return result


# ------------------------------------------------------------------------------------------------ proxies


def _real_tokens(model, batch: dict, target):
    """The model's final states and the teacher's ``target`` at the batch's real tokens."""
    keep = batch["attention_mask"].bool()
    return model(**batch).last_hidden_state[keep], target[keep]


def proxy_scores(run: _Run, out: Path, models: dict) -> dict[str, dict]:
    """What could predict a row's fine-tuned score without fine-tuning, per model (``OUT/proxies.json``):

    * ``valid_loss``: the whole model's MSE to the teacher's final hidden states over the real tokens of the
      export's validation batches (MLM-masked rows of the run's corpus): what the export ranks on;
    * ``block_proxy``: the search's proxy, the sum over blocks of each block's MSE to the teacher's state at its
      end when it reads the teacher's state at its start, on the same batches; for models whose weights are a
      supernet path (searched and uniform models before ``+kd``; layer-dropped teachers on the unreordered
      teacher supernet), else null;
    * ``cosine``: the export's ranking: the mean per-token cosine similarity of the final states to the
      teacher's on the first validation sequences as they are (no masking; blind to scale, so a layer-dropped
      teacher whose states are good but not the last layer's is not punished the way MSE punishes it);
    * ``params`` and ``flops`` (at the latency profile's sequence length).
    """
    import torch

    from ..training.evaluation import plain_batches, validation_batches
    from ..modeling import NasBertModel
    from ..training.blockwise import block_batches, score_paths

    path = out / "proxies.json"
    if path.is_file():
        return json.loads(path.read_text())
    space, cfg = run.space, run.config
    batches = validation_batches(run.corpus.valid, run.tokenizer, batch_size=cfg.train.batch_size,
                                 n_batches=cfg.export.eval_batches, seed=cfg.seed)
    plain = plain_batches(run.corpus.valid, batch_size=cfg.train.batch_size, n_batches=cfg.export.eval_batches)
    with torch.no_grad():
        targets = [run.teacher(**b).last_hidden_state for b in batches]
        plain_targets = [run.teacher(**b).last_hidden_state for b in plain]
        per_block = [block_batches(run.teacher, space, b["input_ids"], b["attention_mask"], b["token_type_ids"])
                     for b in batches]
    result: dict[str, dict] = {}
    for row in models["rows"]:
        name = row["name"]
        if name in result:
            continue
        arch = Arch.parse(row["arch"])
        model = NasBertModel.from_pretrained(out / row["path"]).eval()
        with torch.no_grad():
            losses = [float(torch.nn.functional.mse_loss(*_real_tokens(model, b, target)))
                      for b, target in zip(batches, targets)]
            cosines = [float(torch.nn.functional.cosine_similarity(*_real_tokens(model, b, target), dim=-1).mean())
                       for b, target in zip(plain, plain_targets)]
        # distilled weights are no longer a supernet path: no block-wise proxy for them
        # nor for models of the teacher's own sub-layers chosen by heads and neurons (an elastic space's members
        # and their twins): their weights are not the block-wise trained supernet's
        teachers_own = space.elastic and row["kind"] in ("searched", "pruned", "rule")
        supernet = None if row["distill_steps"] or teachers_own else \
            run.supernet if row["kind"] in ("searched", "uniform", "sampled") else run.teacher_supernet
        block_proxy = None
        if supernet is not None:
            block_proxy = sum(score_paths(supernet, n, [block], [pb[n] for pb in per_block])[0]
                              for n, block in enumerate(arch.blocks))
        result[name] = {"valid_loss": float(np.mean(losses)), "block_proxy": block_proxy,
                        "cosine": float(np.mean(cosines)), "params": row["params"],
                        "flops": space.flops(arch, run.device["seq_len"])}
    atomic_write_json(path, result)
    return result


def proxy_correlation(rows: list[dict], proxies: dict[str, dict]) -> dict:
    """Kendall's tau between each proxy's predicted order and the panel score, over every distinct model of the
    rows and within each budget. Losses count as "lower is better" (negated), params and FLOPs as "more is
    better", so a useful proxy has a positive tau."""
    from ..latency import kendall_tau

    signs = {"valid_loss": -1.0, "block_proxy": -1.0, "cosine": 1.0, "params": 1.0, "flops": 1.0}

    def taus(group: list[dict]) -> dict:
        out: dict[str, Any] = {"n": len(group)}
        for key, sign in signs.items():
            pairs = [(sign * proxies[r["name"]][key], r["panel_mean"]) for r in group
                     if proxies.get(r["name"], {}).get(key) is not None]
            out[key] = kendall_tau(*zip(*pairs)) if len(pairs) >= 3 else None
            out[f"n_{key}"] = len(pairs)
        return out

    distinct = list({r["name"]: r for r in rows}.values())
    budgets = list(dict.fromkeys(r["budget"] for r in rows if r["budget"] is not None))
    return {"all": taus(distinct), "by_budget": {b: taus([r for r in rows if r["budget"] == b]) for b in budgets}}


# ------------------------------------------------------------------------------------------------ fine-tuning


def _job_dir(out: Path, model: str, task: str, point: str, seed: int) -> Path:
    """A fine-tuning run's directory; ``point`` is the grid point's name (``finetune.trainer.grid_point``)."""
    return out / "ft" / model / task / f"lr{point}-seed{seed}"


def _encodings(task, config: ReportConfig) -> tuple[str, ...]:
    return config.pair_encodings if len(task.task.text_fields) == 2 else ("cross",)


def run_score(job: Path, task) -> float | None:
    """The main dev metric x 100 of the finished fine-tuning run in ``job`` (None while it is not finished)."""
    metrics = job / "metrics.json"
    if not metrics.is_file():
        return None
    return 100.0 * float(json.loads(metrics.read_text())["dev"][task.main_metric])


def _finetune_all(out: Path, models: list[str], tasks: dict[str, Any], config: ReportConfig, *,
                  progress: bool, on_task_done=None) -> dict[str, dict[str, dict]]:
    """Fine-tune every model on every task, task by task; returns ``{model: {task: {"lr": chosen, "pair_encoding":
    chosen, "scores": [per seed], "grid": {point: [per seed]}}}}`` (a point is a rate, with ``-bi`` for a pair
    task read each text apart). ``on_task_done(scores, tasks_done)`` is called after each task."""
    from ..finetune import FinetuneConfig, finetune
    from ..finetune.trainer import grid_point

    seeds = list(range(config.seeds))
    grid_seeds = seeds if config.lr_select == "all" else seeds[:1]
    total = len(models) * sum(len(config.lrs) * len(_encodings(t, config)) * len(grid_seeds) + len(seeds)
                              - len(grid_seeds) for t in tasks.values())
    bar = tqdm(total=total, desc="report fine-tuning", unit="run", disable=not progress)
    started = time.perf_counter()

    def run_one(model: str, task: str, lr: float, encoding: str, seed: int) -> float:
        job = _job_dir(out, model, task, grid_point(lr, encoding), seed)
        score = run_score(job, tasks[task].task)
        if score is None:
            # one evaluation, after the last step: the report's score is the final one
            ft = FinetuneConfig(epochs=config.task_epochs.get(task, config.epochs), batch_size=config.batch_size,
                                lr=lr, max_seq_len=config.max_seq_len, seed=seed, pooling="mean",
                                threads=config.threads, max_train_examples=config.max_train_examples.get(task),
                                pair_encoding=encoding, evals_per_epoch=0)
            finetune(out / "models" / model, tasks[task], out=job, config=ft, onnx=False, progress=False)
            score = run_score(job, tasks[task].task)
        bar.update(1)
        bar.set_postfix_str(f"{model} {task} lr {grid_point(lr, encoding)} seed {seed}: {score:.1f}")
        return score

    results: dict[str, dict[str, dict]] = {}
    try:
        for done, task in enumerate(tasks, start=1):
            points = [(lr, e) for e in _encodings(tasks[task], config) for lr in config.lrs]
            for model in models:
                grid = {p: [run_one(model, task, *p, s) for s in grid_seeds] for p in points}
                # ties: cross before bi, the smaller rate
                lr, encoding = max(points, key=lambda p: (float(np.mean(grid[p])), -PAIR_ENCODINGS.index(p[1]),
                                                          -p[0]))
                scores = [grid[lr, encoding][i] if i < len(grid_seeds) else run_one(model, task, lr, encoding, s)
                          for i, s in enumerate(seeds)]
                results.setdefault(model, {})[task] = {"lr": lr, "pair_encoding": encoding, "scores": scores,
                                                       "grid": {grid_point(*p): v for p, v in grid.items()}}
                if len(config.lrs) > 1 and lr == max(config.lrs):
                    logger.warning("%s on %s: the best rate is the grid's largest (%g); a larger one may be better: "
                                   "add it to --lrs (runs already made are kept)", model, task, lr)
            if on_task_done is not None:
                on_task_done(results, list(tasks)[:done])
    finally:
        bar.close()
    logger.info("fine-tuning: %d runs checked in %.0f s", total, time.perf_counter() - started)
    return results


# ------------------------------------------------------------------------------------------------ summary


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values))


def _spread(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarize(models: dict, scores: dict[str, dict[str, dict]], tasks: Sequence[str], config: ReportConfig,
              proxies: dict[str, dict] | None = None) -> dict:
    """The results in the shape of ``bench/quality_results.json``: the teacher's per-seed scores, and one row per
    (budget, model) with its measured speed-up, per-seed scores, chosen learning rates and % of the teacher."""
    teacher = {t: scores[TEACHER][t]["scores"] for t in tasks}
    teacher_panel = _mean([_mean(teacher[t]) for t in tasks])
    rows = []
    for row in models["rows"]:
        if row["kind"] == "teacher":
            continue
        s = {t: scores[row["name"]][t]["scores"] for t in tasks}
        per_seed_panel = [_mean([s[t][i] for t in tasks]) for i in range(config.seeds)]
        rows.append({
            "budget": row["budget"], "kind": row["kind"], "name": row["name"], "arch": row["arch"],
            "distill_steps": row["distill_steps"], "params": row["params"], "latency_ms": row["latency_ms"],
            "speedup": row["speedup"], "scores": s, "lr": {t: scores[row["name"]][t]["lr"] for t in tasks},
            "pair_encoding": {t: scores[row["name"]][t].get("pair_encoding", "cross") for t in tasks},
            "panel_mean": _mean(per_seed_panel), "panel_spread": _spread(per_seed_panel),
            "pct_of_teacher": {t: 100.0 * _mean(s[t]) / _mean(teacher[t]) if _mean(teacher[t]) else None
                               for t in tasks},
            "panel_pct_of_teacher": 100.0 * _mean(per_seed_panel) / teacher_panel if teacher_panel else None,
        })
    teacher_row = next(r for r in models["rows"] if r["kind"] == "teacher")
    per_seed_teacher = [_mean([teacher[t][i] for t in tasks]) for i in range(config.seeds)]
    for row in rows:
        row["proxies"] = (proxies or {}).get(row["name"])
    return {"teacher": teacher, "teacher_lr": {t: scores[TEACHER][t]["lr"] for t in tasks}, "leads": leads(rows),
            "teacher_pair_encoding": {t: scores[TEACHER][t].get("pair_encoding", "cross") for t in tasks},
            "proxy_correlation": proxy_correlation(rows, proxies) if proxies else None,
            "teacher_panel_mean": teacher_panel, "teacher_panel_spread": _spread(per_seed_teacher),
            "teacher_latency_ms": models["teacher_latency_ms"], "teacher_params": teacher_row["params"],
            "tasks": list(tasks), "device": models["device"], "config": config.to_dict(), "rows": rows}


FREE_KINDS = ("layerdrop", "pruned", "uniform")


def leads(rows: list[dict]) -> list[dict]:
    """Per searched row: its panel mean against the best free baseline of its budget (a layer-dropped teacher, the
    member's magnitude-pruned twin or a uniform model, each chosen to serve the budget) and against the rule's
    member, with the larger of the two seed spreads compared."""
    out = []
    for member in (r for r in rows if r["kind"] == "searched"):
        same = [r for r in rows if r["budget"] == member["budget"] and r["distill_steps"] == member["distill_steps"]]
        free = max((r for r in same if r["kind"] in FREE_KINDS), key=lambda r: r["panel_mean"], default=None)
        rule = next((r for r in same if r["kind"] == "rule"), None)
        entry = {"budget": member["budget"], "name": member["name"], "panel_mean": member["panel_mean"],
                 "panel_spread": member["panel_spread"]}
        for key, other in (("free", free), ("rule", rule)):
            entry[key] = None if other is None else {
                "name": other["name"], "kind": other["kind"], "panel_mean": other["panel_mean"],
                "panel_spread": other["panel_spread"], "lead": member["panel_mean"] - other["panel_mean"],
                "spread": max(member["panel_spread"], other["panel_spread"])}
        out.append(entry)
    return out


def _fmt(values: Sequence[float]) -> str:
    return f"{_mean(values):.1f} ± {_spread(values):.1f}"


def _points(lrs: dict, encodings: dict | None, tasks) -> str:
    """The chosen grid point per task: ``2e-4`` or ``2e-4 bi``."""
    return ", ".join(f"{lrs[k]:g}" + ("" if (encodings or {}).get(k, "cross") == "cross" else f" {encodings[k]}")
                     for k in tasks)


def markdown_table(results: dict) -> str:
    tasks = results["tasks"]
    head = ["budget", "kind", "model", "layers", "params", "ms", "speed-up", *tasks, "panel", "% teacher", "lr"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    t = results["teacher"]
    lines.append("| - | teacher | teacher | all | " + f"{results['teacher_params'] / 1e6:.1f} M | "
                 f"{results['teacher_latency_ms']:.2f} | 1.00x | " + " | ".join(_fmt(t[k]) for k in tasks)
                 + f" | {results['teacher_panel_mean']:.1f} ± {results['teacher_panel_spread']:.1f} | 100 | "
                 + _points(results["teacher_lr"], results.get("teacher_pair_encoding"), tasks) + " |")
    for r in results["rows"]:
        layers = Arch.parse(r["arch"]).layers_text() if r.get("arch") else "-"
        lines.append(f"| {r['budget'] or '-'} | {r['kind']} | {r['name']} | {layers} | {r['params'] / 1e6:.1f} M | "
                     f"{r['latency_ms']:.2f} | {r['speedup']:.2f}x | " + " | ".join(_fmt(r["scores"][k]) for k in tasks)
                     + f" | {r['panel_mean']:.1f} ± {r['panel_spread']:.1f} | {r['panel_pct_of_teacher']:.1f} | "
                     + _points(r["lr"], r.get("pair_encoding"), tasks) + " |")
    if results.get("leads"):
        lines += ["", "Each searched member against the best free baseline of its budget and the rule's member (panel "
                  "points; spread: the larger seed std of the two):", "",
                  "| budget | member | panel | best free baseline | its panel | lead (spread) | rule | lead (spread) |",
                  "|---|---|---|---|---|---|---|---|"]

        def versus(other, member: str, *, named: bool) -> str:
            """The cells of one comparison: [its name (kind)], its panel, the lead (spread)."""
            cells = [] if other is None else [f"{other['panel_mean']:.2f}",
                                              f"{other['lead']:+.2f} ({other['spread']:.2f})"]
            if other is not None and other["name"] == member:
                cells = ["the member", "same model"]
            if named and other is not None:
                cells.insert(0, f"{other['name']} ({other['kind']})")
            return " | ".join(cells or ["-"] * (3 if named else 2))

        for lead in results["leads"]:
            lines.append(f"| {lead['budget']} | {lead['name']} | {lead['panel_mean']:.2f} | "
                         f"{versus(lead['free'], lead['name'], named=True)} | "
                         f"{versus(lead['rule'], lead['name'], named=False)} |")
    corr = results.get("proxy_correlation")
    if corr:
        lines += ["", "Kendall tau between each proxy and the panel score (a useful proxy is positive; losses "
                  "count lower = better):", "",
                  "| models | n | whole-model loss | block-wise proxy (n) | cosine | params | FLOPs |",
                  "|---|---|---|---|---|---|---|"]

        def cell(value):
            return "-" if value is None else f"{value:+.2f}"

        for label, t in [("all", corr["all"]), *((f"budget {b}", t) for b, t in corr["by_budget"].items())]:
            lines.append(f"| {label} | {t['n']} | {cell(t['valid_loss'])} | {cell(t['block_proxy'])} "
                         f"({t['n_block_proxy']}) | {cell(t.get('cosine'))} | {cell(t['params'])} | "
                         f"{cell(t['flops'])} |")
    c = results["config"]
    note = (f"\nScores: main dev metric x 100 (accuracy; CoLA: Matthews correlation), mean ± std over {c['seeds']} "
            f"seeds at the learning rate of the grid {c['lrs']} with the best mean ({c['lr_select']}); on pair "
            f"tasks the grid also spans the pair encodings {c.get('pair_encodings', ['cross'])} (bi: each text "
            f"encoded apart); panel = mean over {', '.join(tasks)}. Latency: {results['device'].get('key', '')}, "
            "measured in one run with the teacher.\n")
    top = max(c["lrs"])
    edge = [f"{r['name']} ({', '.join(k for k in tasks if r['lr'][k] == top)})"
            for r in [{"name": "teacher", "lr": results["teacher_lr"]}, *results["rows"]]
            if any(r["lr"][k] == top for k in tasks)]
    if len(c["lrs"]) > 1 and edge:
        note += (f"\nThe grid's largest rate ({top:g}) was the best for {'; '.join(dict.fromkeys(edge))}: a larger "
                 "rate may be better for them; add one to --lrs and run the report again (runs already made are "
                 "kept).\n")
    return "\n".join(lines) + "\n" + note


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    #: every row kind but the teacher (a black star)
    markers = {"searched": ("o", "tab:red"), "rule": ("D", "tab:orange"), "layerdrop": ("s", "tab:blue"),
               "pruned": ("v", "tab:purple"), "uniform": ("^", "tab:green"), "sampled": ("x", "tab:gray")}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.errorbar([results["teacher_latency_ms"]], [results["teacher_panel_mean"]],
                yerr=[results["teacher_panel_spread"]], fmt="*", color="black", markersize=12, label="teacher")
    seen = {}
    for r in {r["name"]: r for r in results["rows"]}.values():
        marker, color = markers[r["kind"]]
        hollow = r["distill_steps"] == 0 and r["kind"] in FREE_KINDS
        label = r["kind"] if r["kind"] not in seen else None
        seen[r["kind"]] = True
        ax.errorbar([r["latency_ms"]], [r["panel_mean"]], yerr=[r["panel_spread"]], fmt=marker, color=color,
                    mfc="white" if hollow else color, label=label)
        ax.annotate(r["name"], (r["latency_ms"], r["panel_mean"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel(f"measured latency (ms), {results['device'].get('key', '')}")
    ax.set_ylabel(f"panel score ({', '.join(results['tasks'])}; mean over seeds)")
    ax.set_title("fine-tuned score against measured latency (hollow: no distillation)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------ the command


def _check_settings(out: Path, settings: dict, force: bool) -> None:
    path = out / "report.json"
    if force and out.exists():
        shutil.rmtree(out)
    if path.is_file():
        old = json.loads(path.read_text())
        # a report started before a setting existed had that setting's default
        old = {"sampled": 0, **old, "config": {**ReportConfig().to_dict(), **old.get("config", {})}}
        if old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ReportError(f"{out} holds a report made with other settings ({', '.join(changed)} differ): pass "
                              "another --out, the same settings, or --force to start over")
    elif out.exists() and any(out.iterdir()):
        raise ReportError(f"{out} exists and is not a report directory: pass another --out, or --force")
    atomic_write_json(path, settings)


def build_baselines(run: str | Path, *, out: str | Path | None = None, config: ReportConfig = ReportConfig(),
                    family: str | Path | None = None, force: bool = False, progress: bool = True) -> dict:
    """Write and time the models of ``run``'s report without fine-tuning them (``nasbert baselines``; default
    ``RUN/baselines``); returns :func:`prepare_models`' ``models.json``."""
    run_path = Path(run)
    out = Path(out) if out is not None else run_path / "baselines"
    ctx = _load_run(run_path, Path(family) if family is not None else None)
    _check_settings(out, _settings(ctx, config), force)
    return prepare_models(ctx, out, config, progress=progress)


def build_report(run: str | Path, *, out: str | Path | None = None, config: ReportConfig = ReportConfig(),
                 family: str | Path | None = None, force: bool = False, progress: bool = True) -> dict:
    """Make (or finish) the quality report of ``run``; returns :func:`summarize`'s results."""
    from ..finetune import load_task

    run_path = Path(run)
    out = Path(out) if out is not None else run_path / "report"
    ctx = _load_run(run_path, Path(family) if family is not None else None)
    settings = {"config": config.to_dict(), **_settings(ctx, config)}
    tasks = {t: load_task(t, data_dir=config.data_dir, max_train_examples=config.max_train_examples.get(t))
             for t in config.tasks}  # before anything is written: a bad task or data dir fails first
    names = {t: data.task.name for t, data in tasks.items()}
    if len(set(names.values())) != len(names):
        raise ReportError(f"--tasks names a task twice: {', '.join(config.tasks)}")
    _check_settings(out, settings, force)
    models = prepare_models(ctx, out, config, progress=progress)
    proxies = proxy_scores(ctx, out, models)
    names_in_order = list(dict.fromkeys(r["name"] for r in models["rows"]))

    def write(scores: dict, done: list[str]) -> dict:
        """The summary of the tasks finished so far (the whole panel at the end)."""
        results = summarize(models, scores, done, config, proxies)
        results["complete"] = len(done) == len(tasks)
        atomic_write_json(out / "quality_results.json", results)
        atomic_write_text(out / "quality.md", markdown_table(results))
        plot(results, out / "quality.png")
        return results

    scores = _finetune_all(out, names_in_order, tasks, config, progress=progress, on_task_done=write)
    return write(scores, list(tasks))


def parse_per_task(values: Sequence[str] | None, tasks: Sequence[str], *, option: str, cast=int) -> dict:
    """``["20000"]`` (every task) or ``["sst2=20000", "cola=4000"]`` -> ``{task: n}`` (``n`` read by ``cast``)."""
    out: dict = {}
    for value in values or []:
        task, _, n = value.rpartition("=")
        try:
            count = cast(n)
        except ValueError:
            raise ConfigError(f"{option} takes N or TASK=N, got {value!r}") from None
        for t in ([task] if task else tasks):
            out[t] = count
    return out


def parse_max_train(values: Sequence[str] | None, tasks: Sequence[str]) -> dict[str, int]:
    """``--max-train-examples``: :func:`parse_per_task` of integers."""
    return parse_per_task(values, tasks, option="--max-train-examples")
