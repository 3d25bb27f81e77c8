"""The quality table of a family against its free baselines and the teacher, from fine-tuning runs already made,
with every model timed again in one interleaved run with the teacher: ``bench/quality_results.json`` in the shape
``nasbert report`` writes (the teacher's per-seed scores, one row per budget and model), its markdown table and
its plot (panel score against measured latency).

    python bench/quality_family.py --teacher runs/cuts/teacher \\
        --row 2x:searched:2x-cal=runs/cuts/2x-cal --row 2x:layerdrop:bottom2=runs/cuts/bottom2 ... \\
        --json bench/quality_5seeds.json ... --sick-bi bottom2 bottom1 ... \\
        --out bench/quality_results.json --plot docs/quality_family.png

A row is ``BUDGET:KIND:NAME=DIR``: NAME is the model's name in the fine-tuning JSONs (``--json``, pooled as
``bench/quality_seeds.py`` does: the point each model chose per task, SICK read apart for ``--sick-bi``), DIR its
model directory (timed; a directory in several rows is timed once). Each row gets the seeds of ``--seeds`` it has
on every task (at least ``--min-seeds``); the teacher (the runs named ``teacher``) every seed it has, per task, and
its panel is the mean of its task means. A lead is the mean of the per-seed differences over the seeds both rows
have. ``--timing`` keeps the timing, so that a second call with more runs does not time again (``--retime`` does);
rows it lacks are timed in a run of their own with the teacher, their speed-ups that run's (``run`` in the timing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np

from nasbert.io import atomic_write_json, atomic_write_text
from nasbert.latency.models import measure_models
from nasbert.modeling import NasBertModel
from nasbert.quality.baselines import KINDS as BASELINE_KINDS
from nasbert.quality.report import markdown_table, plot
from quality_seeds import TASKS, _stats, pool  # bench/ is on sys.path when a script in it runs

KINDS = ("searched", *BASELINE_KINDS)


def parse_row(text: str) -> dict:
    head, _, path = text.partition("=")
    parts = head.split(":")
    if len(parts) != 3 or not path or parts[1] not in KINDS:
        raise SystemExit(f"--row {text!r}: give BUDGET:KIND:NAME=DIR with KIND one of {', '.join(KINDS)}")
    budget_factor(parts[0])
    return {"budget": parts[0], "kind": parts[1], "name": parts[2], "path": path}


def budget_factor(budget: str) -> float:
    """The speed-up a budget asks for: ``"3x"`` -> 3.0."""
    try:
        return float(budget.removesuffix("x"))
    except ValueError:
        raise SystemExit(f"budget {budget!r}: give a speed-up such as 2x") from None


def time_models(paths: list[str], teacher: str, reps: int) -> dict:
    """Median latency (ms) and speed-up of each model directory over ``reps`` interleaved runs with the teacher
    (ONNX Runtime, 1 thread, batch 1, 128 tokens; 100 runs over 20 rounds per repetition)."""
    models = {p: NasBertModel.from_pretrained(p).eval() for p in paths}
    ref = NasBertModel.from_pretrained(teacher).eval()
    teacher_ms, speedups, latency = [], {p: [] for p in paths}, {p: [] for p in paths}
    for rep in range(reps):
        m = measure_models(models, ref, engine="onnxruntime", device="cpu", threads=1, batch=1, seq_len=128,
                           vocab_size=ref.config.vocab_size, seed=rep, repeats=100, rounds=20)
        teacher_ms.append(m.teacher_latency_ms)
        for p in paths:
            latency[p].append(m.latency_ms[p])
            speedups[p].append(m.teacher_latency_ms / m.latency_ms[p])
        print(f"timing {rep + 1}/{reps}: teacher {m.teacher_latency_ms:.2f} ms", flush=True)
    return {"date": dt.date.today().isoformat(), "teacher": teacher, "reps": reps,
            "machine": f"{platform.processor() or platform.machine()}; ONNX Runtime 1 thread, batch 1, 128 tokens, "
                       "100 runs over 20 rounds interleaved with the teacher per repetition",
            "teacher_ms": teacher_ms, "teacher_params": sum(p.numel() for p in ref.parameters()),
            "models": {p: {"latency_ms": latency[p], "speedups": speedups[p],
                           "params": sum(x.numel() for x in models[p].parameters())} for p in paths}}


def add_timing(timing: dict, extra: dict) -> dict:
    """``timing`` with the models of ``extra``, a later run's: each keeps the speed-ups of the run it was timed in
    (against the teacher of that run), with that run's date and teacher latency (``run``), as a host that has
    slowed since moves every latency but much less the ratios."""
    run = {"date": extra["date"], "teacher_ms": extra["teacher_ms"], "machine": extra["machine"]}
    models = {**timing["models"], **{p: {**m, "run": run} for p, m in extra["models"].items()}}
    return {**timing, "models": models}


def timed_apart_note(results: dict) -> str:
    """A line for the table naming the rows timed in a later run than the rest (:func:`add_timing`), or ''."""
    apart = {}
    for row in results["rows"]:
        run = results["timing"]["models"][row["path"]].get("run")
        if run:
            apart.setdefault((run["date"], float(np.median(run["teacher_ms"]))), []).append(row["name"])
    return "".join(f"\nTimed in a later run of their own with the teacher ({date}, teacher {ms:.2f} ms; their "
                   f"speed-ups are that run's, their latency this table's teacher latency over it): "
                   f"{', '.join(dict.fromkeys(names))}.\n" for (date, ms), names in apart.items())


def build(rows: list[dict], scores: dict, points: dict, timing: dict, seeds: list[int], min_seeds: int) -> dict:
    if "teacher" not in scores or any(t not in scores["teacher"] for t in TASKS):
        raise SystemExit(f"the fine-tuning JSONs hold no teacher runs on every task of {TASKS}")
    teacher = {t: [scores["teacher"][t][s] for s in sorted(scores["teacher"][t])] for t in TASKS}
    teacher_panel = statistics.mean(statistics.mean(v) for v in teacher.values())
    shared = sorted(set.intersection(*(set(scores["teacher"][t]) for t in TASKS)))
    teacher_ms = float(np.median(timing["teacher_ms"]))
    out = []
    for row in rows:
        have = scores.get(row["name"], {})
        used = [s for s in seeds if all(s in have.get(t, {}) for t in TASKS)]
        if len(used) < min_seeds:
            raise SystemExit(f"{row['name']}: runs on every task for seeds {used} only, fewer than --min-seeds "
                             f"{min_seeds}; fine-tune it on the missing seeds (bench/finetune_models.py)")
        s = {t: [have[t][i] for i in used] for t in TASKS}
        panel = [statistics.mean(s[t][i] for t in TASKS) for i in range(len(used))]
        stats = _stats(panel)
        t = timing["models"][row["path"]]
        speedup = float(np.median(t["speedups"]))
        if speedup < budget_factor(row["budget"]):
            raise SystemExit(f"{row['name']} runs at {speedup:.2f}x, which misses its budget {row['budget']}: give "
                             "it a budget it meets")
        # a row timed in a later run (add_timing) is placed at this run's teacher latency over its speed-up
        latency = float(np.median(t["latency_ms"])) if "run" not in t else teacher_ms / speedup
        out.append({**row, "seeds": used, "arch": None, "distill_steps": 0, "params": t["params"],
                    "latency_ms": latency, "speedup": speedup,
                    "speedup_range": [min(t["speedups"]), max(t["speedups"])], "scores": s,
                    "lr": {k: points[row["name"]][k]["lr"] for k in TASKS},
                    "pair_encoding": {k: points[row["name"]][k]["pair_encoding"] for k in TASKS},
                    "panel": panel, "panel_mean": stats["mean"], "panel_spread": stats["std"],
                    "pct_of_teacher": {k: 100.0 * statistics.mean(s[k]) / statistics.mean(teacher[k]) for k in TASKS},
                    "panel_pct_of_teacher": 100.0 * stats["mean"] / teacher_panel, "proxies": None})
    leads = {}
    for budget in dict.fromkeys(r["budget"] for r in out):
        members = [r for r in out if r["budget"] == budget and r["kind"] == "searched"]
        free = [r for r in out if r["budget"] == budget and r["kind"] != "searched"]
        for kind in BASELINE_KINDS:
            best = max((r for r in free if r["kind"] == kind), key=lambda r: r["panel_mean"], default=None)
            for member in members if best else []:
                common = [i for i in member["seeds"] if i in best["seeds"]]
                if not common:
                    continue
                per_seed = [member["panel"][member["seeds"].index(i)] - best["panel"][best["seeds"].index(i)]
                            for i in common]
                lead = statistics.mean(per_seed)
                leads[f"{budget} {member['name']} - {best['name']}"] = {
                    "lead": lead, "seeds": common, "spreads": [member["panel_spread"], best["panel_spread"]],
                    "beats_by_more_than_spread": lead > max(member["panel_spread"], best["panel_spread"]),
                    "per_seed": dict(zip(common, per_seed)),
                    "per_task": {k: statistics.mean(member["scores"][k][member["seeds"].index(i)]
                                                    - best["scores"][k][best["seeds"].index(i)] for i in common)
                                 for k in TASKS}}
    return {"teacher": teacher, "teacher_seeds": {t: sorted(scores["teacher"][t]) for t in TASKS},
            "teacher_lr": {t: points["teacher"][t]["lr"] for t in TASKS},
            "teacher_pair_encoding": {t: points["teacher"][t]["pair_encoding"] for t in TASKS},
            "teacher_panel_mean": teacher_panel,
            "teacher_panel_spread": _stats([statistics.mean(scores["teacher"][t][s] for t in TASKS)
                                            for s in shared])["std"],
            "teacher_latency_ms": teacher_ms, "teacher_params": timing["teacher_params"], "tasks": list(TASKS),
            "device": {"key": "cpu, ONNX Runtime, 1 thread, batch 1, 128 tokens"}, "timing": timing,
            "proxy_correlation": None, "leads": leads, "rows": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True, help="the teacher's model directory (timed with every row)")
    ap.add_argument("--row", action="append", required=True, type=parse_row, metavar="BUDGET:KIND:NAME=DIR")
    ap.add_argument("--json", nargs="+", type=Path, required=True, help="bench/finetune_models.py JSONs")
    ap.add_argument("--sick-bi", nargs="*", default=[], help="models whose SICK runs read the pair apart")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--min-seeds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5, help="timing repetitions")
    ap.add_argument("--timing", type=Path, help="keep the timing here and reuse it while it covers every row")
    ap.add_argument("--retime", action="store_true", help="time again even where --timing covers every row")
    ap.add_argument("--out", type=Path, required=True, help="the results JSON (the table goes next to it, .md)")
    ap.add_argument("--plot", type=Path, help="the plot (PNG)")
    ap.add_argument("--lrs", nargs="+", type=float, default=[2e-4, 5e-4, 1e-3, 2e-3],
                    help="the rates the runs could choose from, for the table's note")
    args = ap.parse_args()

    points: dict = {}
    scores = pool(args.json, set(args.sick_bi), points)
    paths = list(dict.fromkeys(r["path"] for r in args.row))
    timing = json.loads(args.timing.read_text()) if args.timing and args.timing.is_file() else None
    if args.retime or timing is None or timing["teacher"] != args.teacher:
        timing = time_models(paths, args.teacher, args.reps)
    elif missing := [p for p in paths if p not in timing["models"]]:
        timing = add_timing(timing, time_models(missing, args.teacher, args.reps))
    if args.timing:
        atomic_write_json(args.timing, timing)
    results = build(args.row, scores, points, timing, args.seeds, args.min_seeds)
    results["date"] = dt.date.today().isoformat()
    results["command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    results["sources"] = [str(p) for p in args.json]
    results["config"] = {"seeds": max(len(r["seeds"]) for r in results["rows"]), "lrs": args.lrs,
                         "lr_select": "first-seed", "pair_encodings": ["cross", "bi"]}
    atomic_write_json(args.out, results)
    table = markdown_table(results) + timed_apart_note(results)
    atomic_write_text(args.out.with_suffix(".md"), table)
    if args.plot:
        plot(results, args.plot)
    print(table)
    for key, lead in results["leads"].items():
        print(f"{key}: {lead['lead']:+.2f} (spreads {lead['spreads'][0]:.2f} / {lead['spreads'][1]:.2f})")


if __name__ == "__main__":
    main()
