"""Searched vs hand-designed models at equal measured latency, fine-tuned on SST-2 and CoLA (one command).

    python bench/compare.py                      # everything below, resumable; about 2 hours on 2 CPU cores

1. ``nasbert run --config experiments/compare/config.yaml --out runs/compare``: the supernet distilled
   block-wise from the built-in teacher on the Wikipedia sample, searched at 2x / 3x / 4x, family exported.
2. Hand-designed baselines in NAS-BERT's BERTx style: every uniform model of the same space (L layers of
   MHA + FFN at one width W, spread over the blocks as evenly as possible). All of them, the family members
   and the teacher are timed together (ONNX Runtime, the run's latency settings, interleaved). For each
   budget the baseline is the slowest uniform model whose measured latency is still at most the searched
   model's (the closest match from below).
3. Both models of a budget are taken from the same trained supernet (so initialised from the teacher the same
   way) and get the same whole-model distillation (``--distill-steps`` on the same corpus and seed).
4. Every model and the teacher are fine-tuned on SST-2 and CoLA with one recipe and ``--seeds`` seeds.
5. The students are fine-tuned again on ``--kd-tasks`` (SST-2) with prediction-layer distillation from the
   teacher fine-tuned with the same seed.

Everything lands in ``--work`` (default ``runs/compare/bench``), stage by stage, so a stopped benchmark goes on
where it was; the table is printed and written to ``WORK/table.md`` and ``WORK/results.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("compare")


def run_pipeline(config: str, run: Path) -> None:
    if (run / "family" / "family.json").is_file():
        return
    cmd = ["nasbert", "run", "--config", config, "--out", str(run), "--no-progress"]
    logger.info("$ %s", " ".join(cmd))
    subprocess.run(cmd, check=True)


def run_config(run: Path):
    from nasbert.run import RunConfig

    manifest = json.loads((run / "manifest.json").read_text())
    return RunConfig.from_dict(manifest["config"], source=str(run / "manifest.json"))


def choose_models(run: Path, work: Path, repeats: int) -> dict:
    """The searched member and the hand-designed baseline of every budget, timed together with the teacher."""
    from nasbert import Arch, Family, SearchSpace, SuperNet, load_teacher
    from nasbert.latency.models import measure_models
    from nasbert.io import atomic_write_json
    from nasbert.quality import uniform_baselines

    path = work / "models.json"
    if path.is_file():
        return json.loads(path.read_text())
    family = Family.load(run / "family")
    supernet = SuperNet.from_pretrained(run / "supernet")
    space: SearchSpace = supernet.space
    teacher, _, _ = load_teacher(run_config(run).teacher)
    candidates = {m.name: Arch.from_dict(m.arch) for m in family.models}
    # every uniform model of the space (L layers of MHA + FFN at one width, spread over the blocks)
    baselines = {b.name: b.arch for b in uniform_baselines(space)}
    models = {name: supernet.extract(arch) for name, arch in {**candidates, **baselines}.items()}
    d = family.device
    logger.info("timing %d models and the teacher together (%s, %d thread(s), batch %d, %d tokens)", len(models),
                d["engine"], d["threads"], d["batch"], d["seq_len"])
    measured = measure_models(models, teacher, engine=d["engine"], device=d["device"], threads=d["threads"],
                              batch=d["batch"], seq_len=d["seq_len"], vocab_size=space.teacher.vocab_size,
                              repeats=repeats, rounds=6)
    chosen = {}
    for member in family.models:
        limit = measured.latency_ms[member.name]
        # The uniform model closest to the searched one's latency from below (ties: more parameters).
        fits = [(measured.latency_ms[name], space.num_params(a), name) for name, a in baselines.items()
                if measured.latency_ms[name] <= limit]
        if not fits:
            raise SystemExit(f"no uniform model is as fast as {member.name} ({limit:.2f} ms)")
        *_, base = max(fits)
        chosen[member.budget] = {
            kind: {"name": name, "arch": str(arch), "params": space.num_params(arch),
                   "flops": space.flops(arch, d["seq_len"]), "latency_ms": measured.latency_ms[name],
                   "speedup": measured.teacher_latency_ms / measured.latency_ms[name]}
            for kind, name, arch in (("searched", member.name, candidates[member.name]),
                                     ("hand-designed", base, baselines[base]))
        }
    result = {"teacher_latency_ms": measured.teacher_latency_ms, "device": d,
              "teacher_params": sum(p.numel() for p in teacher.parameters()),
              "teacher_flops": space.flops(space.teacher_arch(), d["seq_len"]),
              "all_latency_ms": measured.latency_ms, "budgets": chosen}
    atomic_write_json(path, result)
    return result


def distill_models(run: Path, work: Path, chosen: dict, *, steps: int, batch_size: int, lr: float, seed: int) -> dict:
    """Whole-model distillation of every chosen model, the same budget for all; returns {name: model dir}."""
    from nasbert import Arch, SuperNet, load_teacher
    from nasbert.data.corpus import load_corpus
    from nasbert.export.hf import save_hf_model
    from nasbert.io import atomic_write_json
    from nasbert.utils import cache_dir
    from nasbert.training.distill import DistillConfig, distill_arch

    todo = {m["name"]: m["arch"] for b in chosen["budgets"].values() for m in b.values()}
    dirs = {name: work / "distilled" / name for name in todo}
    if all((d / "distill.json").is_file() for d in dirs.values()):
        return dirs
    config = run_config(run)
    supernet = SuperNet.from_pretrained(run / "supernet")
    teacher, tokenizer, _ = load_teacher(config.teacher)
    corpus = load_corpus(config.corpus, tokenizer, cache_dir=cache_dir() / "corpus")
    cfg = DistillConfig(steps=steps, batch_size=batch_size, lr=lr)
    for name, arch in todo.items():
        if (dirs[name] / "distill.json").is_file():
            continue
        result = distill_arch(supernet, Arch.parse(arch), teacher, corpus, tokenizer, config=cfg, seed=seed,
                              progress=False)
        save_hf_model(result.model, dirs[name], tokenizer=tokenizer)
        atomic_write_json(dirs[name] / "distill.json", {
            "arch": arch, "steps": steps, "valid_loss_before": result.valid_loss_before,
            "valid_loss_after": result.valid_loss_after, "seconds": result.seconds})
        logger.info("%s: whole-model loss %.4f -> %.4f in %.0f s", name, result.valid_loss_before,
                    result.valid_loss_after, result.seconds)
    return dirs


def finetune_all(models: dict, work: Path, *, tasks, seeds, data_dir: str, recipe: dict, kd: bool = False) -> dict:
    """Fine-tune every model on every task with every seed; with ``kd``, only the students, with
    prediction-layer distillation from the teacher fine-tuned with the same seed ((1 - 0.5) CE + 0.5 KL,
    NAS-BERT's second stage)."""
    from nasbert.finetune import FinetuneConfig, finetune, load_task

    scores: dict = {}
    for seed in seeds:  # seed by seed, so that a stopped benchmark already holds whole seeds
        for task_name in tasks:
            config = FinetuneConfig(seed=seed, **recipe.get(task_name, {}), **recipe["common"])
            # The training subset is fixed (seed 0) and the same for every model and seed.
            task = load_task(task_name, data_dir=data_dir, max_train_examples=config.max_train_examples, seed=0)
            teacher = work / "finetune" / task_name / f"teacher-seed{seed}" / "model" if kd else None
            for name, model in models.items():
                if kd and name == "teacher":
                    continue
                # The teacher is an HF BERT (its classifier pools [CLS]); nasbert models pool as config.pooling
                # says ("auto": the mean of the real tokens).
                tag = "" if name == "teacher" or kd else f"-{'mean' if config.pooling == 'auto' else config.pooling}"
                out = work / ("finetune-kd" if kd else "finetune") / task_name / f"{name}{tag}-seed{seed}"
                t = time.perf_counter()
                result = finetune(str(model), task, out=out, config=config, kd_teacher=teacher, onnx=False,
                                  progress=False)
                scores.setdefault(name, {}).setdefault(task_name, []).append(result.metrics[task.task.main_metric])
                logger.info("%s%s %s seed %d: %s %.4f (%.0f s)", "KD " if kd else "", task_name, name, seed,
                            task.task.main_metric, result.metrics[task.task.main_metric], time.perf_counter() - t)
    return scores


def kd_table(chosen: dict, scores: dict, kd_scores: dict) -> str:
    lines = ["| budget | model | task | without KD | with KD |", "|---|---|---|---|---|"]
    for budget, pair in chosen["budgets"].items():
        for kind, m in pair.items():
            for task, values in kd_scores.get(m["name"], {}).items():
                a, b = 100 * np.asarray(scores[m["name"]][task]), 100 * np.asarray(values)
                lines.append(f"| {budget} | {kind} ({m['name']}) | {task} | {a.mean():.1f} ± {a.std(ddof=1):.1f} | "
                             f"{b.mean():.1f} ± {b.std(ddof=1):.1f} |")
    return "\n".join(lines)


def table(chosen: dict, scores: dict, distilled: dict) -> str:
    def fmt(values):
        v = 100 * np.asarray(values)
        return f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0:.1f}"

    t = scores["teacher"]
    t_sst, t_cola = np.mean(t["sst2"]), np.mean(t["cola"])
    lines = [("| budget | model | architecture | params | GFLOPs @128 | latency (ms) | speed-up | KD loss | "
             "SST-2 acc | CoLA MCC | % of teacher (SST-2 / CoLA) |"),
             "|---|---|---|---|---|---|---|---|---|---|---|",
             (f"| - | teacher (MiniLM-L6-H384) | 6 x (MHA+FFN) @384 | {chosen['teacher_params'] / 1e6:.2f} M | "
             f"{chosen['teacher_flops'] / 1e9:.2f} | {chosen['teacher_latency_ms']:.2f} | 1.00x | - | "
             f"{fmt(t['sst2'])} | {fmt(t['cola'])} | 100 / 100 |")]
    for budget, pair in chosen["budgets"].items():
        for kind, m in pair.items():
            s = scores[m["name"]]
            kd = distilled.get(m["name"], {})
            lines.append(
                f"| {budget} | {kind} | `{m['arch'].replace('|', ' / ')}` | {m['params'] / 1e6:.2f} M | {m['flops'] / 1e9:.2f} | "
                f"{m['latency_ms']:.2f} | {m['speedup']:.2f}x | {kd.get('valid_loss_after', float('nan')):.4f} | "
                f"{fmt(s['sst2'])} | {fmt(s['cola'])} | "
                f"{100 * np.mean(s['sst2']) / t_sst:.1f} / {100 * np.mean(s['cola']) / t_cola:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="experiments/compare/config.yaml")
    p.add_argument("--run", default="runs/compare")
    p.add_argument("--work", help="default: RUN/bench")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    p.add_argument("--distill-steps", type=int, default=150)
    p.add_argument("--distill-batch-size", type=int, default=16)
    p.add_argument("--distill-lr", type=float, default=1e-4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tasks", nargs="+", default=["sst2", "cola"])
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-seq-len", type=int, default=64)
    p.add_argument("--sst2-train-examples", type=int, default=4000,
                   help="a fixed random subset of SST-2's 67,349 training sentences (CPU time)")
    p.add_argument("--pooling", choices=["auto", "cls", "mean"], default="auto",
                   help="what the nasbert classifiers pool (auto = mean of the real tokens)")
    p.add_argument("--kd-tasks", nargs="*", default=["sst2"],
                   help="tasks on which the students are fine-tuned again with prediction-layer KD")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--latency-repeats", type=int, default=20)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    work = Path(args.work) if args.work else run / "bench"
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()

    run_pipeline(args.config, run)
    chosen = choose_models(run, work, args.latency_repeats)
    dirs = distill_models(run, work, chosen, steps=args.distill_steps, batch_size=args.distill_batch_size,
                          lr=args.distill_lr, seed=0)
    distilled = {name: json.loads((d / "distill.json").read_text()) for name, d in dirs.items()}
    models = {"teacher": "builtin", **{name: str(d) for name, d in dirs.items()}}
    recipe = {"common": {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                             "max_seq_len": args.max_seq_len, "threads": args.threads, "pooling": args.pooling},
              "sst2": {"max_train_examples": args.sst2_train_examples}}
    scores = finetune_all(models, work, tasks=args.tasks, seeds=args.seeds, data_dir=args.data_dir, recipe=recipe)

    kd_scores = finetune_all(models, work, tasks=args.kd_tasks, seeds=args.seeds, data_dir=args.data_dir,
                             recipe=recipe, kd=True) if args.kd_tasks else {}
    text = table(chosen, scores, distilled)
    if kd_scores:
        text += "\n\n" + kd_table(chosen, scores, kd_scores)
    (work / "table.md").write_text(text + "\n")
    (work / "results.json").write_text(json.dumps({
        "models": chosen, "distilled": distilled, "scores": scores, "kd_scores": kd_scores, "recipe": recipe,
        "args": vars(args),
        "seconds": round(time.time() - start)}, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
