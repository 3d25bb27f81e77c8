"""Ray scaling: search trials per minute with 1, 2, 4 Ray workers (the real objective: every candidate extracted,
calibrated and scored) and data-parallel training tokens per second with 1 and 2 Ray Train workers, one thread
each. Writes bench/results/ray_scaling.json (table in docs/benchmarks.md, "Ray scaling").

    python bench/ray_scaling.py --run runs/default            # a trained run of an elastic space
    python bench/ray_scaling.py --run runs/default --workers 1 2 --trials 40 --train-steps 12 --train-batch 16

Every configuration runs on one local Ray instance started here with as many logical CPUs as the most workers
asked for; the machine's cores are what they are (the record says how many).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def search_rate(run, config, workers: int, trials: int) -> dict:
    import optuna

    from nasbert.run.stages import calibrated_objective
    from nasbert.search.ray_search import run_ray_search

    objective, _ = calibrated_objective(run, config)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = run_ray_search(objective, budgets=config.search.budgets, trials=trials, workers=workers,
                                out_dir=tmp, enqueue=objective.starting_points(), show_progress=False,
                                seed=config.seed)
        seconds = time.perf_counter() - start
        study = optuna.load_study(study_name="nasbert", storage=f"sqlite:///{tmp}/study.db")
        done = sorted(t.datetime_complete for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    # steady state: from the moment every worker has finished a trial (its start-up, the objective's transfer
    # and load, is behind it) to the last trial
    steady = (len(done) - workers) / (done[-1] - done[workers - 1]).total_seconds() * 60
    return {"workers": workers, "trials": len(result.trials), "seconds": round(seconds, 1),
            "trials_per_min": round(len(result.trials) / seconds * 60, 1),
            "steady_trials_per_min": round(steady, 1),
            "first_trial_s": round((done[0] - study.trials[0].datetime_start).total_seconds(), 1)}


def train_rate(run_path: Path, config, workers: int, steps: int, tmp: Path, batch_size: int) -> dict:
    from nasbert.run import RunDir
    from nasbert.run.stages import stage_supernet
    from nasbert.run.ray_train import train_data_parallel

    shrink = replace(config.train.shrink, enabled=False)
    train = replace(config.train, steps=steps, workers=workers, threads=1, eval_every=0, checkpoint_every=steps,
                    shrink=shrink, batch_size=batch_size)
    cfg = replace(config, train=train)
    run = RunDir.open(tmp / f"train-{workers}", cfg)
    stage_supernet(run, cfg)
    start = time.perf_counter()
    train_data_parallel(run, cfg, show_progress=False)
    seconds = time.perf_counter() - start
    rates = [json.loads(line)["tokens_per_s"] for line in (run.train_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(line).get("event") == "train"][2:]  # the first steps warm up
    return {"workers": workers, "steps": steps, "batch_size": train.batch_size, "seconds": round(seconds, 1),
            "tokens_per_s_median": round(statistics.median(rates), 1)}


def main() -> int:
    import ray

    from nasbert.latency.measure import host
    from nasbert.run import RunDir

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/default", help="a trained run of an elastic space")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--train-steps", type=int, default=16)
    p.add_argument("--train-workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--train-batch", type=int, default=64, help="global batch (sequences of the run's length)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "ray_scaling.json"))
    args = p.parse_args()

    run = RunDir.load(args.run)
    config = run.config
    ray.init(num_cpus=max(args.workers + args.train_workers), include_dashboard=False, log_to_driver=False)
    search, train = [], []
    try:
        for w in args.workers:
            search.append(search_rate(run, config, w, args.trials))
            print(json.dumps(search[-1]), file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            for w in args.train_workers:
                train.append(train_rate(Path(args.run), config, w, args.train_steps, Path(tmp), args.train_batch))
                print(json.dumps(train[-1]), file=sys.stderr)
    finally:
        ray.shutdown()
    base_s, base_t = search[0]["trials_per_min"], train[0]["tokens_per_s_median"] if train else None
    base_steady = search[0]["steady_trials_per_min"]
    for r in search:
        r["speedup"] = round(r["trials_per_min"] / base_s, 2)
        r["steady_speedup"] = round(r["steady_trials_per_min"] / base_steady, 2)
    for r in train:
        r["speedup"] = round(r["tokens_per_s_median"] / base_t, 2)
    out = {"command": "python " + " ".join(sys.argv), "machine": host(), "run": str(args.run),
           "search": search, "train": train}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
