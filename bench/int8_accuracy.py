"""int8 accuracy: the dev score of each fine-tuned classifier of a quality report as an int8 graph, next to fp32.

    python bench/int8_accuracy.py runs/default/report-cuts-sst2 --task sst2

For every model of the report and every seed at the model's chosen learning rate, the fine-tuned classifier
(``ft/<model>/<task>/lr<rate>-seed<k>/model``) is exported to ONNX (logits) and quantised the way ``nasbert
finetune`` does it (:func:`nasbert.finetune.trainer.int8_classifier`: ONNX Runtime dynamic int8, per-channel
weights of every MatMul and Gemm), and both graphs are scored on the full dev set. Writes
``bench/int8_accuracy_results.json`` and prints a table (mean over seeds, and the largest drop of one seed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from nasbert.onnxio import export_onnx
    from nasbert.finetune import load_task
    from nasbert.finetune.trainer import encode_examples, int8_classifier
    from nasbert.finetune.trainer import grid_point

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", help="a report directory (quality_results.json, ft/)")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "int8_accuracy_results.json"))
    args = parser.parse_args()
    report = Path(args.report)
    results = json.loads((report / "quality_results.json").read_text())
    task = load_task(args.task, data_dir=args.data_dir)
    spec = task.task
    rows, seen = {}, set()
    teacher = {"name": "teacher", "kind": "teacher", "budget": None, "lr": results["teacher_lr"],
               "pair_encoding": results.get("teacher_pair_encoding"), "scores": results["teacher"]}
    for row in [teacher, *results["rows"]]:
        name = row["name"]
        if name in seen or not row["scores"].get(args.task):
            continue
        seen.add(name)
        lr = row["lr"][args.task] if isinstance(row.get("lr"), dict) else row.get("lr")
        point = grid_point(lr, (row.get("pair_encoding") or {}).get(args.task, "cross"))
        runs = sorted((report / "ft" / name / args.task).glob(f"lr{point}-seed*"))
        per_seed = []
        for job in runs:
            model = AutoModelForSequenceClassification.from_pretrained(job / "model").eval()
            tokenizer = AutoTokenizer.from_pretrained(job / "model")
            dev = encode_examples(task.dev, tokenizer, max_seq_len=128, regression=spec.is_regression,
                                  pair_encoding=getattr(model.config, "pair_encoding", "cross"))
            with tempfile.TemporaryDirectory() as tmp:
                export_onnx(model, Path(tmp) / "model.onnx", output="logits")
                got = int8_classifier(model, Path(tmp), spec, dev, batch_size=64, pad_id=tokenizer.pad_token_id or 0)
            fp32, int8 = got["dev_fp32_onnx"][spec.main_metric], got["dev"][spec.main_metric]
            per_seed.append({"job": job.name, "fp32": fp32, "int8": int8, "logit_error": got["error"]})
            print(f"{name} {job.name}: fp32 {100 * fp32:.1f} int8 {100 * int8:.1f} (logit error {got['error']:.3f})",
                  flush=True)
        rows[name] = {"kind": row["kind"], "budget": row["budget"], "lr": lr, "seeds": per_seed}
    Path(args.out).write_text(json.dumps({"report": str(report), "task": args.task, "metric": spec.main_metric,
                                          "models": rows}, indent=2) + "\n")
    print(f"| model | {args.task} fp32 | int8 | mean drop | largest drop |\n|---|---|---|---|---|")
    for name, r in rows.items():
        fp32 = np.array([s["fp32"] for s in r["seeds"]]) * 100
        int8 = np.array([s["int8"] for s in r["seeds"]]) * 100
        print(f"| {name} | {fp32.mean():.1f} | {int8.mean():.1f} | {(fp32 - int8).mean():+.1f} | "
              f"{(fp32 - int8).max():+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
