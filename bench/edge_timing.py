"""How stable is a speed-up near a budget's edge: the export's first timing (20 runs over 4 rounds) against the
longer run that decides near an edge (100 runs over 20 rounds), repeated.

    python bench/edge_timing.py [--run runs/default] [--reps 8]      # raw: bench/edge_timing.json

The models are the ones that sat on the default run's 3x and 4x edges: the teacher's own bottom 2 layers
(2.87-3.06x across runs) and its layer 0 + layer 1's attention (3.99-4.23x), and a copy of the teacher (1x by
definition). Every repetition times them with the teacher twice (the first and the longer run, as
``measure_models`` does with an infinite ``edge_margin``); the spread of each speed-up over the repetitions is
what decides a model in or out by noise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
from pathlib import Path

import numpy as np
import torch

from nasbert import Arch, SuperNet
from nasbert.budgets import latency_limits, parse_budgets
from nasbert.latency.models import measure_models
from nasbert.teacher import load_teacher

E = "identity,identity,identity,identity"
ARCHS = {"teacher-L1+mha1": f"384:mha,ffn,mha,identity|384:{E}|384:{E}",
         "layerdrop-bottom2": f"384:mha,ffn,mha,ffn|384:{E}|384:{E}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/default")
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--out", default="bench/edge_timing.json")
    args = ap.parse_args()

    torch.manual_seed(0)
    teacher, _, _ = load_teacher()
    space = SuperNet.from_pretrained(Path(args.run) / "supernet").space
    raw = SuperNet.from_teacher(space, teacher, reorder=False).eval()
    models = {name: raw.extract(Arch.parse(text), drop_identity_adapters=True) for name, text in ARCHS.items()}
    models["teacher-copy"] = raw.extract(space.teacher_arch(), drop_identity_adapters=True)
    budgets = parse_budgets(["3x", "4x"])

    first: dict[str, list[float]] = {name: [] for name in models}
    longer: dict[str, list[float]] = {name: [] for name in models}
    for rep in range(args.reps):
        m = measure_models(models, teacher, engine="onnxruntime", device="cpu", threads=1, batch=1, seq_len=128,
                           vocab_size=space.teacher.vocab_size, seed=rep, limits=lambda t: latency_limits(budgets, t),
                           edge_margin=float("inf"))  # every model: both runs
        for name in models:
            first[name].append(m.retimed[name]["speedup"])
            longer[name].append(m.teacher_latency_ms / m.latency_ms[name])
        print(f"rep {rep}: " + ", ".join(f"{n} {first[n][-1]:.2f}x -> {longer[n][-1]:.2f}x" for n in models),
              flush=True)

    def stats(values: list[float]) -> dict:
        x = np.asarray(values)
        return {"values": [round(v, 4) for v in values], "median": float(np.median(x)), "std": float(x.std(ddof=1)),
                "min": float(x.min()), "max": float(x.max())}

    out = {"date": dt.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
           "torch": torch.__version__, "reps": args.reps, "first": {n: stats(v) for n, v in first.items()},
           "longer": {n: stats(v) for n, v in longer.items()}}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    for name in models:
        f, g = out["first"][name], out["longer"][name]
        print(f"{name:20s} first {f['median']:.3f}x (std {f['std']:.3f}, {f['min']:.2f}-{f['max']:.2f})   "
              f"longer {g['median']:.3f}x (std {g['std']:.3f}, {g['min']:.2f}-{g['max']:.2f})")


if __name__ == "__main__":
    main()
