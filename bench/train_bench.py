"""Training benchmarks (results go to docs/benchmarks.md).

    python bench/train_bench.py init       # teacher-initialised vs randomly initialised supernet, same steps
    python bench/train_bench.py sampling   # sandwich vs uniform single-path sampling, same wall time
    python bench/train_bench.py overhead   # tokens/s of a sampled path in the supernet vs the extracted model
    python bench/train_bench.py cache      # tokens/s of block-wise training without / with the teacher-state cache

Corpus: the Wikipedia sample in ../shared/data/wikipedia-en-sample when it is there (else the built-in corpus,
which the output says). Teacher: the built-in MiniLM-L6-H384, space minilm_l6. Every result is printed as JSON
and appended to bench/results/train_bench.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nasbert import SearchSpace, SuperNet, load_teacher
from nasbert.data import CorpusConfig, load_corpus
from nasbert.utils import cache_dir
from nasbert.training import BlockwiseTrainer, ShrinkConfig, TrainConfig

ROOT = Path(__file__).resolve().parent.parent
WIKI = ROOT.parent / "shared" / "data" / "wikipedia-en-sample"


def corpus_config() -> CorpusConfig:
    if WIKI.is_dir():
        return CorpusConfig(source="files", paths=(str(WIKI),), seq_len=128)
    print("../shared/data/wikipedia-en-sample not found: using the built-in corpus", file=sys.stderr)
    return CorpusConfig(seq_len=128)


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}


def record(result: dict) -> None:
    result = {**result, "machine": machine()}
    print(json.dumps(result, indent=2))
    with open(ROOT / "bench" / "results" / "train_bench.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")


def train(space, teacher, tokenizer, corpus, *, steps: int, sampling: str, init: str, seed: int = 0,
          time_budget: float | None = None) -> dict:
    config = TrainConfig(steps=steps, batch_size=16, sampling=sampling, eval_every=0, eval_batches=4,
                         eval_paths=16, checkpoint_every=10_000, warmup_steps=min(40, steps // 10), init=init,
                         shrink=ShrinkConfig(enabled=False))
    supernet = SuperNet.from_teacher(space, teacher, init=init, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = BlockwiseTrainer(supernet, teacher, corpus, config, tokenizer=tokenizer, workdir=tmp, seed=seed,
                                   show_progress=True)
        at_start = trainer.evaluate()
        start = time.perf_counter()
        while trainer.step < steps and (time_budget is None or time.perf_counter() - start < time_budget):
            trainer.train_step()
        seconds = time.perf_counter() - start
        final = trainer.evaluate()
    return {"sampling": sampling, "init": init, "steps": trainer.step, "train_seconds": round(seconds, 1),
            "valid_loss_at_start": at_start["mean"], "valid_loss": final["mean"],
            "per_block": final["blocks"]}


def cmd_init(args) -> None:
    space = SearchSpace.load("minilm_l6")
    teacher, tokenizer, _ = load_teacher()
    corpus = load_corpus(corpus_config(), tokenizer, cache_dir=cache_dir() / "corpus")
    runs = [train(space, teacher, tokenizer, corpus, steps=args.steps, sampling="sandwich", init=init)
            for init in ("teacher", "random")]
    record({"bench": "init", "corpus": corpus_config().describe(), "runs": runs,
            "gap": runs[1]["valid_loss"] / runs[0]["valid_loss"]})


def cmd_sampling(args) -> None:
    space = SearchSpace.load("minilm_l6")
    teacher, tokenizer, _ = load_teacher()
    corpus = load_corpus(corpus_config(), tokenizer, cache_dir=cache_dir() / "corpus")
    sandwich = train(space, teacher, tokenizer, corpus, steps=args.steps, sampling="sandwich", init="teacher")
    uniform = train(space, teacher, tokenizer, corpus, steps=100 * args.steps, sampling="uniform", init="teacher",
                    time_budget=sandwich["train_seconds"])
    record({"bench": "sampling", "corpus": corpus_config().describe(), "runs": [sandwich, uniform]})


def cmd_overhead(args) -> None:
    """One training step (forward, MSE to the teacher's output, backward, AdamW) of the same architecture,
    as a path of the supernet and as the extracted standalone model; interleaved, median of repeats."""
    torch.set_num_threads(args.threads)
    space = SearchSpace.load("minilm_l6")
    teacher, _, _ = load_teacher()
    supernet = SuperNet.from_teacher(space, teacher).train()
    rng = np.random.default_rng(0)
    ids = torch.randint(1000, 30000, (16, 128))
    with torch.no_grad():
        target = teacher(input_ids=ids).last_hidden_state
    results = []
    for _ in range(args.archs):
        arch = space.sample(rng)
        model = supernet.extract(arch).train()
        opt_super = torch.optim.AdamW(supernet.parameters(), lr=1e-4, fused=True)  # as the trainer does
        opt_model = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step_super():
            opt_super.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(supernet(ids, arch=arch), target).backward()
            opt_super.step()

        def step_model():
            opt_model.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(model(ids).last_hidden_state, target).backward()
            opt_model.step()

        times = {"supernet": [], "extracted": []}
        for f in (step_super, step_model):  # warm-up (and AdamW state allocation)
            f(), f()
        for _ in range(args.repeats):
            for name, f in (("supernet", step_super), ("extracted", step_model)):
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
        s, m = statistics.median(times["supernet"]), statistics.median(times["extracted"])
        results.append({"arch": str(arch), "params": space.num_params(arch), "supernet_s": s, "extracted_s": m,
                        "tokens_per_s_supernet": ids.numel() / s, "tokens_per_s_extracted": ids.numel() / m,
                        "overhead": s / m - 1})
    record({"bench": "overhead", "threads": args.threads, "batch": list(ids.shape), "repeats": args.repeats,
            "archs": results, "median_overhead": statistics.median(r["overhead"] for r in results)})


def cmd_cache(args) -> None:
    """Training throughput of the default settings (built-in corpus and teacher, batch 16, 128 tokens, sandwich
    sampling) without the teacher-state cache, with a cold cache (every row computed once, as in a first epoch)
    and with a warm one (the same steps again: every row read from disk): tokens/s per step, the median over the
    steps after the first two. The three runs draw the same batches (same seed)."""
    torch.set_num_threads(args.threads)
    space = SearchSpace.load("minilm_l6")
    teacher, tokenizer, _ = load_teacher()
    corpus = load_corpus(CorpusConfig(seq_len=128), tokenizer, cache_dir=cache_dir() / "corpus")
    runs = {}
    with tempfile.TemporaryDirectory() as root:
        for name, cached in (("no cache", False), ("cold cache", True), ("warm cache", True)):
            config = TrainConfig(steps=args.steps, eval_every=0, eval_batches=1, eval_paths=2,
                                 checkpoint_every=10_000, teacher_cache=cached, shrink=ShrinkConfig(enabled=False))
            trainer = BlockwiseTrainer(SuperNet.from_teacher(space, teacher), teacher, corpus, config,
                                       tokenizer=tokenizer, workdir=Path(root) / name, show_progress=False,
                                       cache_root=Path(root) / "cache")
            times = []
            for _ in range(args.steps):
                t0 = time.perf_counter()
                trainer.train_step()
                times.append(time.perf_counter() - t0)
            tokens = config.batch_size * corpus.train.shape[1]
            runs[name] = {"tokens_per_s": tokens / statistics.median(times[2:]), "step_s": times}
            print(name, f"{runs[name]['tokens_per_s']:.0f} tokens/s", flush=True)
        size = sum(p.stat().st_blocks * 512 for p in Path(root, "cache").rglob("*") if p.is_file())
    base = runs["no cache"]["tokens_per_s"]
    record({"bench": "teacher_cache", "threads": args.threads, "steps": args.steps, "corpus": "built-in",
            "sequences": int(corpus.train.shape[0]), "cache_bytes_on_disk_after_steps": size,
            "cache_bytes_full": int(corpus.train.numel() * len(space.teacher_boundaries) * space.teacher.hidden_size * 2),
            "runs": runs, "speedup_cold": runs["cold cache"]["tokens_per_s"] / base,
            "speedup_warm": runs["warm cache"]["tokens_per_s"] / base})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init")
    p.add_argument("--steps", type=int, default=100)
    p.set_defaults(func=cmd_init)
    p = sub.add_parser("sampling")
    p.add_argument("--steps", type=int, default=100)
    p.set_defaults(func=cmd_sampling)
    p = sub.add_parser("overhead")
    p.add_argument("--archs", type=int, default=6)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_overhead)
    p = sub.add_parser("cache")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_cache)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
