"""The stages of a run, each reading and writing the run directory and resumable.

``supernet``: build the supernet from the teacher and check it reproduces the teacher.
``latency``:  profile this machine: lookup table, whole measured models, predictor, accuracy
              (RUN/latency/<device-key>/).
``train``:    block-wise distillation with progressive shrinking (paths binned by the latency table when the
              run has a profile); writes the trained supernet and the surviving paths (RUN/space.yaml,
              RUN/train/candidates.json).
``search``:   Optuna (in this process or on Ray workers) over the shrunk space under the budgets (RUN/search/).
``export``:   per budget, the top candidates re-evaluated whole and timed; the best exported (RUN/family/),
              after whole-model distillation on the training corpus when ``export.distill.steps > 0``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..data import load_corpus
from ..io import atomic_write_text
from ..latency.profile import LatencyProfile
from ..redact import redact_url
from .rundir import STAGES, RunConfig, RunDir
from ..space import SearchSpace, TeacherSpec
from ..supernet import SuperNet
from ..supernet.parity import check_teacher_parity, teacher_parity
from ..teacher import load_teacher, teacher_config
from ..utils import cache_dir

__all__ = ["calibrated_objective", "run_stage", "space_for", "stage_export", "stage_latency", "stage_search",
           "stage_supernet", "stage_train", "supernet_is_read", "teacher_parity"]

logger = logging.getLogger(__name__)


def _teacher_for(config: RunConfig, space: SearchSpace):
    return load_teacher(config.teacher if config.teacher is not None else space.teacher.name)


def space_for(config: RunConfig) -> SearchSpace:
    """The run's search space: a shipped name or YAML path, or ``elastic``: the elastic teacher space built from
    the teacher's own config (:meth:`SearchSpace.elastic_for`), for any BERT-like teacher."""
    if config.space != "elastic":
        return SearchSpace.load(config.space)
    c, source = teacher_config(config.teacher)  # the config alone: the weights are loaded where they are used
    spec = TeacherSpec(hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
                       num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
                       vocab_size=c.vocab_size, max_position_embeddings=c.max_position_embeddings,
                       type_vocab_size=c.type_vocab_size, name=config.teacher)
    return SearchSpace.elastic_for(spec, name="elastic", description=f"elastic teacher space of {source}")


def stage_supernet(run: RunDir, config: RunConfig, *, force: bool = False) -> SearchSpace | None:
    """Build the supernet from the teacher, check that it reproduces the teacher, and save it with the space;
    returns the space (None when the stage was already done)."""
    if run.stage_done("supernet") and not force:
        logger.info("stage supernet: already done (%s); --force to redo", run.supernet_dir)
        return None
    start = time.perf_counter()
    space = space_for(config)
    teacher, tokenizer, source = _teacher_for(config, space)
    logger.info("building the supernet from teacher %s", source)
    supernet = SuperNet.from_teacher(space, teacher).eval()
    error = check_teacher_parity(supernet, teacher, tokenizer)  # raises above PARITY_ATOL (1e-4)
    logger.info("supernet under the teacher's architecture vs the teacher: max |diff| = %.2e", error)
    supernet.save_pretrained(run.supernet_dir, tokenizer=tokenizer)
    atomic_write_text(run.space_file, space.to_yaml())
    n_params = sum(p.numel() for p in supernet.parameters())
    run.mark("supernet", "done", teacher=source, teacher_parity_max_abs_diff=error, supernet_params=n_params,
             seconds=round(time.perf_counter() - start, 1))
    logger.info("stage supernet: done in %.1f s, %s parameters, saved to %s",
                time.perf_counter() - start, f"{n_params:,}", run.supernet_dir)
    return space


def supernet_is_read(config: RunConfig, space: SearchSpace) -> bool:
    """Whether the search or the export reads the trained supernet: always in a path space (NAS-BERT's,
    MobileBERT's), whose candidates are the supernet's paths; in an elastic space only with ``export.weights``
    "supernet" or "both", since its search calibrates the teacher's own sub-layers and ranks them on every path."""
    return not space.elastic or config.export.weights != "teacher"


