"""The ``nasbert`` command line.

::

    nasbert run [--config CFG] [--out RUN]      the pipeline: supernet, latency, train, search, export
    nasbert pick FAMILY --speedup 3             the family member for a budget
    nasbert finetune MODEL --task sst2 --out DIR
                                                fine-tune a member (or any HF BERT) on a GLUE or own task
    nasbert space [NAME|PATH]                   describe a search space
    nasbert extract --run RUN --arch ARCH --out DIR
                                                export one sub-network as a Hugging Face model directory
    nasbert distill --run RUN (--arch ARCH | --member FAMILY/NAME) --steps N --out DIR
                                                train one sub-network further as a whole against the teacher
    nasbert references build --task sst2 --out DIR
                                                a RefBERT reference pool for finetune --references
    nasbert baselines RUN                       the free baselines of each budget, timed with the family
    nasbert report RUN --tasks sst2 cola sick --data-dir DIR
                                                family vs free baselines vs teacher, fine-tuned, at measured latency
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

__all__ = ["main"]

logger = logging.getLogger("nasbert")


def _setup_logging(verbose: bool, progress: bool = True) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    import transformers

    transformers.logging.set_verbosity_error()  # load reports of the teacher's unused pooler are noise here
    if not progress:  # --no-progress: transformers' own bars (loading and writing weights) too
        transformers.utils.logging.disable_progress_bar()


# ------------------------------------------------------------------------------------------------ space


def cmd_space(args: argparse.Namespace) -> int:
    from ..space import SearchSpace

    if args.list:
        for name in SearchSpace.shipped():
            print(name)
        return 0
    if args.space == "elastic":  # what a run's default ``space: elastic`` builds for the built-in teacher
        from ..run import RunConfig
        from ..run.stages import space_for

        print(space_for(RunConfig()).summary())
        return 0
    print(SearchSpace.load(args.space).summary())
    return 0


# ------------------------------------------------------------------------------------------------ run


def _open_run(args: argparse.Namespace):
    """The run's config (file + command-line flags) and its directory; a directory this call creates is removed
    again if the first stage fails, so a typo never leaves a half-made run behind."""
    import shutil

    from ..run import RunConfig, RunDir

    config = RunConfig.load(args.config) if args.config else RunConfig()
    data = config.to_dict()
    for key, value in (("space", args.space), ("teacher", args.teacher), ("seed", args.seed)):
        if value is not None:
            data[key] = value
    for override in args.overrides:
        apply_override(data, override)
    config = RunConfig.from_dict(data, source="command line")
    out = Path(args.out)
    if args.force and (out / "manifest.json").is_file():
        shutil.rmtree(out)
    created = not out.exists()
    run = RunDir.open(out, config)
    logger.info("run directory %s", out)
    return config, run, created


def apply_override(data: dict, override: str) -> None:
    """Apply ``key.sub=value`` to a config mapping; the value is read as YAML (``5``, ``1e-4``, ``null``,
    ``[a, b]``), never evaluated as code."""
    import yaml

    from ..config import ConfigError

    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} is not of the form key=value (e.g. train.steps=100)")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"override {override!r}: the value is not valid YAML") from None
    *parents, last = key.split(".")
    node = data
    for i, part in enumerate(parents):
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"override {override!r}: {'.'.join(parents[: i + 1])!r} is not a config section")
        node = node[part]
    node[last] = value


def _run_stages(args: argparse.Namespace, stages: list[str]) -> list[str]:
    import shutil

    from ..run import STAGES, run_stage

    INPUT_ERRORS = _input_errors()

    config, run, created = _open_run(args)
    try:
        if getattr(args, "until", None):
            stages = stages[: stages.index(args.until) + 1]
        for stage in stages:  # through to the export, a supernet that nothing reads is not trained
            result = run_stage(stage, run, config, force=args.force, ray_address=args.ray_address,
                               show_progress=not args.no_progress, skip_unread="export" in stages)
            if stage == "supernet" and result is not None:
                print(result.summary())
            elif stage == "export" and result is not None:
                _print_family(result)
    except BaseException as e:
        # A directory this call made goes again if the input was bad (nothing to resume) or nothing finished.
        if created and (isinstance(e, INPUT_ERRORS) or not any(run.stage_done(s) for s in STAGES)):
            shutil.rmtree(run.path, ignore_errors=True)
        raise
    return stages


def cmd_run(args: argparse.Namespace) -> int:
    from ..run import STAGES, RunDir

    done = _run_stages(args, list(STAGES))
    if "export" in done:
        hint = f"pick a model with: nasbert pick {Path(args.out) / 'family'} --speedup 3"
    else:
        hint = f"extract a model with: nasbert extract --run {args.out} --largest --out DIR"
    stages = RunDir.load(args.out).manifest["stages"]
    status = {s: stages.get(s, {}).get("status", "not run") for s in done}
    others = "".join(f" ({s} {v})" for s, v in status.items() if v != "done")
    print(f"run {args.out}: {', '.join(s for s, v in status.items() if v == 'done')} done{others}; {hint}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    _run_stages(args, ["supernet", "train"])
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from ..run import RunDir, stage_search

    run = RunDir.load(args.run)
    stage_search(run, run.config, force=args.force, show_progress=not args.no_progress,
                 ray_address=args.ray_address, latency_profile=args.latency_profile, trials=args.trials,
                 budgets=args.budgets, sampler=args.sampler, storage=args.storage, workers=args.workers)
    print(f"search: {run.search_dir} (trials.csv, pareto.json, pareto.png)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..run import RunDir, stage_export

    run = RunDir.load(args.run)
    family = stage_export(run, run.config, force=args.force, out=args.out, latency_profile=args.latency_profile,
                          ray_address=args.ray_address)
    if family is not None:
        _print_family(family)
    return 0


def _print_family(family) -> None:
    print(f"family: {family.directory} ({len(family.models)} models); choose one with: nasbert pick "
          f"{family.directory} --speedup 3")


def cmd_latency(args: argparse.Namespace) -> int:
    """``nasbert latency --run RUN``: profile this machine for an existing run (flags override latency.*)."""
    from ..run import RunDir

    run = RunDir.load(args.run)
    data = run.config.to_dict()
    for key in ("device", "engine", "threads", "batch", "seq_len", "archs", "precision"):
        value = getattr(args, key)
        if value is not None:
            data["latency"][key] = value
    from ..run import RunConfig, stage_latency

    config = RunConfig.from_dict(data, source="command line")
    report = stage_latency(run, config, force=args.force, show_progress=not args.no_progress)
    if report is not None:
        print(f"teacher latency {report['teacher_latency_ms']:.2f} ms; held-out MAPE table "
              f"{report['table']['mape']:.1%}, predictor {report['predictor']['mape']:.1%}; Kendall tau table "
              f"{report['table']['kendall_tau']:.3f}, predictor {report['predictor']['kendall_tau']:.3f}")
    return 0


# ------------------------------------------------------------------------------------------------ extract


def cmd_extract(args: argparse.Namespace) -> int:
    from ..run import RunDir
    from ..run.tools import extract_to
    from ..space import Arch, SearchSpace

    if args.arch:
        arch = Arch.parse(args.arch)
    elif args.teacher_arch:
        arch = SearchSpace.teacher_arch
    elif args.largest:
        arch = SearchSpace.largest_arch
    elif args.smallest:
        arch = SearchSpace.smallest_arch
    else:
        arch = lambda space: space.sample(np.random.default_rng(args.seed))  # noqa: E731
    info = extract_to(RunDir(Path(args.run)), arch, args.out)
    print(f"{args.out}: {info['arch']}")
    print(f"  {info['params']:,} parameters, {info['gflops']:.3f} GFLOPs at 128 tokens")
    return 0


# ------------------------------------------------------------------------------------------------ distill


def cmd_distill(args: argparse.Namespace) -> int:
    """``nasbert distill``: whole-model distillation of one sub-network of a run, written as a model directory."""
    from ..export.family import member_arch
    from ..run import RunDir
    from ..run.tools import distill_to
    from ..space import Arch

    run = RunDir.load(args.run)
    arch = member_arch(args.member) if args.member else Arch.parse(args.arch)
    record = distill_to(run, arch, args.out, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                        seed=args.seed, member=args.member, onnx=not args.no_onnx, force=args.force,
                        progress=not args.no_progress)
    print(f"{args.out}: {arch}")
    print(f"  whole-model valid loss {record['valid_loss_before']:.4f} -> {record['valid_loss_after']:.4f} after "
          f"{record['steps']} steps ({record['seconds']:.1f} s)")
    return 0


# ------------------------------------------------------------------------------------------------ quality


def _report_config(args: argparse.Namespace):
    """A ReportConfig from the options a command has (``baselines`` has no fine-tuning options)."""
    import dataclasses

    from ..quality.report import ReportConfig, parse_max_train, parse_per_task

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ReportConfig)
              if getattr(args, f.name, None) is not None and f.name not in ("max_train_examples", "rule", "epochs")}
    values["rule"] = dict(r.partition("=")[::2] for r in getattr(args, "rule", None) or [])
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    tasks = values.get("tasks", ReportConfig.tasks)
    given = getattr(args, "epochs", None) or []  # [TASK=]N, in order: a later one overrides an earlier one
    epochs = parse_per_task(given, tasks, option="--epochs", cast=float)
    every = [e for e in given if "=" not in e]
    if every:
        values["epochs"] = float(every[-1])
    values["task_epochs"] = {t: n for t, n in epochs.items() if n != values.get("epochs", ReportConfig.epochs)}
    return ReportConfig(**values, max_train_examples=parse_max_train(getattr(args, "max_train_examples", None), tasks))


def cmd_baselines(args: argparse.Namespace) -> int:
    """``nasbert baselines``: the layer-dropped teachers and uniform models each budget allows, written and timed."""
    from ..quality.report import build_baselines

    out = Path(args.out) if args.out else Path(args.run) / "baselines"
    models = build_baselines(args.run, out=out, config=_report_config(args), family=args.family, force=args.force,
                             progress=not args.no_progress)
    print(f"teacher {models['teacher_latency_ms']:.2f} ms ({models['device'].get('key', '')})")
    for row in models["rows"][1:]:
        print(f"  {row['budget'] or '-':>6}  {row['kind']:<9}  {row['name']:<28} {row['params'] / 1e6:6.2f} M  "
              f"{row['latency_ms']:6.2f} ms  {row['speedup']:5.2f}x  {out / row['path']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``nasbert report``: the family, the free baselines and the teacher, fine-tuned on a task panel."""
    from ..quality.report import build_report, markdown_table

    results = build_report(args.run, out=args.out, config=_report_config(args), family=args.family,
                           force=args.force, progress=not args.no_progress)
    print(markdown_table(results))
    out = Path(args.out) if args.out else Path(args.run) / "report"
    print(f"results: {out / 'quality_results.json'}, table: {out / 'quality.md'}, plot: {out / 'quality.png'}")
    return 0


