"""What reading a pair's texts apart costs at inference: each model's classifier graph timed on one 128-token pair,
read as one sequence (``--pair-encoding cross``) and as two 64-token texts (``bi``), interleaved with the
teacher's cross-encoding graph in one run (ONNX Runtime, 1 thread, batch 1, the export's timing settings).

    python bench/pair_latency.py --model teacher=runs/cuts/teacher --model 4x=runs/cuts/4x --teacher teacher \\
        --json bench/pair_latency.json

Speed-ups are against the teacher's cross graph. The pair's tokens are random ids (the graphs' cost does not
depend on them); ``--seq-len`` is the cross sequence, and each text of the bi pair gets half of it, as
``encode_examples`` cuts them.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import tempfile
from pathlib import Path

import numpy as np
import transformers

from nasbert.finetune.tasks import SICK
from nasbert.finetune.trainer import load_classifier
from nasbert.io import atomic_write_json
from nasbert.latency.measure import OnnxRuntimeEngine
from nasbert.latency.models import speedup, time_engines
from nasbert.onnxio import export_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=DIR", help="a model (repeat)")
    parser.add_argument("--teacher", required=True, help="the NAME whose cross graph is the reference")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()  # the new heads' load report
    models = dict(item.split("=", 1) for item in args.model)
    if args.teacher not in models:
        parser.error(f"--teacher {args.teacher!r} is not one of the --model names ({', '.join(models)})")
    rng = np.random.default_rng(0)
    half = args.seq_len // 2
    feeds = {"cross": {"input_ids": rng.integers(1000, 2000, (1, args.seq_len)),
                       "attention_mask": np.ones((1, args.seq_len), np.int64),
                       "token_type_ids": np.r_[np.zeros(half), np.ones(args.seq_len - half)].astype(np.int64)[None]},
             "bi": {"input_ids": rng.integers(1000, 2000, (1, half)), "attention_mask": np.ones((1, half), np.int64),
                    "token_type_ids": np.zeros((1, half), np.int64),
                    "input_ids_b": rng.integers(1000, 2000, (1, half)),
                    "attention_mask_b": np.ones((1, half), np.int64)}}
    engines = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in models.items():
            for encoding in ("cross", "bi"):
                net, _, _ = load_classifier(path, SICK, pair_encoding=encoding)
                graph = Path(tmp) / f"{name}-{encoding}.onnx"
                export_onnx(net.eval(), graph, output="logits")
                engines[f"{name} {encoding}"] = OnnxRuntimeEngine(graph, feeds[encoding], threads=1)
        reference = f"{args.teacher} cross"
        measured = time_engines(engines, reference, repeats=args.repeats, rounds=args.rounds)
    latency = {**measured.latency_ms, reference: measured.teacher_latency_ms}
    rows = {key: {"ms": ms, "speedup": speedup(measured.teacher_latency_ms, ms)} for key, ms in latency.items()}
    for name in models:
        rows[f"{name} bi"]["bi_over_cross"] = latency[f"{name} bi"] / latency[f"{name} cross"]
    atomic_write_json(args.json, {
        "command": "python bench/pair_latency.py " + " ".join(f"--model {m}" for m in args.model)
                   + f" --teacher {args.teacher} --seq-len {args.seq_len}",
        "date": str(datetime.date.today()), "machine": f"{platform.processor() or platform.machine()}, 2 CPU cores",
        "engine": "onnxruntime, 1 thread, batch 1", "seq_len": args.seq_len, "rows": rows})
    for key, row in rows.items():
        extra = f"  bi / cross {row['bi_over_cross']:.2f}" if "bi_over_cross" in row else ""
        print(f"{key:20s} {row['ms']:7.2f} ms  {row['speedup']:5.2f}x{extra}")


if __name__ == "__main__":
    main()