def stage_train(run: RunDir, config: RunConfig, *, force: bool = False, show_progress: bool = True,
                ray_address: str | None = None, skip_unread: bool = False) -> dict | None:
    """Train the supernet block-wise; resumes from RUN/train/checkpoint after an interruption. With
    ``train.workers`` > 1, data-parallel on Ray Train (``ray_address``, or a local Ray instance); otherwise in this
    process, or with one Ray actor per block (``ray_address`` / ``ray.enabled``). With ``skip_unread`` (``nasbert
    run`` through to the export), a supernet that no later stage reads (:func:`supernet_is_read`) is not trained:
    the stage is marked "skipped" with the reason."""
    import shutil

    if run.stage_done("train") and not force:
        logger.info("stage train: already done (%s); --force to redo", run.train_dir)
        return None
    if skip_unread and not supernet_is_read(config, SearchSpace.load(run.space_file)):
        reason = ("export.weights is teacher: the elastic space's candidates are the teacher's own sub-layers, "
                  "calibrated, and nothing after this stage reads the trained supernet; set export.weights: both "
                  "to train it and let each candidate compete in both versions (or run nasbert train)")
        logger.info("stage train: skipped (%s)", reason)
        run.mark("train", "skipped", reason=reason)
        return None
    if force and run.train_dir.exists():
        shutil.rmtree(run.train_dir)
    use_ray = config.ray.enabled or ray_address is not None  # "local" starts a local Ray instance
    address = config.ray.address if ray_address in (None, "local") else ray_address
    if config.train.workers > 1:
        from .ray_train import train_data_parallel

        run.mark("train", "running", workers=config.train.workers)
        result = train_data_parallel(run, config, address=address, num_cpus=config.ray.num_cpus,
                                     show_progress=show_progress)
        use_ray = True
    else:
        inputs = train_inputs(run, config, show_progress=show_progress)
        runner = None
        if use_ray:
            from ..training.ray_blocks import RayBlockRunner

            runner = RayBlockRunner(inputs.supernet, config.train, address=address,
                                    num_cpus=config.ray.num_cpus, seed=config.seed)
        run.mark("train", "running", teacher=inputs.source)
        try:
            trainer = inputs.trainer(run, config, show_progress=show_progress, block_runner=runner)
            result = {**trainer.train(), "binning": inputs.binning}
        finally:
            if runner is not None:
                runner.shutdown()
        finish_train(run, inputs, trainer)
    run.mark("train", "done", ray=use_ray, corpus=config.corpus.describe(), **result)
    logger.info("stage train: done in %.0f s; validation loss %.4f; surviving paths per block %s",
                result["seconds"], result["valid_loss"], result["surviving_paths"])
    return result


@dataclass
class TrainInputs:
    """What block-wise training starts from: the space, the teacher, the corpus and the supernet to train."""

    space: SearchSpace
    teacher: Any
    tokenizer: Any
    source: str
    corpus: Any
    supernet: SuperNet
    block_latency: Any
    binning: str

    def trainer(self, run: RunDir, config: RunConfig, *, show_progress: bool, block_runner=None,
                data_parallel=None):
        from ..training import BlockwiseTrainer

        return BlockwiseTrainer(self.supernet, self.teacher, self.corpus, config.train, tokenizer=self.tokenizer,
                                workdir=run.train_dir, seed=config.seed, show_progress=show_progress,
                                block_runner=block_runner, block_latency=self.block_latency,
                                cache_root=cache_dir() / "teacher-states", data_parallel=data_parallel)


def train_inputs(run: RunDir, config: RunConfig, *, show_progress: bool = True) -> TrainInputs:
    """The training stage's inputs, the same in this process and in each data-parallel worker."""
    space = space_for(config)
    teacher, tokenizer, source = _teacher_for(config, space)
    corpus = load_corpus(config.corpus, tokenizer, cache_dir=cache_dir() / "corpus", show_progress=show_progress)
    logger.info("corpus: %d training and %d validation sequences of %d tokens", len(corpus.train),
                len(corpus.valid), corpus.train.shape[1])
    if config.train.init == "teacher" and run.stage_done("supernet") and not run.stage_done("train"):
        supernet = SuperNet.from_pretrained(run.supernet_dir)  # as stage supernet built, checked and saved it
    else:  # random initialisation, or the saved supernet is a trained one (--force)
        supernet = SuperNet.from_teacher(space, teacher, init=config.train.init, seed=config.seed)
    block_latency, binning = _block_latency(run, config)
    return TrainInputs(space, teacher, tokenizer, source, corpus, supernet, block_latency, binning)


def finish_train(run: RunDir, inputs: TrainInputs, trainer) -> None:
    """Write what training made: the trained supernet and the shrunk space with each path's validation loss."""
    trainer.supernet.cpu().save_pretrained(run.supernet_dir, tokenizer=inputs.tokenizer)
    shrunk = inputs.space.with_candidates([c.paths for c in trainer.candidates])
    _write_space_yaml(run.space_file, shrunk, trainer.candidates)


