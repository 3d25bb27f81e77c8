"""Pool the panel's runs over more seeds: scores of the chosen (rate, encoding) per model and task from several
``bench/finetune_models.py`` JSONs (the seed-0 grids and their seeds 1-2, then further seeds run at the chosen
point with ``--seeds 3 4 --lrs TASK=LR``), and the panel (the mean of the tasks, per seed) with its mean, spread,
% of the teacher and the leads over the free baselines of each budget.

    python bench/quality_seeds.py --json bench/quality_lr_grid_family.json bench/quality_lr_grid_free.json \\
        bench/quality_pair_bi.json runs/seeds34_*.json --sick-bi 3x 4x bottom2 bottom1 --out bench/quality_5seeds.json

A JSON with a ``bundle`` (or ``runs``) key holds several such files (name -> content), e.g. those of runs made
elsewhere.
``--member 3x=3x-ffn`` also compares another model at a budget, as if it were that budget's member.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
from pathlib import Path

TASKS = ("sst2", "sick", "cola")
#: the member of each budget and the free baselines that meet it (measured speed-ups in docs/benchmarks.md)
BUDGETS = {"2x": ("2x", ("bottom2", "bottom1")), "3x": ("3x", ("bottom1",)), "4x": ("4x", ("bottom1",))}


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def pool(files: list[Path], sick_bi: set[str], points: dict | None = None) -> dict[str, dict[str, dict[int, float]]]:
    """model -> task -> seed -> score, for the point each model was run at on that task (SICK read apart for the
    models in ``sick_bi``); two files that give one (model, task, seed) different scores are an error. ``points``,
    where given, is filled with model -> task -> {"lr", "pair_encoding"} (the point of the file read last)."""
    scores: dict = {}
    sources = []
    for path in files:
        data = json.loads(path.read_text())
        parts = data.get("bundle") or (data["runs"] if isinstance(data.get("runs"), dict) else None)
        sources += [(f"{path}:{name}", part) for name, part in parts.items()] if parts else [(str(path), data)]
    for path, data in sources:
        for model, entry in data["models"].items():
            for key, result in entry.items():
                if key == "path":
                    continue
                task = "sick" if key.startswith("sick") else key
                encoding = result.get("pair_encoding", "cross")
                if task == "sick" and (encoding == "bi") != (model in sick_bi):
                    continue
                if points is not None:
                    points.setdefault(model, {})[task] = {"lr": float(result["lr"]), "pair_encoding": encoding}
                for seed, score in zip(result["seeds"], result["scores"]):
                    known = scores.setdefault(model, {}).setdefault(task, {}).get(seed)
                    if known is not None and abs(known - score) > 1e-9:
                        raise SystemExit(f"{path}: {model} {task} seed {seed} scores {score}, elsewhere {known}")
                    scores[model][task][seed] = score
    return scores


def summarise(scores: dict, seeds: list[int]) -> dict:
    out = {}
    for model, tasks in scores.items():
        missing = [(t, s) for t in TASKS for s in seeds if s not in tasks.get(t, {})]
        if missing:
            continue
        panel = [statistics.mean(tasks[t][s] for t in TASKS) for s in seeds]
        out[model] = {**{t: {"scores": [tasks[t][s] for s in seeds], **_stats([tasks[t][s] for s in seeds])}
                         for t in TASKS}, "panel": {"scores": panel, **_stats(panel)}}
    teacher = out["teacher"]["panel"]["mean"]
    for model in out.values():
        model["panel"]["pct_teacher"] = 100.0 * model["panel"]["mean"] / teacher
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", nargs="+", type=Path, required=True)
    parser.add_argument("--sick-bi", nargs="*", default=[], help="models whose SICK runs read the pair apart")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--member", action="append", default=[], metavar="BUDGET=MODEL",
                        help="also compare MODEL with the free baselines of BUDGET (repeat)")
    args = parser.parse_args()
    scores = pool(args.json, set(args.sick_bi))
    members = {budget: [member] for budget, (member, _) in BUDGETS.items()}
    for item in args.member:
        budget, _, model = item.partition("=")
        if budget not in BUDGETS or not model:
            parser.error(f"--member {item!r}: give BUDGET=MODEL with BUDGET one of {', '.join(BUDGETS)}")
        members[budget].append(model)
    result = {"date": datetime.date.today().isoformat(), "sources": [str(p) for p in args.json],
              "members": members,
              "sick_bi": args.sick_bi, "views": {}}
    for name, seeds in (("all seeds", args.seeds), ("without seed 0 (which chose the rates)", args.seeds[1:])):
        table = summarise(scores, seeds)
        leads = {}
        for budget, (_, free) in BUDGETS.items():
            best = max((f for f in free if f in table), key=lambda f: table[f]["panel"]["mean"], default=None)
            for member in members[budget]:
                if member not in table or best is None:
                    continue
                m, b = table[member]["panel"], table[best]["panel"]
                per_seed = [x - y for x, y in zip(m["scores"], b["scores"])]
                key = budget if member == members[budget][0] else f"{budget} ({member})"
                leads[key] = {"member": member, "best_free": best, "lead": m["mean"] - b["mean"],
                              "spreads": [m["std"], b["std"]], "beats_by_more_than_spread":
                              m["mean"] - b["mean"] > max(m["std"], b["std"]),
                              "per_seed": per_seed, "per_seed_std": _stats(per_seed)["std"],
                              "per_task": {t: table[member][t]["mean"] - table[best][t]["mean"] for t in TASKS}}
        result["views"][name] = {"seeds": seeds, "models": table, "leads": leads}
        print(f"== {name}: seeds {seeds}")
        for model, row in table.items():
            cells = "  ".join(f"{t} {row[t]['mean']:5.1f} ± {row[t]['std']:.1f}" for t in TASKS)
            p = row["panel"]
            print(f"{model:8s} {cells}  panel {p['mean']:.2f} ± {p['std']:.2f} ({p['pct_teacher']:.1f}%)")
        for budget, lead in leads.items():
            print(f"{budget}: {lead['member']} - {lead['best_free']} = {lead['lead']:+.2f} "
                  f"(spreads {lead['spreads'][0]:.2f} / {lead['spreads'][1]:.2f})")
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
