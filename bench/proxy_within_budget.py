"""Does a proxy rank fine-tuned quality *within* a budget? For each budget, architectures of a run's elastic teacher
space whose predicted latency falls just inside it (so all are of one size band), spread over the search proxy's
range, calibrated as the export calibrates them, fine-tuned on the panel with one recipe, and the Kendall tau of
every candidate proxy against the panel mean.

    python bench/proxy_within_budget.py --run runs/default --budgets 3x --archs 10 --seeds 0 1 \\
        --data-dir ../shared/data --out runs/proxy-ft --json bench/results/proxy_within_budget.json

The search's proxy (1 - cosine after its look-up calibration) picks the spread; the run's own chosen member for the
budget is always one of the architectures. Proxies compared (each computed before any fine-tuning, on the run's
corpus): cosine and MSE of the final states to the teacher's after bottom-up calibration, the cosine without
calibration (magnitude-pruned), parameters, FLOPs, and the share of the teacher's attention heads kept. Recipe,
the same for every model and a prior, not tuned: mean pooling, batch 32, 128 tokens, lr 2e-4, and per task a fixed
seeded subset of the training set (``--train-examples``) and ``--epochs``. A fine-tuning run that is finished is
read, not trained again, so the script resumes where it was stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nasbert.budgets import parse_budgets
from nasbert.export.hf import write_hf_files
from nasbert.finetune import FinetuneConfig, finetune, load_task
from nasbert.io import atomic_write_json
from nasbert.latency.measure import device_info, host
from nasbert.latency.predictor import kendall_tau
from nasbert.quality.baselines import SERVES_TOLERANCE
from nasbert.quality.report import run_score
from nasbert.search.probe import Probe, load_probe
from nasbert.run.rundir import RunDir
from nasbert.run.stages import calibrated_objective
from nasbert.search.calibrated import calibrated_model
from nasbert.space import Arch
from nasbert.training.evaluation import plain_batches, state_cosine, whole_model_loss

DEFAULTS = {"sst2": (1000, 2.0), "sick": (1000, 3.0), "cola": (1500, 2.0)}
def _candidates(objective, budget, rng, pool: int, band: float) -> list[tuple[Arch, float, float]]:
    """``pool`` random architectures whose predicted speed-up lies in [budget, budget * band], with their search
    proxy and predicted latency."""
    teacher_ms, limit = objective.teacher_latency_ms, budget.latency_limit_ms(objective.teacher_latency_ms)
    space, found, tries = objective.space, {}, 0
    while len(found) < pool and tries < 200 * pool:
        tries += 1
        arch = space.sample(rng)
        ms = objective.predictor.predict(arch)
        if limit / band <= ms <= limit and arch not in found:
            found[arch] = ms
    print(f"{budget.name}: {len(found)} architectures in the band ({tries} drawn; teacher {teacher_ms:.2f} ms)",
          flush=True)
    return [(arch, objective.proxy_loss(arch), ms) for arch, ms in found.items()]


def _spread(scored: list[tuple[Arch, float, float]], n: int) -> list[tuple[Arch, float, float]]:
    """``n`` of them at evenly spaced ranks of the proxy, best and worst included."""
    ranked = sorted(scored, key=lambda t: t[1])
    picks = sorted({round(i * (len(ranked) - 1) / max(n - 1, 1)) for i in range(n)})
    return [ranked[i] for i in picks]


def _ends_first(n: int) -> list[int]:
    """0, n-1, 1, n-2, ...: the best and the worst of a ranking first, so that a short run already spans it."""
    return [i // 2 if i % 2 == 0 else n - 1 - i // 2 for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--budgets", nargs="+", default=["3x"])
    parser.add_argument("--archs", nargs="+", default=["10"], metavar="[BUDGET=]N",
                        help="random architectures spread over the search proxy's range, per budget (e.g. 9 2x=4)")
    parser.add_argument("--starting", type=int, default=0,
                        help="also the search's N starting points that serve the budget and fill most of it")
    parser.add_argument("--pool", type=int, default=200, help="random architectures in the band per budget")
    parser.add_argument("--band", type=float, default=1.15, help="predicted speed-up within [budget, budget*band]")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "sick"], choices=sorted(DEFAULTS),
                        help="CoLA is left out by default: at this recipe its MCC is 0 for every model, so it cannot "
                             "rank and costs a third of the time")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--calibrate-rows", type=int, default=512)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--out", required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe", action="store_true", help="also the QNLI probe proxy (a short fine-tune)")
    parser.add_argument("--include", action="append", default=[], metavar="BUDGET=[LABEL=]ARCH",
                        help="also fine-tune this architecture at this budget, labelled (e.g. rule=..., "
                             "layerdrop=..., searched=...)")
    parser.add_argument("--member-label", default="searched", help="the kind of the --run family's members' rows")
    parser.add_argument("--twins", nargs="*", default=[], metavar="KIND",
                        help="also fine-tune the magnitude-pruned twin of the rows of these kinds (e.g. searched rule)")
    parser.add_argument("--table", action="store_true", help="print the tables of --json and exit")
    args = parser.parse_args()
    if args.table:
        print(markdown(json.loads(Path(args.json).read_text())))
        return
    torch.set_num_threads(args.threads)

    run = RunDir.load(args.run)
    objective, corpus = calibrated_objective(run, run.config)
    teacher, space = objective.teacher, objective.space
    rows = corpus.train[: args.calibrate_rows]
    proxy_batches = plain_batches(corpus.valid, batch_size=16, n_batches=4)
    family = json.loads((run.family_dir / "family.json").read_text()) if (run.family_dir / "family.json").is_file() \
        else {"models": []}
    members = {m["budget"]: Arch.from_dict(m["arch"]) for m in family["models"]}
    rng = np.random.default_rng(args.seed)
    out, started = Path(args.out), time.perf_counter()
    tasks = {t: load_task(t, data_dir=args.data_dir, max_train_examples=DEFAULTS[t][0]) for t in args.tasks}
    probe = Probe(load_probe("builtin"), work_dir=out / "probe")  # the search's probe, as the export runs it
    report = {"command": " ".join(["python", *sys.argv]), "date": dt.date.today().isoformat(),
              "machine": device_info(engine="onnxruntime", device="cpu", threads=args.threads, batch=1,
                                     seq_len=128).to_dict(),
              "recipe": {"lr": args.lr, "batch_size": 32, "pooling": "mean", "max_seq_len": 128,
                         "tasks": {t: {"train_examples": DEFAULTS[t][0], "epochs": DEFAULTS[t][1]} for t in tasks}},
              "run": str(run.path), "budgets": {}}
    command = report["command"]
    if Path(args.json).is_file():  # the other budgets' results stay, each with the command, run and date it had
        before = json.loads(Path(args.json).read_text())
        report["budgets"] = before.get("budgets", {})
        commands = before.get("command", [])
        report["command"] = [*(commands if isinstance(commands, list) else [commands]), command]
    counts = {name: int(n) for name, _, n in (a.rpartition("=") for a in args.archs)}
    starting = objective.starting_points()
    for budget in parse_budgets(args.budgets):
        scored = _candidates(objective, budget, rng, args.pool, args.band)
        spread = _spread(scored, counts.get(budget.name, counts.get("", 10)))
        kinds = {members[budget.name]: args.member_label} if budget.name in members else {}
        serving = [a for a in starting if objective.teacher_latency_ms / objective.predictor.predict(a)
                   >= budget.value * (1 - SERVES_TOLERANCE)]
        for arch in sorted(serving, key=objective.predictor.predict, reverse=True)[: args.starting]:
            kinds.setdefault(arch, "starting")
        for name, _, rest in (i.partition("=") for i in args.include):
            label, _, text = rest.rpartition("=")
            if name == budget.name:
                kinds[Arch.parse(text)] = label or "include"
        # the run's member and the named architectures first, then the spread from both ends of the proxy's range
        chosen = [(arch, objective.proxy_loss(arch), objective.predictor.predict(arch))
                  for arch in kinds if arch not in {a for a, _, _ in spread}]
        chosen += [spread[i] for i in _ends_first(len(spread))]
        rows_out = []
        for i, (arch, search_proxy, ms) in enumerate(chosen):
            name = f"{budget.name}-{hashlib.sha1(str(arch).encode()).hexdigest()[:8]}"
            model, _ = calibrated_model(objective.source, arch, teacher, rows)
            magnitude, _ = calibrated_model(objective.source, arch, teacher, None)
            directory = out / budget.name / name / "model"
            if not (directory / "config.json").is_file():
                write_hf_files(model, directory, tokenizer=run_tokenizer(run))
            heads = sum(model.encoder.layer[n].self.query.out_features for n in range(len(model.encoder.layer))
                        if hasattr(model.encoder.layer[n], "self")) // space.head_size
            speedup = objective.teacher_latency_ms / ms
            row = {"name": name, "arch": str(arch), "kind": kinds.get(arch, "spread"),
                   "predicted_ms": ms, "predicted_speedup": speedup,
                   # a model serves the budget when its predicted speed-up is within 3% of it (or above)
                   "serves": speedup >= budget.value * (1 - SERVES_TOLERANCE),
                   "proxies": {"search_proxy": search_proxy,
                               "cosine": state_cosine(model, teacher, None, proxy_batches),
                               "mse": whole_model_loss(model, teacher, None, proxy_batches),
                               "cosine_uncalibrated": state_cosine(magnitude, teacher, None, proxy_batches),
                               "params": space.num_params(arch, adapters=False),
                               "flops": space.flops(arch, 128, adapters=False),
                               "heads": heads / (space.teacher.num_attention_heads * space.teacher.num_hidden_layers)},
                   "scores": {}}
            if args.probe:
                row["proxies"]["probe_qnli"] = probe.score(model, run_tokenizer(run), name=name)
            _panel(row, directory, out / budget.name / name, tasks, args)
            rows_out.append(row)
            if row["kind"] in args.twins:  # its magnitude-pruned twin: same shape, no calibration
                twin_dir = out / budget.name / f"{name}-pruned" / "model"
                if not (twin_dir / "config.json").is_file():
                    write_hf_files(magnitude, twin_dir, tokenizer=run_tokenizer(run))
                twin = {"name": f"{name}-pruned", "arch": str(arch), "kind": "pruned", "twin_of": name,
                        "predicted_ms": ms, "predicted_speedup": speedup, "serves": row["serves"], "scores": {}}
                _panel(twin, twin_dir, out / budget.name / f"{name}-pruned", tasks, args)
                rows_out.append(twin)
            print(json.dumps({k: row[k] for k in ("name", "arch", "panel", "proxies")}), flush=True)
            entry = _taus(rows_out)
            report["budgets"][budget.name] = {"rows": rows_out, "kendall_tau": entry, "command": command,
                                              "run": str(run.path), "date": dt.date.today().isoformat(),
                                              "host": host()}
            report["seconds"] = time.perf_counter() - started
            atomic_write_json(args.json, report)


def _panel(row: dict, directory: Path, jobs: Path, tasks: dict, args) -> None:
    """Fine-tune the model in ``directory`` on every task for every seed (finished runs are read back) and put the
    scores, their mean (the panel) and the panel per seed in ``row``."""
    for task_name, data in tasks.items():
        n, epochs = DEFAULTS[task_name]
        scores = []
        for seed in args.seeds:
            job = jobs / task_name / f"seed{seed}"
            score = run_score(job, data.task)
            if score is None:
                t0 = time.perf_counter()
                finetune(directory, data, out=job, config=FinetuneConfig(
                    epochs=epochs, batch_size=32, lr=args.lr, max_seq_len=128, seed=seed, pooling="mean",
                    threads=args.threads, max_train_examples=n), onnx=False, progress=False)
                score = run_score(job, data.task)
                print(f"{row['name']} {task_name} seed {seed}: {score:.2f} ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
            scores.append(score)
        row["scores"][task_name] = scores
    row["panel"] = statistics.mean(statistics.mean(s) for s in row["scores"].values())
    row["panel_per_seed"] = [statistics.mean(row["scores"][t][k] for t in tasks) for k in range(len(args.seeds))]


def _taus(rows: list[dict]) -> dict:
    """Kendall tau of each proxy against the panel mean over the rows that serve the budget (a magnitude-pruned twin
    is not a candidate of the search: left out); a loss (lower is better) is negated so that +1 is a perfect ranking
    for every proxy."""
    rows = [r for r in rows if r["serves"] and r["kind"] != "pruned"]
    if len(rows) < 3:
        return {}
    panel = [r["panel"] for r in rows]
    lower_better = {"search_proxy", "mse"}
    return {name: kendall_tau([-r["proxies"][name] if name in lower_better else r["proxies"][name] for r in rows],
                              panel) for name in rows[0]["proxies"]}


def markdown(report: dict) -> str:
    """The tables of docs/benchmarks.md from a report of this script: per budget its rows (best panel first) and
    the Kendall tau of every proxy."""
    out = []
    for name, entry in report["budgets"].items():
        rows = sorted(entry["rows"], key=lambda r: -r["panel"])
        tasks = list(rows[0]["scores"])
        out += [f"**{name}** ({sum(r['serves'] and r['kind'] != 'pruned' for r in rows)} candidates serve it)", "",
                "| kind | architecture | predicted | " + " | ".join(tasks) + " | panel (seeds) | probe | cosine |",
                "|---|---|---|" + "---|" * len(tasks) + "---|---|---|"]
        for r in rows:
            arch = Arch.parse(r["arch"]).layers_text()
            scores = " | ".join(f"{statistics.mean(r['scores'][t]):.1f}" for t in tasks)
            seeds = ", ".join(f"{x:.1f}" for x in r["panel_per_seed"])
            proxies = r.get("proxies", {})
            probe = f"{proxies['probe_qnli']:.1f}" if "probe_qnli" in proxies else ""
            cosine = f"{proxies['cosine']:.3f}" if "cosine" in proxies else ""
            serves = "" if r["serves"] else " (short)"
            out.append(f"| {r['kind']} | {arch} | {r['predicted_speedup']:.2f}x{serves} | {scores} | "
                       f"{r['panel']:.2f} ({seeds}) | {probe} | {cosine} |")
        taus = entry["kendall_tau"]
        out += ["", "Kendall tau against the panel: " + ", ".join(f"{k} {v:+.2f}" for k, v in taus.items()), ""]
    return "\n".join(out)


def run_tokenizer(run: RunDir):
    from nasbert.teacher import load_teacher

    if not hasattr(run_tokenizer, "cache"):
        run_tokenizer.cache = load_teacher(run.config.teacher)[1]
    return run_tokenizer.cache


if __name__ == "__main__":
    main()
