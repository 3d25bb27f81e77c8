"""Fine-tune given models on the quality panel with the recipes of docs/benchmarks.md, for models that are not in a
``nasbert report`` (e.g. the members of a new export, compared with the teacher and baselines a report measured).

Recipes (batch 32, mean pooling, 128 tokens, every model alike):

- SST-2: 3,000 training sentences, 2 epochs, lr 5e-5 or 2e-4 (the better on seed 0, then kept);
- CoLA: 4,000 training sentences, 2 epochs, lr 5e-5 or 2e-4 (the same rule);
- SICK: 3,000 training pairs, 4 epochs, lr 2e-4.

``--lrs TASK=LR,LR`` replaces a task's grid, ``--epochs TASK=N`` its epochs, ``--train-examples TASK=N`` its
training-set size (0: all), and ``--extend LR ...`` tries larger rates in turn, each only while the largest rate so
far is the best on seed 0: one rule for every model, so that a small model that wants a higher rate than the
teacher gets it (docs/benchmarks.md). ``--pair-encodings cross bi``
runs that grid for both ways of reading a pair task's texts (``nasbert finetune --pair-encoding``) and keeps the
best encoding and rate on seed 0.

Every run is a ``nasbert finetune`` directory under OUT/<model>/<task>/lr<lr>-seed<seed>; a finished run is read,
not trained again, so the script resumes where it was stopped. Scores (x 100, the task's main metric on its dev or
test split) go to --json.

    python bench/finetune_models.py --model 3x=runs/default/family-pruned2/nasbert-3x-15.3M \\
        --tasks sst2 sick cola --seeds 0 1 2 --data-dir ../shared/data --out runs/default/ft-pruned \\
        --json bench/quality_pruned.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

from nasbert.finetune import FinetuneConfig, finetune, load_task
from nasbert.io import atomic_write_json

RECIPES = {
    "sst2": {"max_train_examples": 3000, "epochs": 2.0, "lrs": (5e-5, 2e-4)},
    "cola": {"max_train_examples": 4000, "epochs": 2.0, "lrs": (5e-5, 2e-4)},
    "sick": {"max_train_examples": 3000, "epochs": 4.0, "lrs": (2e-4,)},
}


def _score(job: Path, task) -> float | None:
    metrics = job / "metrics.json"
    if not metrics.is_file():
        return None
    return 100.0 * float(json.loads(metrics.read_text())["dev"][task.main_metric])


def _machine(device: str) -> str:
    """Where the runs trained: the CPU (its cores and name) and the GPU where they used one."""
    import os

    import torch

    from nasbert.finetune import resolve_device
    from nasbert.latency.measure import _cpu_name

    where = resolve_device(device)
    cpu = f"{os.cpu_count()} CPU cores ({_cpu_name()})"
    return cpu if where.type == "cpu" else f"{torch.cuda.get_device_name(where)}, {cpu}"


def run(models: dict[str, str], tasks: list[str], seeds: list[int], data_dir: str, out: Path, threads: int,
        kd_teachers: Path | None = None, kd_lambda: float = 0.5, kd_temperature: float = 1.0,
        recipes: dict | None = None, extend: tuple[float, ...] = (), pair_encodings: tuple[str, ...] = ("cross",),
        device: str = "auto") -> dict:
    recipes = RECIPES if recipes is None else recipes
    results: dict = {}
    for task_name in tasks:
        recipe = recipes[task_name]
        data = load_task(task_name, data_dir=data_dir, max_train_examples=recipe["max_train_examples"])
        encodings = pair_encodings if len(data.task.text_fields) == 2 else ("cross",)
        for name, path in models.items():
            def one(lr: float, seed: int, encoding: str) -> float:
                extra = "" if recipe["epochs"] == RECIPES[task_name]["epochs"] else f"-ep{recipe['epochs']:g}"
                if recipe["max_train_examples"] != RECIPES[task_name]["max_train_examples"]:
                    extra += f"-n{recipe['max_train_examples'] or 'all'}"
                extra += "" if encoding == "cross" else f"-{encoding}"
                job = out / name / task_name / f"lr{lr:g}-seed{seed}{extra}"
                score = _score(job, data.task)
                if score is None:
                    started = time.perf_counter()
                    config = FinetuneConfig(epochs=recipe["epochs"], batch_size=32, lr=lr, max_seq_len=128,
                                            seed=seed, pooling="mean", threads=threads,
                                            max_train_examples=recipe["max_train_examples"],
                                            kd_lambda=kd_lambda, kd_temperature=kd_temperature,
                                            pair_encoding=encoding)
                    kd_teacher = None if kd_teachers is None else kd_teachers / task_name / f"seed{seed}"
                    finetune(path, data, out=job, config=config, kd_teacher=kd_teacher, onnx=False, progress=False,
                             device=device)
                    score = _score(job, data.task)
                    print(f"{name} {task_name} lr {lr:g} seed {seed}{extra}: {score:.2f} "
                          f"({time.perf_counter() - started:.0f} s)", flush=True)
                return score

            grids = {}
            for encoding in encodings:
                grid = grids[encoding] = {lr: one(lr, seeds[0], encoding) for lr in recipe["lrs"]}
                for lr in extend:  # a larger rate, only while the grid's largest is the best so far
                    if max(grid, key=grid.get) != max(grid) or lr <= max(grid):
                        break
                    grid[lr] = one(lr, seeds[0], encoding)
            # the best (encoding, rate) on the first seed; ties: the first encoding listed, the smaller rate
            encoding, lr = max(((e, r) for e in encodings for r in grids[e]),
                               key=lambda er: (grids[er[0]][er[1]], -encodings.index(er[0]), -er[1]))
            scores = [grids[encoding][lr]] + [one(lr, s, encoding) for s in seeds[1:]]
            entry = {"lr": lr, "grid_seed0": {f"{k:g}": v for k, v in grids[encoding].items()}, "seeds": seeds,
                     "scores": scores, "mean": statistics.mean(scores),
                     "std": statistics.stdev(scores) if len(scores) > 1 else 0.0}
            if len(data.task.text_fields) == 2:
                entry["pair_encoding"] = encoding
                entry["grids_seed0"] = {e: {f"{k:g}": v for k, v in g.items()} for e, g in grids.items()}
            results.setdefault(name, {"path": path})[task_name] = entry
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                        help="a model to fine-tune (repeat)")
    parser.add_argument("--tasks", nargs="+", default=["sst2", "sick", "cola"], choices=sorted(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--out", required=True, help="folder of the fine-tuning runs")
    parser.add_argument("--json", required=True, help="where the scores go")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto (a CUDA GPU where torch sees one), cpu, cuda, cuda:N")
    parser.add_argument("--kd-teachers", type=Path, metavar="ROOT",
                        help="prediction-layer distillation: ROOT/<task>/seed<N> is the teacher fine-tuned on that "
                             "task with that seed (a model directory)")
    parser.add_argument("--kd-lambda", type=float, default=0.5, help="weight of the distillation term")
    parser.add_argument("--kd-temperature", type=float, default=1.0)
    parser.add_argument("--lrs", action="append", default=[], metavar="TASK=LR[,LR...]",
                        help="another learning-rate grid for a task (repeat per task); runs already made are reused")
    parser.add_argument("--extend", nargs="+", type=float, default=[], metavar="LR",
                        help="larger rates tried in turn, each only while the largest rate so far is the best "
                             "on the first seed (the same rule for every model)")
    parser.add_argument("--epochs", action="append", default=[], metavar="TASK=N",
                        help="another number of epochs for a task (repeat per task)")
    parser.add_argument("--train-examples", action="append", default=[], metavar="TASK=N",
                        help="another training-set size for a task (repeat per task; 0: the whole training set)")
    parser.add_argument("--pair-encodings", nargs="+", choices=["cross", "bi"], default=["cross"],
                        help="pair tasks: each model gets the best of these encodings and rates on the first seed "
                             "(nasbert finetune --pair-encoding)")
    args = parser.parse_args()
    recipes = {task: dict(recipe) for task, recipe in RECIPES.items()}
    keys = {"--lrs": "lrs", "--epochs": "epochs", "--train-examples": "max_train_examples"}
    for option, values, parse in (("--lrs", args.lrs, lambda v: tuple(float(x) for x in v.split(","))),
                                  ("--epochs", args.epochs, float),
                                  ("--train-examples", args.train_examples, lambda v: int(v) or None)):
        for item in values:
            task, sep, value = item.partition("=")
            try:
                if not sep or task not in recipes:
                    raise ValueError
                recipes[task][keys[option]] = parse(value)
            except ValueError:
                parser.error(f"{option} {item!r}: give TASK=VALUE with TASK one of {', '.join(sorted(recipes))}")
    if args.kd_teachers is not None:
        missing = [f"{t}/seed{s}" for t in args.tasks for s in args.seeds
                   if not (args.kd_teachers / t / f"seed{s}").is_dir()]
        if missing:
            parser.error(f"--kd-teachers {args.kd_teachers}: no fine-tuned teacher at {', '.join(missing)}")
    models = {}
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_dir():
            parser.error(f"--model {item!r}: give NAME=DIR with an exported model directory")
        models[name] = path
    started = time.perf_counter()
    results = run(models, args.tasks, args.seeds, args.data_dir, Path(args.out), args.threads,
                  args.kd_teachers, args.kd_lambda, args.kd_temperature, recipes,
                  tuple(args.extend), tuple(dict.fromkeys(args.pair_encodings)), args.device)
    atomic_write_json(args.json, {
        "recipes": {t: {**recipes[t], "lrs": list(recipes[t]["lrs"])} for t in args.tasks},
        "extend": args.extend, "pair_encodings": args.pair_encodings,
        "common": "batch 32, mean pooling, 128 tokens, nasbert finetune",
        "kd": None if args.kd_teachers is None else {"teachers": str(args.kd_teachers), "lambda": args.kd_lambda,
                                                     "temperature": args.kd_temperature},
        "date": str(datetime.date.today()),
        "machine": _machine(args.device), "seconds": round(time.perf_counter() - started),
        "models": results})
    for name, tasks in results.items():
        print(name, "  ".join(f"{t} {r['mean']:.1f} ± {r['std']:.1f} (lr {r['lr']:g}"
                              f"{', ' + r['pair_encoding'] if 'pair_encoding' in r else ''})"
                              for t, r in tasks.items() if t != "path"))


if __name__ == "__main__":
    main()