def _block_latency(run: RunDir, config: RunConfig):
    """``path -> ms`` from the run's latency table for shrinking's bins, or (None, "flops") without a profile."""
    profile = run.profile(config.latency)
    if not profile.complete:
        logger.info("no latency profile in %s: shrinking bins paths by parameters and FLOPs", run.latency_dir)
        return None, "params+flops"
    logger.info("shrinking bins paths by parameters and the latency table of %s", profile.path)
    return profile.table.path_ms, f"params+latency table {profile.path.name}"


def _write_space_yaml(path: Path, space: SearchSpace, candidates) -> None:
    """space.yaml with the surviving paths of each block and their validation loss, parameters and FLOPs."""
    import yaml

    data = space.to_dict()
    data["candidates"] = [c.records() for c in candidates]
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, width=120))


def stage_latency(run: RunDir, config: RunConfig, *, force: bool = False, show_progress: bool = True) -> dict | None:
    """Profile this machine for the run's (shrunk) space; the profile goes to RUN/latency/<device-key>/."""
    from ..latency import profile_device
    from ..latency.table import table_keys

    c = config.latency
    out = run.profile(config.latency).path
    key = out.name
    done = run.manifest["stages"].get("latency", {})
    if run.stage_done("latency") and done.get("device_key") == key and not force:
        logger.info("stage latency: already done for %s (%s); --force to redo", key, out)
        return None
    space_file = run.space_file
    space = SearchSpace.load(space_file) if space_file.is_file() else space_for(config)
    teacher, _, _ = _teacher_for(config, space)
    logger.info("profiling %s: %d ops in the table, %d whole models", key, len(table_keys(space)), c.archs)
    report = profile_device(space, out, config=c, teacher=teacher, seed=config.seed, show_progress=show_progress)
    run.mark("latency", "done", device_key=key, profile=str(out.relative_to(run.path)),
             teacher_latency_ms=report["teacher_latency_ms"], table=report["table"],
             predictor=report["predictor"], seconds=report["seconds"])
    logger.info("stage latency: done in %.0f s; teacher %.2f ms; held-out MAPE table %.1f%%, predictor %.1f%%; "
                "Kendall tau table %.3f, predictor %.3f", report["seconds"], report["teacher_latency_ms"],
                100 * report["table"]["mape"], 100 * report["predictor"]["mape"], report["table"]["kendall_tau"],
                report["predictor"]["kendall_tau"])
    return report


def stage_search(run: RunDir, config: RunConfig, *, force: bool = False, show_progress: bool = True,
                 ray_address: str | None = None, latency_profile: str | None = None, trials: int | None = None,
                 budgets: list[str] | None = None, sampler: str | None = None, storage: str | None = None,
                 workers: int | None = None):
    """Search the run's shrunk space under the budgets, in this process or on ``workers`` Ray workers (with
    ``ray_address``); resumes from the study's storage, which other processes may be searching too."""
    from ..search import Objective, run_search
    from ..search.study import SearchError, resolve_storage

    c = config.search
    asked = trials is not None or budgets is not None or sampler is not None or storage is not None \
        or workers is not None
    if run.stage_done("search") and not force and not asked:
        logger.info("stage search: already done (%s); --force to redo", run.search_dir)
        return None
    storage = storage or c.storage
    if ray_address is not None and storage in ("memory", ":memory:"):
        raise SearchError("the Ray search's workers share one study through a database, not this process's memory: "
                          "give --storage postgresql://USER@HOST/DB, or leave it out for SQLite in "
                          f"{run.search_dir / 'study.db'} (where every node shares the filesystem)")
    if storage is not None:
        resolve_storage(storage, None)  # a bad URL or an unreachable database fails here, before --force deletes
    out = run.search_dir
    if force and out.exists():
        import shutil

        shutil.rmtree(out)
    study_name = _study_name(run, storage, force)
    enqueue = []
    if run.space_file.is_file() and SearchSpace.load(run.space_file).elastic:
        objective, _ = calibrated_objective(run, config, latency_profile=latency_profile)
        enqueue = objective.starting_points()
    else:
        objective = Objective.from_run(run.path, latency_profile=latency_profile or _existing_profile(run, config))
    kwargs = {"budgets": tuple(budgets or c.budgets), "trials": trials or c.trials, "seed": config.seed,
              "out_dir": out, "top_k": c.top_k, "show_progress": show_progress, "sampler": sampler or c.sampler,
              "storage": storage, "study_name": study_name, "enqueue": enqueue,
              "starting_k": c.starting_k if enqueue else 0, "edge_margin": config.export.edge_margin,
              "heartbeat_s": c.heartbeat_s}
    if ray_address is not None:
        from ..search import run_ray_search

        address = None if ray_address == "local" else ray_address
        result = run_ray_search(objective, address=address, workers=workers or c.workers, **kwargs)
    else:
        result = run_search(objective, **kwargs)
    summary = {b.name: (None if not result.selections[b.name] else
                        {"arch": str(result.selections[b.name][0].arch),
                         **result.selections[b.name][0].evaluation.to_dict()}) for b in result.budgets}
    run.mark("search", "done", trials=len(result.trials), front=len(result.front), best=summary,
             teacher_latency_ms=result.teacher_latency_ms, ray=ray_address is not None)
    for b in result.budgets:
        best = summary[b.name]
        logger.info("budget %s: %s", b.name, "no trial meets it" if best is None else
                    f"proxy loss {best['proxy_loss']:.4f}, predicted {best['latency_ms']:.2f} ms, "
                    f"{best['params'] / 1e6:.2f} M params")
    return result