def _baseline_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory (a finished `nasbert run`)")
    p.add_argument("--family", help="family directory (default RUN/family)")
    p.add_argument("--budgets", nargs="+", help="budgets to compare at (default: the family's)")
    p.add_argument("--distill-steps", type=int,
                   help="whole-model distillation steps for the +kd rows (default: the family's distill_steps; "
                        "with a family distilled after the search it must be the same)")
    p.add_argument("--layerdrop", nargs="+", default=["bottom", "spread"], choices=["bottom", "spread"],
                   help="which layer-dropped teachers compete: the bottom k layers, k layers spread over the "
                        "blocks, or both (default)")
    p.add_argument("--baselines", nargs="+", default=["layerdrop", "uniform", "pruned"],
                   choices=["layerdrop", "uniform", "pruned"],
                   help="which free baselines compete: layer-dropped teachers, uniform models sliced from the "
                        "trained supernet, each member's magnitude-pruned twin (default: all three)")
    p.add_argument("--rule", nargs="+", metavar="BUDGET=ARCH",
                   help="a former hand rule's choice for a budget, compared as a row of kind rule (an architecture "
                        "of the run's elastic space, calibrated as the export calibrates)")
    p.add_argument("--sampled", type=int, default=0,
                   help="also N architectures of the run's space spread over its latency range (no budget), for "
                        "the proxies' rank correlation with the fine-tuned scores (default 0)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--force", action="store_true", help="start over in --out")


