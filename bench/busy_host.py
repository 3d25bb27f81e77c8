"""The budget decisions of the export on an idle and on a busy host, with and without the work bound.

    python bench/busy_host.py [--reps 3] [--loads idle matmul teacher]      # raw: bench/busy_host.json

The teacher cuts around the 2x, 3x and 4x budgets (the teacher's weights, as the export builds them) are timed
with the teacher exactly as the export times its candidates (`measure_models`: the first run, then the longer
run for any model within `export.edge_margin` of a budget's limit, and a third where those two fall on two sides
of a limit; the rows' ``first_speedups`` and ``edge_runs``), while another process keeps the second core busy:

- ``idle``: nothing else runs;
- ``matmul``: a 1-thread loop of 1024 x 1024 float32 matrix products (compute and cache);
- ``teacher``: a 1-thread loop of the teacher's own ONNX Runtime inference, the way a second job timing models
  (or serving) on the same host would.

For each timing the budget's member is the largest cut that meets the budget on its measured speed-up, and,
with `export.work_bound`, on the smaller of that and its work bound (`nasbert.export.cuts.work_speedup`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nasbert import SuperNet
from nasbert.budgets import latency_limits, parse_budgets
from nasbert.export.cuts import cut_size, teacher_cuts, work_speedup
from nasbert.latency.models import EDGE_MARGIN, measure_models
from nasbert.space import SearchSpace
from nasbert.teacher import load_teacher

CUTS = ("teacher-L3", "teacher-L2+mha2+ffn2@1152", "teacher-L2+mha2", "teacher-L2", "teacher-L1+mha1+ffn1@1152",
        "teacher-L1+mha1+ffn1@384", "teacher-L1+mha1", "teacher-L1")
BUDGETS = ("2x", "3x", "4x")


def _load(kind: str, stop, ready) -> None:
    """Keep one core busy until ``stop`` is set."""
    torch.set_num_threads(1)
    if kind == "matmul":
        a = torch.randn(1024, 1024)
        ready.set()
        while not stop.is_set():
            a = torch.tanh(a @ a.T / 1024)
        return
    import onnxruntime as ort

    from nasbert.onnxio import export_onnx

    teacher, _, _ = load_teacher()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "teacher.onnx"
        export_onnx(teacher.eval(), path, check=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        ids = np.random.default_rng(1).integers(1, 30000, size=(1, 128)).astype(np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        feeds = {i.name: feeds[i.name] for i in session.get_inputs()}
        ready.set()
        while not stop.is_set():
            session.run(None, feeds)


def _member(speedups: dict[str, float], sizes: dict[str, float], factor: float) -> str | None:
    meets = [name for name, s in speedups.items() if s >= factor]
    return max(meets, key=lambda n: sizes[n]) if meets else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="minilm_l6")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--loads", nargs="+", default=["idle", "matmul", "teacher"],
                    choices=["idle", "matmul", "teacher"])
    ap.add_argument("--out", default="bench/busy_host.json")
    args = ap.parse_args()

    torch.manual_seed(0)
    teacher, _, _ = load_teacher()
    teacher.eval()
    space = SearchSpace.load(args.space)
    net = SuperNet.from_teacher(space, teacher, reorder="units").eval()
    archs = dict(teacher_cuts(space, max_gaps=0, prune_ffn=True))
    models = {name: net.extract(archs[name], drop_identity_adapters=True) for name in CUTS}
    bounds = {name: work_speedup(space, archs[name], 128) for name in CUTS}
    sizes = {name: cut_size(space, archs[name]) for name in CUTS}
    budgets = parse_budgets(list(BUDGETS))
    results = []
    ctx = mp.get_context("spawn")
    for load in args.loads:
        stop, ready = ctx.Event(), ctx.Event()
        proc = None
        if load != "idle":
            proc = ctx.Process(target=_load, args=(load, stop, ready), daemon=True)
            proc.start()
            ready.wait(timeout=600)
            time.sleep(2)
        try:
            for rep in range(args.reps):
                m = measure_models(models, teacher, engine="onnxruntime", device="cpu", threads=1, batch=1,
                                   seq_len=128, vocab_size=space.teacher.vocab_size, seed=rep,
                                   limits=lambda t: latency_limits(budgets, t), edge_margin=EDGE_MARGIN)
                timed = {n: m.teacher_latency_ms / m.latency_ms[n] for n in CUTS}
                judged = {n: min(s, bounds[n]) for n, s in timed.items()}
                row = {"load": load, "rep": rep, "teacher_ms": m.teacher_latency_ms,
                       "speedups": {n: round(s, 4) for n, s in timed.items()},
                       "members": {b: _member(timed, sizes, float(b[:-1])) for b in BUDGETS},
                       "members_bounded": {b: _member(judged, sizes, float(b[:-1])) for b in BUDGETS},
                       "first_speedups": {n: round(r["speedup"], 4) for n, r in m.retimed.items()},
                       "edge_runs": {n: [round(x, 4) for x in r["runs"]] for n, r in m.retimed.items() if "runs" in r}}
                results.append(row)
                print(f"{load} rep {rep}: teacher {m.teacher_latency_ms:.2f} ms; "
                      + ", ".join(f"{n} {s:.2f}x" for n, s in timed.items()), flush=True)
                print(f"   members {row['members']}; bounded {row['members_bounded']}", flush=True)
        finally:
            stop.set()
            if proc is not None:
                proc.join(timeout=30)

    flags = " ".join(f"--{k} {' '.join(v) if isinstance(v, list) else v}" for k, v in vars(args).items())
    out = {"command": f"python bench/busy_host.py {flags}",
           "date": dt.date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
           f"{torch.get_num_threads()} torch threads available, torch {torch.__version__}",
           "work_speedup": {n: round(b, 4) for n, b in bounds.items()}, "rows": results}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
