"""The speed-up ladder of the teacher cuts around the 2x, 3x and 4x budgets, pruned FFNs included, timed with
the longer run the export uses at a budget's edge (100 runs over 20 interleaved rounds with the teacher), repeated.

    python bench/cut_ladder.py [--run runs/default] [--reps 5]      # raw: bench/cut_ladder.json
    python bench/cut_ladder.py --weights teacher --out bench/cut_ladder_every.json   # the teacher's weights only

Every cut is timed in both weight versions the export can compare (`export.cut_weights`): the teacher's own
(heads and neurons in importance order, no adapters) and the trained supernet's (with its output adapter). The spread over repetitions says which
cuts sit on a budget's edge on this machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
from pathlib import Path

import numpy as np
import torch

from nasbert import SearchSpace, SuperNet
from nasbert.export.cuts import teacher_cuts
from nasbert.latency.models import measure_models
from nasbert.teacher import load_teacher
from teacher_cuts import CUTS as BENCH_CUTS, bench_cut  # bench/ is on sys.path when a script in it runs

CUTS = ("teacher-L3", "teacher-L2+mha2+ffn2@1152", "teacher-L2+mha2+ffn2@768", "teacher-L2+mha2+ffn2@384",
        "teacher-L2+mha2", "teacher-L2", "teacher-L1+mha1+ffn1@1152", "teacher-L1+mha1+ffn1@768",
        "teacher-L1+mha1+ffn1@384", "teacher-L1+mha1", "teacher-L1",
        # every FFN halved: the same work as a cut with one more attention and fewer FFNs
        "teacher-L4@ffn768", "teacher-L3+mha3@ffn768", "teacher-L2+mha2@ffn768", "teacher-L2@ffn768")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/default")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default="bench/cut_ladder.json")
    ap.add_argument("--weights", choices=["both", "teacher"], default="both",
                    help="teacher: time only the version with the teacher's weights (no run needed)")
    ap.add_argument("--only", nargs="+", choices=CUTS, metavar="CUT", help="time only these of the ladder's cuts")
    ap.add_argument("--extra", nargs="+", default=[], choices=sorted(BENCH_CUTS), metavar="NAME",
                    help="also time these models of bench/teacher_cuts.py (e.g. l3-ffn576, outside the export's cuts)")
    args = ap.parse_args()

    torch.manual_seed(0)
    teacher, _, _ = load_teacher()
    trained = None if args.weights == "teacher" else SuperNet.from_pretrained(Path(args.run) / "supernet").eval()
    space = SearchSpace.load("minilm_l6") if trained is None else trained.space
    raw = SuperNet.from_teacher(space, teacher, reorder="units").eval()
    archs = dict(teacher_cuts(space, max_gaps=0, prune_ffn=True, prune_every=True))
    extra = []
    for name in args.extra:
        label, arch = bench_cut(space, name)
        extra.append(label)
        archs[label] = arch
    models = {}
    for name in [*(args.only or CUTS), *extra]:
        models[f"{name} (teacher)"] = raw.extract(archs[name], drop_identity_adapters=True)
        if trained is not None:
            models[f"{name} (trained)"] = trained.extract(archs[name])
    speedups: dict[str, list[float]] = {name: [] for name in models}
    teacher_ms = []
    for rep in range(args.reps):
        m = measure_models(models, teacher, engine="onnxruntime", device="cpu", threads=1, batch=1, seq_len=128,
                           vocab_size=space.teacher.vocab_size, seed=rep, repeats=100, rounds=20)
        teacher_ms.append(m.teacher_latency_ms)
        for name in models:
            speedups[name].append(m.teacher_latency_ms / m.latency_ms[name])
        print(f"rep {rep}: teacher {m.teacher_latency_ms:.2f} ms", flush=True)

    rows = {name: {"speedups": [round(s, 4) for s in v], "median": float(np.median(v)), "min": float(min(v)),
                   "max": float(max(v)), "params": space.num_params(
                       archs[name.split(" ")[0]], adapters=models[name].config.adapters)}
            for name, v in speedups.items()}
    command = f"python bench/cut_ladder.py --reps {args.reps} --out {args.out}"
    command += (" --only " + " ".join(args.only) if args.only else "") + \
        (" --extra " + " ".join(args.extra) if args.extra else "")
    record = {"command": command + (" --weights teacher" if trained is None else f" --run {args.run}"),
              "date": dt.date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads visible; ONNX Runtime 1 thread, batch 1, 128 tokens",
              "timing": "100 runs over 20 interleaved rounds with the teacher, per repetition",
              "teacher_ms": teacher_ms, "models": rows}
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    for name, row in rows.items():
        print(f"{name:40s} {row['median']:.2f}x ({row['min']:.2f}-{row['max']:.2f})  {row['params'] / 1e6:.2f}M")


if __name__ == "__main__":
    main()