def calibrated_objective(run: RunDir, config: RunConfig, *, latency_profile: str | None = None):
    """The search objective of a run whose space is elastic (:class:`~nasbert.search.calibrated.
    CalibratedObjective`: every candidate calibrated and compared with the teacher), on every path of the run's
    space, its latency profile and corpus; returns it and the corpus."""
    from ..search.calibrated import CalibratedObjective
    from ..training.evaluation import plain_batches

    # every path: shrinking ranks a block's paths by how well each reproduces its teacher block alone, which
    # drops the skipped layers that a calibrated whole model can afford
    space = SearchSpace.load(run.space_file).without_candidates()
    predictor = LatencyProfile.find(run.path, latency_profile or _existing_profile(run, config)).predictor
    teacher, tokenizer, _ = _teacher_for(config, space)
    corpus = load_corpus(config.corpus, tokenizer, cache_dir=cache_dir() / "corpus", show_progress=False)
    c = config.search
    logger.info("elastic space: every candidate is calibrated (%d rows, fitted once per sub-layer and size) and "
                "ranked by its %s to the teacher on %d validation batches", c.calibrate_rows, c.proxy, c.proxy_batches)
    objective = CalibratedObjective(space, predictor, teacher, calibration=corpus.train[: c.calibrate_rows],
                                    batches=plain_batches(corpus.valid, batch_size=config.train.batch_size,
                                                          n_batches=c.proxy_batches),
                                    proxy=c.proxy)
    return objective, corpus


def _study_name(run: RunDir, storage: str | None, force: bool) -> str:
    """The Optuna study of this run's search. In the run's own SQLite file it is ``nasbert``. In a storage given
    by URL, which many runs may share, it is named after the run (its manifest's creation time), the same for
    every process searching this run, so that they share it; ``--force`` starts a new one beside it (a numbered
    name, recorded in the manifest), since the old study may be another process's to keep."""
    if storage is None or storage in ("memory", ":memory:"):
        return "nasbert"
    entry = run.manifest["stages"].get("search", {})
    name = entry.get("study_name") or "nasbert-" + hashlib.sha256(run.manifest["created"].encode()).hexdigest()[:10]
    if force:
        base, _, n = name.rpartition("-force")
        name = f"{base or name}-force{int(n) + 1 if base and n.isdigit() else 1}"
        logger.warning("--force: the search starts a new study %r in %s (the old one stays there)", name,
                       redact_url(storage))
    run.mark("search", "running", study_name=name)
    return name


def _existing_profile(run: RunDir, config: RunConfig) -> str | None:
    """The profile for the configured device if the run has it (so several profiles can coexist)."""
    profile = run.profile(config.latency)
    return str(profile.path) if profile.complete else None