# ------------------------------------------------------------------------------------------------ references


def cmd_references_build(args: argparse.Namespace) -> int:
    """``nasbert references build``: a RefBERT reference pool for ``nasbert finetune --references``."""
    from ..finetune.refbert import build_reference_pool

    pool = build_reference_pool(args.out, task=args.task, text_file=args.text_file, data_dir=args.data_dir,
                                max_examples=args.max_examples, teacher=args.teacher,
                                max_reference_tokens=args.max_reference_tokens, max_length=args.max_length,
                                batch_size=args.batch_size, force=args.force, progress=not args.no_progress)
    out = args.out
    print(f"{out}: {pool.num_samples} reference samples of {pool.meta['teacher']} ({pool.hidden_size}-wide, up to "
          f"{pool.max_reference_tokens} tokens), {pool.meta['bytes'] / 1e6:.1f} MB, built in "
          f"{pool.meta['build_seconds']:.1f} s; use it with: nasbert finetune MODEL --references {out} ...")
    return 0


# ------------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nasbert", description="Compress one BERT into a family of models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    for name, func, text in (("run", cmd_run, "run the pipeline (with no arguments: built-in teacher, offline)"),
                             ("train", cmd_train, "block-wise training with progressive shrinking")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", help="a YAML run config (see experiments/)")
        p.add_argument("--out", default="runs/default", help="run directory (default: runs/default)")
        p.add_argument("--space", help="search space name or YAML path (default: elastic, the elastic teacher "
                                       "space built from the teacher's config)")
        p.add_argument("--teacher", help="local HF BERT directory or hub id (default: the built-in MiniLM-L6-H384)")
        p.add_argument("--seed", type=int)
        p.add_argument("--ray-address", help="train the blocks as Ray actors: 'local', 'auto' or ray://HOST:PORT")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument("--force", action="store_true", help="start the run directory again")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="config overrides, e.g. train.steps=100 corpus.seq_len=64")
        if name == "run":
            from ..run import STAGES

            p.add_argument("--until", choices=STAGES, help="stop after this stage")
        p.set_defaults(func=func)

    p = sub.add_parser("search", help="search a trained run under latency / size budgets (Optuna, on Ray workers "
                                      "or in this process)")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--budgets", nargs="+", help="e.g. 2x 3x 4x, 12ms, 10M (default: the config's)")
    p.add_argument("--sampler", choices=["nsga2", "tpe", "random"])
    p.add_argument("--trials", type=int, help="trials the study should hold (finished ones count)")
    p.add_argument("--storage", help="Optuna RDB URL (default: SQLite in RUN/search/study.db); every process and Ray "
                                     "worker searching it shares one study, which resumes after a kill")
    p.add_argument("--latency-profile", help="a latency profile directory, e.g. made on another machine")
    p.add_argument("--ray-address", help="run the trials on Ray workers: 'local', 'auto' or ray://HOST:PORT")
    p.add_argument("--workers", type=int, help="Ray workers, one thread each (default: search.workers)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--force", action="store_true", help="start the search again")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("export", help="export the family: HF directories + ONNX + family.json")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--out", help="family directory (default: RUN/family)")
    p.add_argument("--latency-profile", help="the latency profile the search used, if not the run's own")
    p.add_argument("--ray-address", help="re-evaluate the candidates as Ray tasks: 'local', 'auto' or ray://HOST:PORT")
    p.add_argument("--force", action="store_true", help="export again")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("latency", help="profile this machine for a run: lookup table, predictor, accuracy")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--engine", choices=["onnxruntime", "torch"])
    p.add_argument("--threads", type=int, help="intra-op threads (default 1)")
    p.add_argument("--batch", type=int, help="batch size (default 1)")
    p.add_argument("--seq-len", dest="seq_len", type=int, help="sequence length (default 128)")
    p.add_argument("--archs", type=int, help="whole models to measure (default 60)")
    p.add_argument("--precision", choices=["fp32", "int8"],
                   help="int8: time ONNX Runtime's dynamic int8 graphs (a profile of its own, RUN/latency/<key>-int8; "
                        "search with --latency-profile it, or set latency.precision: int8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--force", action="store_true", help="profile again")
    p.set_defaults(func=cmd_latency)

    from .pick import build_pick_parser, run_pick

    p = sub.add_parser("pick", help="choose the family member for a latency or size budget")
    build_pick_parser(p)
    p.set_defaults(func=run_pick)

    from .finetune import build_finetune_parser, run_finetune

    p = sub.add_parser("finetune", help="fine-tune a model (a family member or any HF BERT) on a GLUE or own task")
    build_finetune_parser(p)
    p.set_defaults(func=run_finetune)

    p = sub.add_parser("references", help="RefBERT reference pools: a teacher's pre-computed states of samples")
    ref = p.add_subparsers(dest="references_command", required=True)
    p = ref.add_parser("build", help="build a pool from a task's training set (or a text file) with a teacher")
    texts = p.add_mutually_exclusive_group()
    texts.add_argument("--task", help="GLUE task whose training set becomes the pool (sst2, cola, ...)")
    texts.add_argument("--text-file", help="or: a UTF-8 file with one text per line")
    p.add_argument("--data-dir", help="GLUE TSV directory (<DIR>/SST-2/train.tsv, ...); default: the hub")
    p.add_argument("--max-examples", type=int,
                   help="with --task: the same seeded subset as finetune --max-train-examples; with --text-file: "
                        "the first N lines")
    p.add_argument("--teacher", default="builtin",
                   help="'builtin' (default), a local HF BERT directory (a fine-tuned classifier's encoder is "
                        "used) or a hub id; the student must share its tokenizer")
    p.add_argument("--max-reference-tokens", type=int, default=32,
                   help="teacher token states kept per sample, [CLS] included (default 32)")
    p.add_argument("--max-length", type=int, default=128,
                   help="samples are truncated to this many tokens before the teacher reads them (default 128)")
    p.add_argument("--batch-size", type=int, default=64, help="teacher batch size (default 64)")
    p.add_argument("--out", required=True, help="the pool's folder")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_references_build)

    p = sub.add_parser("baselines", help="the free baselines of each budget (layer-dropped teacher, uniform model), "
                                         "written and timed with the family and the teacher")
    _baseline_arguments(p)
    p.add_argument("--out", help="output directory (default RUN/baselines)")
    p.set_defaults(func=cmd_baselines)

    p = sub.add_parser("report", help="quality report: family vs free baselines vs teacher, fine-tuned on a task "
                                      "panel at measured latency (resumable)")
    _baseline_arguments(p)
    p.add_argument("--out", help="output directory (default RUN/report)")
    p.add_argument("--tasks", nargs="+", default=["sst2", "cola", "sick"],
                   help="task panel: GLUE tasks and sick (default: sst2 cola sick)")
    p.add_argument("--data-dir", help="local data: a GLUE root, or a folder holding glue/ and sick/ (default: hub)")
    p.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds per model and task (default 3)")
    p.add_argument("--lrs", nargs="+", type=float, default=[5e-5, 2e-4, 5e-4],
                   help="learning-rate grid; each model gets its best (default 5e-5 2e-4 5e-4: small models often "
                        "want a larger rate than their teacher)")
    p.add_argument("--lr-select", choices=["all", "first-seed"], default="all",
                   help="choose the rate on the mean over all seeds (default), or on seed 0 alone and run the "
                        "other seeds at that rate only (cheaper)")
    p.add_argument("--pair-encodings", nargs="+", choices=["cross", "bi"], default=["cross", "bi"],
                   help="pair tasks (sick, ...): the ways of reading a pair, a grid axis like the rate: cross (the "
                        "texts as one sequence) and bi (each text apart, Sentence-BERT's classifier); default both")
    p.add_argument("--epochs", nargs="+", metavar="[TASK=]N", default=None,
                   help="fine-tuning epochs, for every task (N) or one (TASK=N) (default 3)")
    p.add_argument("--batch-size", type=int, default=32, help="fine-tuning batch size (default 32)")
    p.add_argument("--max-seq-len", type=int, default=128, help="tokens per input (default 128)")
    p.add_argument("--max-train-examples", nargs="+", metavar="[TASK=]N",
                   help="a fixed seeded subset of the training set, for every task (N) or one (TASK=N)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("space", help="describe a search space")
    p.add_argument("space", nargs="?", default="minilm_l6",
                   help="shipped name, YAML path or 'elastic' (the built-in teacher's; default: minilm_l6)")
    p.add_argument("--list", action="store_true", help="list the shipped spaces")
    p.set_defaults(func=cmd_space)

    p = sub.add_parser("extract", help="export one sub-network of a run's supernet as a Hugging Face model")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--out", required=True, help="output model directory")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--arch", help='architecture, "WIDTH:op,op,..|WIDTH:..." or JSON')
    which.add_argument("--teacher-arch", action="store_true", help="the teacher's own architecture")
    which.add_argument("--largest", action="store_true", help="the largest architecture of the space")
    which.add_argument("--smallest", action="store_true", help="the smallest architecture of the space")
    p.add_argument("--seed", type=int, default=0, help="seed of the random architecture drawn by default")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("distill", help="train one sub-network of a run further as a whole against the teacher")
    p.add_argument("--run", required=True, help="run directory (its supernet, teacher and corpus are used)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", help='architecture, "WIDTH:op,op,..|WIDTH:..." or JSON')
    which.add_argument("--member", help="a family member, FAMILY_DIR/NAME (e.g. runs/default/family/nasbert-4x-5.1M)")
    p.add_argument("--steps", type=int, required=True, help="optimiser steps")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the run's export.distill.lr)")
    p.add_argument("--batch-size", type=int, help="sequences per step (default: the run's export.distill.batch_size)")
    p.add_argument("--seed", type=int, help="seed of batches, masking and dropout (default: the run's seed)")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--no-onnx", action="store_true", help="do not write model.onnx")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_distill)
    return parser


def _input_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean the input (config, space, teacher, corpus, task data, paths) is wrong: a message, exit 1."""
    from ..config import ConfigError
    from ..export.family import FamilyError
    from ..finetune import FinetuneError, TaskError
    from ..finetune.refbert import ReferencePoolError
    from ..search import SearchError
    from ..space import SpaceError
    from ..teacher import TeacherError

    from ..quality import ReportError

    return (ConfigError, SpaceError, TeacherError, TaskError, FinetuneError, ReferencePoolError, ReportError,
            SearchError, FamilyError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose, progress=not getattr(args, "no_progress", False))
    try:
        return args.func(args)
    except _input_errors() as e:
        print(f"nasbert: error: {e}", file=sys.stderr)
        return 1
