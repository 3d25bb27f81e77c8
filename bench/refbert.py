"""RefBERT reference samples on a searched student: SST-2 and CoLA, fine-tuned with and without references.

    python bench/refbert.py            # everything below, resumable (a stopped run goes on where it was)
    python bench/refbert.py --smoke    # the same pipeline on a few examples, one seed (a few minutes)

The student is ``runs/compare/family/nasbert-2x-10.8M`` (the searched 2x member of ``bench/compare.py``'s run;
its first layer is an mha layer, where the references enter). The references come from the built-in teacher
(MiniLM-L6-H384, the student's own teacher, same tokenizer); data from ``../shared/data/glue``.

1. Pools (``nasbert.finetune.refbert.ReferencePool``): SST-2 from the same fixed 4,000 training sentences that
   ``bench/compare.py`` fine-tunes on (the seed-0 subset), CoLA from all 8,551 training sentences. Build time,
   size on disk and in memory are recorded.
2. Fine-tuning with ``bench/compare.py``'s recipe (2 epochs, lr 1e-4, batch 32, 64 tokens, mean pooling), seeds
   0, 1, 2, without references (the plain student) and with them (the same student with ``reference_size``):
   12 runs. Training examples never reference themselves or an identical sentence.
3. Latency (ONNX Runtime, 1 thread, batch 1, 64 and 128 tokens): the seed-0 SST-2 classifiers without and with
   reference inputs (``--latency-references`` reference tokens, by default the pool's maximum, 32: the worst
   case), and the retrieval itself (TF-IDF over the SST-2 pool plus gathering the states, on real dev
   sentences), timed interleaved; medians.
4. Memory: the pool's bytes (disk, memory) and the parameters the reference projection adds.

Everything lands in ``--work`` (default ``runs/compare/bench-refbert``, ``...-smoke`` with ``--smoke``); the table
is printed and written to ``WORK/table.md`` and ``WORK/results.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("refbert")
METRIC_NAMES = {"accuracy": "accuracy", "matthews_correlation": "MCC"}


def load_data(task_name: str, args, train_examples: int | None):
    """The task with the training subset the recipe uses (seed 0, as finetune and compare.py) and, with
    ``--max-dev-examples``, the first dev examples only."""
    from nasbert.finetune import load_task

    task = load_task(task_name, data_dir=args.data_dir, max_train_examples=train_examples, seed=0)
    if args.max_dev_examples:
        task.dev = task.dev[: args.max_dev_examples]
    return task


def build_pools(args, work: Path, tasks: dict) -> dict[str, Path]:
    """One pool per task from its fine-tuning training set; a pool already there is reused if it matches."""
    from nasbert.finetune.refbert import ReferencePool

    dirs = {}
    for name, task in tasks.items():
        path = work / "pools" / name
        dirs[name] = path
        if (path / "references.json").is_file():
            meta = json.loads((path / "references.json").read_text())
            if meta["num_samples"] == len(task.train) and meta["max_reference_tokens"] == args.max_reference_tokens:
                continue
            raise SystemExit(f"{path} holds another pool ({meta['num_samples']} samples, "
                             f"{meta['max_reference_tokens']} tokens): remove it or pass another --work")
        texts = [e.text_a if e.text_b is None else (e.text_a, e.text_b) for e in task.train]
        pool = ReferencePool.build(texts, teacher=args.teacher, max_reference_tokens=args.max_reference_tokens,
                                   corpus=f"{name} training set, {len(texts)} examples, from {task.source}",
                                   progress=not args.no_progress)
        pool.save(path)
    return dirs


def finetune_all(args, work: Path, tasks: dict, pools: dict[str, Path]) -> dict:
    """Every task x seed x (without, with references); returns {task: {variant: [main metric per seed]}}."""
    from nasbert.finetune import FinetuneConfig, finetune

    scores: dict = {}
    runs: dict = {}
    for seed in args.seeds:  # seed by seed, so that a stopped benchmark already holds whole seeds
        for name, task in tasks.items():
            config = FinetuneConfig(seed=seed, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                    max_seq_len=args.max_seq_len, threads=args.threads, pooling="auto",
                                    max_train_examples=args.train_examples.get(name))
            for variant, references in (("plain", None), ("references", pools[name])):
                out = work / "finetune" / name / f"{variant}-seed{seed}"
                t = time.perf_counter()
                # ONNX only where the latency step reads it: the first seed.
                result = finetune(args.student, task, out=out, config=config, references=references,
                                  onnx=seed == args.seeds[0], progress=not args.no_progress)
                value = result.metrics[task.task.main_metric]
                scores.setdefault(name, {}).setdefault(variant, []).append(value)
                runs.setdefault(name, {}).setdefault(variant, []).append(str(out))
                logger.info("%s %s seed %d: %s %.4f (%.0f s)", name, variant, seed, task.task.main_metric, value,
                            time.perf_counter() - t)
    return {"scores": scores, "runs": runs}


def measure_latency(args, work: Path, runs: dict, pools: dict[str, Path], tasks: dict) -> dict:
    """ONNX Runtime, 1 thread, batch 1: the classifier without and with reference inputs at each sequence length,
    and the retrieval on real dev sentences, all interleaved; medians in ms."""
    from transformers import AutoTokenizer

    from nasbert.io import atomic_write_json
    from nasbert.latency.measure import OnnxRuntimeEngine, measure_interleaved
    from nasbert.finetune.refbert import ReferencePool

    path = work / "latency.json"
    if path.is_file():
        return json.loads(path.read_text())
    name = "sst2" if "sst2" in runs else next(iter(runs))
    plain = Path(runs[name]["plain"][0]) / "model"
    refs = Path(runs[name]["references"][0]) / "model"
    pool = ReferencePool.load(refs / "references")
    tokenizer = AutoTokenizer.from_pretrained(refs)
    R = args.latency_references or pool.max_reference_tokens
    torch.set_num_threads(1)  # the retrieval runs in-process: one thread too (numpy's bincount is serial)
    g = torch.Generator().manual_seed(0)
    candidates = {}
    for seq in args.latency_seq_lens:
        ids = torch.randint(1000, len(tokenizer), (1, seq), generator=g).numpy()
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        ref_feeds = {"reference_states": torch.randn(1, R, pool.hidden_size, generator=g).numpy(),
                     "reference_mask": np.ones((1, R), dtype=np.int64)}
        candidates[f"plain@{seq}"] = OnnxRuntimeEngine(plain / "model.onnx", feeds, threads=1)
        candidates[f"references@{seq}"] = OnnxRuntimeEngine(refs / "model.onnx", {**feeds, **ref_feeds}, threads=1)
    # Retrieval of a real sentence (a different dev sentence each call), states gathered and handed over as numpy.
    sentences = [tokenizer(e.text_a, e.text_b, truncation=True, max_length=max(args.latency_seq_lens),
                           return_tensors="np") for e in tasks[name].dev]
    position = [0]

    def retrieve() -> object:
        enc = sentences[position[0] % len(sentences)]
        position[0] += 1
        states, mask = pool.lookup(enc["input_ids"], enc["attention_mask"])
        return states.numpy(), mask.numpy()

    candidates["retrieval"] = retrieve
    timings = measure_interleaved(candidates, warmup=args.latency_warmup, repeats=args.latency_repeats,
                                  rounds=args.latency_rounds)
    result = {"task": name, "threads": 1, "batch": 1, "reference_tokens": R,
              "mean_reference_tokens": pool.meta["num_tokens"] / pool.num_samples,
              "retrieval_pool_samples": pool.num_samples,
              "timings": {k: t.to_dict() for k, t in timings.items()}}
    atomic_write_json(path, result)
    return result


def memory(pools: dict[str, Path], runs: dict) -> dict:
    from safetensors import safe_open

    from nasbert.finetune.refbert import ReferencePool

    out = {}
    for name, path in pools.items():
        pool = ReferencePool.load(path)
        disk = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        model_dir = Path(runs[name]["references"][0]) / "model"
        with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
            added = sum(f.get_tensor(k).numel() for k in f.keys() if "reference_proj" in k)
        out[name] = {"samples": pool.num_samples, "tokens": pool.meta["num_tokens"],
                     "hidden_size": pool.hidden_size, "max_reference_tokens": pool.max_reference_tokens,
                     "disk_bytes": disk, "memory_bytes": pool.nbytes, "build_seconds": pool.meta["build_seconds"],
                     "params_added": int(added)}
    return out


def similarities(runs: dict) -> dict:
    out = {}
    for name, variants in runs.items():
        values = [json.loads((Path(r) / "metrics.json").read_text())["references"] for r in variants["references"]]
        out[name] = {"train": values[0]["train_similarity"], "dev": values[0]["dev_similarity"]}
    return out


def table(result: dict, tasks: dict) -> str:
    def fmt(values):
        v = 100 * np.asarray(values)
        return f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.1f}"

    lines = ["| task | metric | without references | with references | difference | pool | build (s) | "
             "pool on disk (MB) | pool in memory (MB) | parameters added | TF-IDF similarity (train / dev) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, variants in result["scores"].items():
        m, s = result["memory"][name], result["similarity"][name]
        metric = METRIC_NAMES.get(tasks[name].task.main_metric, tasks[name].task.main_metric)
        diff = 100 * (np.mean(variants["references"]) - np.mean(variants["plain"]))
        lines.append(f"| {name} | {metric} | {fmt(variants['plain'])} | {fmt(variants['references'])} | "
                     f"{diff:+.1f} | {m['samples']:,} samples, {m['tokens']:,} tokens | {m['build_seconds']:.0f} | "
                     f"{m['disk_bytes'] / 1e6:.1f} | {m['memory_bytes'] / 1e6:.1f} | {m['params_added']:,} | "
                     f"{s['train']:.2f} / {s['dev']:.2f} |")
    lat = result["latency"]
    t = {k: v["median_ms"] for k, v in lat["timings"].items()}
    lines += ["", f"Latency, ONNX Runtime, 1 thread, batch 1 (medians, ms; {lat['reference_tokens']} reference tokens "
              f"per input, mean pool sample {lat['mean_reference_tokens']:.1f}; retrieval over the {lat['task']} pool "
              f"of {lat['retrieval_pool_samples']:,} samples, real dev sentences):", "",
              "| tokens | without references | with references | added by the model | retrieval | added in all |",
              "|---|---|---|---|---|---|"]
    for seq in sorted({int(k.split("@")[1]) for k in t if "@" in k}):
        plain, refs = t[f"plain@{seq}"], t[f"references@{seq}"]
        added = refs - plain + t["retrieval"]
        lines.append(f"| {seq} | {plain:.2f} | {refs:.2f} | {refs - plain:+.2f} | {t['retrieval']:.3f} | "
                     f"{added:+.2f} ({100 * added / plain:+.0f}%) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--student", default="runs/compare/family/nasbert-2x-10.8M", help="an exported nasbert model")
    p.add_argument("--teacher", default="builtin", help="the teacher whose states fill the pools")
    p.add_argument("--work", help="default: runs/compare/bench-refbert (-smoke with --smoke)")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    p.add_argument("--tasks", nargs="+", default=["sst2", "cola"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-seq-len", type=int, default=64)
    p.add_argument("--sst2-train-examples", type=int, default=4000,
                   help="the fixed random subset of SST-2's training set (compare.py's)")
    p.add_argument("--cola-train-examples", type=int, help="default: all 8,551")
    p.add_argument("--max-dev-examples", type=int, help="only the first N dev examples (default: all)")
    p.add_argument("--max-reference-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="torch threads for fine-tuning")
    p.add_argument("--latency-seq-lens", type=int, nargs="+", default=[64, 128])
    p.add_argument("--latency-references", type=int, help="reference tokens per input (default: the pool's max)")
    p.add_argument("--latency-repeats", type=int, default=200)
    p.add_argument("--latency-rounds", type=int, default=10)
    p.add_argument("--latency-warmup", type=int, default=10)
    p.add_argument("--smoke", action="store_true",
                   help="check the pipeline: 64 training and 64 dev examples per task, seed 0, half an epoch, "
                        "few latency repeats")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds, args.epochs, args.max_dev_examples = args.seeds[:1], 0.5, args.max_dev_examples or 64
        args.sst2_train_examples = args.cola_train_examples = 64
        args.latency_repeats, args.latency_rounds, args.latency_warmup = 10, 2, 2
    args.train_examples = {"sst2": args.sst2_train_examples, "cola": args.cola_train_examples}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    work = Path(args.work or ("runs/compare/bench-refbert" + ("-smoke" if args.smoke else "")))
    work.mkdir(parents=True, exist_ok=True)
    if not (Path(args.student) / "config.json").is_file():
        raise SystemExit(f"student {args.student!r} is not a model directory: run bench/compare.py (or nasbert run "
                         "--config experiments/compare/config.yaml --out runs/compare) first, or pass --student")
    start = time.time()

    tasks = {name: load_data(name, args, args.train_examples.get(name)) for name in args.tasks}
    pools = build_pools(args, work, tasks)
    result = finetune_all(args, work, tasks, pools)
    result["latency"] = measure_latency(args, work, result["runs"], pools, tasks)
    result["memory"] = memory(pools, result["runs"])
    result["similarity"] = similarities(result["runs"])
    text = table(result, tasks)
    (work / "table.md").write_text(text + "\n")
    (work / "results.json").write_text(json.dumps({**result, "args": vars(args),
                                                   "seconds": round(time.time() - start)}, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