def stage_export(run: RunDir, config: RunConfig, *, force: bool = False, out: str | None = None,
                 latency_profile: str | None = None, ray_address: str | None = None) -> None:
    """Export the family: per budget, the best of the search's top candidates that meets the budget on measured
    latency (in an elastic space: calibrated, and ranked by the probe, search.probe; else by the cosine to the
    teacher), as Hugging Face directories with ONNX (fp32 and int8) and model cards, plus family.json."""
    from ..export.family_export import ExportInputs, export_family
    from ..training.evaluation import plain_batches, validation_batches
    from ..search.optuna_search import load_shortlists

    target = Path(out) if out else run.family_dir
    if run.stage_done("export") and not force and out is None:
        logger.info("stage export: already done (%s); --force to redo", target)
        return None
    budgets, candidates = load_shortlists(run.pareto_file, run=run.path)
    space = SearchSpace.load(run.space_file)
    if supernet_is_read(config, space) and not run.stage_done("train"):
        status = run.manifest["stages"].get("train", {}).get("status", "not run")
        raise ConfigError(f"the export reads the trained supernet (export.weights: {config.export.weights}), but "
                          f"this run's train stage is {status}: train it first with nasbert train --out {run.path}")
    teacher, tokenizer, source = _teacher_for(config, space)
    supernet = SuperNet.from_pretrained(run.supernet_dir)
    corpus = load_corpus(config.corpus, tokenizer, cache_dir=cache_dir() / "corpus", show_progress=False)
    batches = validation_batches(corpus.valid, tokenizer, batch_size=config.train.batch_size,
                                 n_batches=config.export.eval_batches, seed=config.seed)
    device = (LatencyProfile(latency_profile) if latency_profile else run.profile(config.latency)).device
    teacher_supernet = SuperNet.from_teacher(space.without_candidates(), teacher, reorder="units") \
        if space.elastic else None
    probe = None
    if space.elastic and config.search.probe != "none":
        from ..search.probe import Probe, ProbeSettings, load_probe

        c = config.search
        probe = Probe(load_probe(c.probe, data_dir=c.probe_data_dir, train=c.probe_train, test=c.probe_test),
                      work_dir=run.search_dir / "probe", settings=ProbeSettings(workers=c.probe_workers))
        logger.info("a budget's candidates that meet it are ranked by the %s", probe.describe())
    teacher_cache = None
    if config.train.teacher_cache and config.export.distill.steps:  # the training's cache, where settings agree
        from ..training.teacher_cache import TeacherStateCache

        teacher_cache = TeacherStateCache(cache_dir() / "teacher-states", teacher, space, corpus.train,
                                          mlm_probability=config.export.distill.mlm_probability, seed=config.seed,
                                          mask_token_id=tokenizer.mask_token_id,
                                          special_ids=tokenizer.all_special_ids,
                                          vocab_size=space.teacher.vocab_size)
    evaluate = None
    if ray_address is not None:
        from ..search.ray_search import ray_whole_model_losses

        def ray_losses(archs):  # whole-model re-evaluation as Ray tasks
            return ray_whole_model_losses(run.supernet_dir, source, list(archs), batches,
                                          address=None if ray_address == "local" else ray_address)

        evaluate = ray_losses

    inputs = ExportInputs(
        supernet=supernet, teacher=teacher, tokenizer=tokenizer, teacher_name=source, space=space, device=device,
        valid_batches=batches, teacher_supernet=teacher_supernet, corpus=corpus, teacher_cache=teacher_cache,
        evaluate=evaluate, probe=probe,
        calibration=corpus.train[: config.export.calibrate_rows] if config.export.calibrate_rows else None,
        proxy_batches=plain_batches(corpus.valid, batch_size=config.train.batch_size,
                                    n_batches=config.export.eval_batches))
    family = export_family(inputs, budgets, candidates, out=target, config=config.export, seed=config.seed)
    if out is None:
        run.mark("export", "done", family=str(target.relative_to(run.path)), members=len(family.models),
                 teacher_latency_ms=family.teacher_latency_ms, distill_steps=config.export.distill.steps)
    for m in family.models:
        logger.info("%-24s %6.2f M params %6.2f ms (predicted %.2f) %5.2fx  valid loss %.4f  budget %s", m.name,
                    m.params / 1e6, m.latency_ms, m.predicted_latency_ms, m.speedup, m.valid_loss, m.budget)
    return family


def run_stage(stage: str, run: RunDir, config: RunConfig, *, force: bool = False, ray_address: str | None = None,
              show_progress: bool = True, skip_unread: bool = False):
    """Run one stage of ``STAGES`` with the run's settings (``nasbert run`` and ``nasbert train``); returns what
    the stage returns (None when it was already done or skipped: ``skip_unread``, see :func:`stage_train`)."""
    if stage == "supernet":
        return stage_supernet(run, config, force=force)
    if stage == "latency":
        return stage_latency(run, config, force=force, show_progress=show_progress)
    if stage == "train":
        return stage_train(run, config, force=force, ray_address=ray_address, show_progress=show_progress,
                           skip_unread=skip_unread)
    if stage == "search":
        return stage_search(run, config, force=force, show_progress=show_progress, ray_address=ray_address)
    if stage == "export":
        return stage_export(run, config, force=force, ray_address=ray_address)
    raise ValueError(f"unknown stage {stage!r}; the stages are {', '.join(STAGES)}")
