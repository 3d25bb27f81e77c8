"""The ``nasbert`` command line.

::

    nasbert run [--config CFG] [--out RUN]      the pipeline (stages that exist so far: supernet)
    nasbert space [NAME|PATH]                   describe a search space
    nasbert extract --run RUN --arch ARCH --out DIR
                                                export one sub-network as a Hugging Face model directory
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]

logger = logging.getLogger("nasbert")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    import transformers

    transformers.logging.set_verbosity_error()  # load reports of the teacher's unused pooler are noise here


# ------------------------------------------------------------------------------------------------ space


def cmd_space(args: argparse.Namespace) -> int:
    from .space import SearchSpace

    if args.list:
        for name in SearchSpace.shipped():
            print(name)
        return 0
    print(SearchSpace.load(args.space).summary())
    return 0


# ------------------------------------------------------------------------------------------------ run


def _teacher_parity(supernet, teacher, tokenizer, *, max_docs: int = 8, seq_len: int = 128) -> float:
    """Largest |supernet(teacher_arch) - teacher| over the real tokens of a few built-in documents."""
    import torch

    from .data import builtin_documents

    docs = builtin_documents()[:max_docs]
    batch = tokenizer(docs, padding=True, truncation=True, max_length=seq_len, return_tensors="pt")
    with torch.no_grad():
        expected = teacher(**batch).last_hidden_state
        got = supernet(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                       arch=supernet.space.teacher_arch())
    keep = batch["attention_mask"].bool()
    return float((got - expected)[keep].abs().max())


def stage_supernet(run, config, *, force: bool) -> None:
    from .space import SearchSpace
    from .supernet import SuperNet
    from .teacher import load_teacher
    from .io import atomic_write_text

    if run.stage_done("supernet") and not force:
        logger.info("stage supernet: already done (%s); --force to redo", run.path / "supernet")
        return
    start = time.perf_counter()
    space = SearchSpace.load(config.space)
    print(space.summary())
    teacher, tokenizer, source = load_teacher(config.teacher if config.teacher is not None else space.teacher.name)
    logger.info("building the supernet from teacher %s", source)
    supernet = SuperNet.from_teacher(space, teacher).eval()
    error = _teacher_parity(supernet, teacher, tokenizer)
    logger.info("supernet under the teacher's architecture vs the teacher: max |diff| = %.2e", error)
    if error > 1e-3:
        raise RuntimeError(
            f"the supernet does not reproduce the teacher (max |diff| = {error:.2e}); the teacher's layout is not "
            "supported, please report it with the teacher's config.json"
        )
    supernet.save_pretrained(run.path / "supernet", tokenizer=tokenizer)
    atomic_write_text(run.path / "space.yaml", space.to_yaml())
    n_params = sum(p.numel() for p in supernet.parameters())
    run.mark("supernet", "done", teacher=source, teacher_parity_max_abs_diff=error, supernet_params=n_params,
             seconds=round(time.perf_counter() - start, 1))
    logger.info("stage supernet: done in %.1f s, %s parameters, saved to %s",
                time.perf_counter() - start, f"{n_params:,}", run.path / "supernet")


def cmd_run(args: argparse.Namespace) -> int:
    import shutil

    from .run import RunConfig, RunDir

    config = RunConfig.load(args.config) if args.config else RunConfig()
    overrides = {k: v for k, v in (("space", args.space), ("teacher", args.teacher), ("seed", args.seed))
                 if v is not None}
    config = RunConfig.from_dict({**config.to_dict(), **overrides}, source="command line")
    out = Path(args.out)
    if args.force and (out / "manifest.json").is_file():
        shutil.rmtree(out)
    run = RunDir.open(out, config)
    logger.info("run directory %s", out)
    stage_supernet(run, config, force=args.force)
    print(f"run {out}: supernet ready; extract a model with: nasbert extract --run {out} --largest --out DIR")
    return 0


# ------------------------------------------------------------------------------------------------ extract


def cmd_extract(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from .export import save_hf_model
    from .space import Arch
    from .supernet import SuperNet

    supernet = SuperNet.from_pretrained(Path(args.run) / "supernet")
    space = supernet.space
    if args.arch:
        arch = Arch.parse(args.arch)
    elif args.teacher_arch:
        arch = space.teacher_arch()
    elif args.largest:
        arch = space.largest_arch()
    elif args.smallest:
        arch = space.smallest_arch()
    else:
        arch = space.sample(np.random.default_rng(args.seed))
    space.validate(arch, allow_teacher=True)
    tokenizer = AutoTokenizer.from_pretrained(Path(args.run) / "supernet")
    save_hf_model(supernet.extract(arch), args.out, tokenizer=tokenizer)
    print(f"{args.out}: {arch}")
    print(f"  {space.num_params(arch):,} parameters, {space.flops(arch, 128) / 1e9:.3f} GFLOPs at 128 tokens")
    return 0


# ------------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nasbert", description="Compress one BERT into a family of models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the pipeline (with no arguments: built-in teacher, offline)")
    p.add_argument("--config", help="a YAML run config (see experiments/)")
    p.add_argument("--out", default="runs/default", help="run directory (default: runs/default)")
    p.add_argument("--space", help="search space name or YAML path (default: minilm_l6)")
    p.add_argument("--teacher", help="local HF BERT directory or hub id (default: the built-in MiniLM-L6-H384)")
    p.add_argument("--seed", type=int)
    p.add_argument("--force", action="store_true", help="start the run directory again")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("space", help="describe a search space")
    p.add_argument("space", nargs="?", default="minilm_l6", help="shipped name or YAML path (default: minilm_l6)")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from .run import ConfigError
    from .space import SpaceError
    from .teacher import TeacherError

    try:
        return args.func(args)
    except (ConfigError, SpaceError, TeacherError, FileNotFoundError) as e:
        print(f"nasbert: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
