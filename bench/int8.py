"""int8 and fused graphs: how much faster are a family's members with ONNX Runtime's own tools, and at what error?

    python bench/int8.py runs/default/family            # every member and the teacher of a family

For each model (``model.onnx`` of every member, and ``teacher.onnx``), three graphs:

- ``fp32``: the graph as exported;
- ``fused``: ``onnxruntime.transformers.optimizer.optimize_model(model_type="bert")`` (Attention, SkipLayerNorm,
  BiasGelu, EmbedLayerNorm fusions where the patterns match); the fusions it found are listed;
- ``int8``: nasbert's int8 recipe (``nasbert.onnxio.quantize_int8``: ONNX Runtime's ``quantize_dynamic``,
  int8 weights of every MatMul and Gemm per output channel, dynamic int8 activations) of the exported graph,
  and ``int8-fused``: the same of the fused graph.

All graphs of all models are timed in one interleaved run (ONNX Runtime, 1 thread, batch 1, 128 tokens; the
median of rounds), so ratios between them are measured under the same conditions. The error is the largest
absolute difference of the last hidden states from the fp32 graph's, relative to their largest absolute value,
on 8 sequences of random tokens. Writes ``bench/results/int8.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def fuse(path: Path, out: Path, num_heads: int = 0, hidden_size: int = 0) -> dict[str, int]:
    """The BERT graph optimiser's fused graph at ``out``; returns the count of each fused operator."""
    from onnxruntime.transformers.optimizer import optimize_model

    with contextlib.redirect_stdout(io.StringIO()):
        model = optimize_model(str(path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size)
    model.save_model_to_file(str(out))
    return {k: v for k, v in model.get_fused_operator_statistics().items() if v}


def quantize(path: Path, out: Path) -> None:
    """nasbert's int8 recipe (:func:`nasbert.onnxio.quantize_int8`: int8 weights of every MatMul and Gemm, per
    output channel, dynamic int8 activations)."""
    from nasbert.onnxio import quantize_int8

    quantize_int8(path, out)


def last_hidden(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def main() -> int:
    from nasbert.export.family import Family
    from nasbert.latency.measure import OnnxRuntimeEngine, measure_interleaved

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", help="a family directory (family.json, teacher.onnx, members)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "int8.json"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    family = Family.load(args.family)
    directory = Path(args.family)
    # The optimiser cannot read the head count from nasbert's graphs: it is given where every attention of a
    # model has the same width (the teacher; members whose attention blocks share one width), else 0 (no fusion).
    models = {"teacher": directory / "teacher.onnx", **{m.name: directory / m.path / "model.onnx"
                                                       for m in family.models}}
    first = json.loads((directory / family.models[0].path / "config.json").read_text())
    shapes = {"teacher": (first["hidden_size"] // first["head_size"], first["hidden_size"])}
    for m in family.models:
        config = json.loads((directory / m.path / "config.json").read_text())
        widths = sorted({b["width"] for b in config["blocks"] if "mha" in b["ops"]})
        shapes[m.name] = (widths[0] // config["head_size"], widths[0]) if len(widths) == 1 else (0, 0)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, (1, 128))
    time_feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    check_ids = rng.integers(1000, 20000, (8, 128))
    check_feeds = {"input_ids": check_ids, "attention_mask": np.ones_like(check_ids),
                   "token_type_ids": np.zeros_like(check_ids)}
    rows, engines = {}, {}
    with tempfile.TemporaryDirectory(prefix="nasbert-int8-") as tmp:
        for name, path in models.items():
            fused, int8 = Path(tmp) / f"{name}.fused.onnx", Path(tmp) / f"{name}.int8.onnx"
            int8_fused = Path(tmp) / f"{name}.int8-fused.onnx"
            fusions = fuse(path, fused, *shapes[name])
            quantize(path, int8)
            quantize(fused, int8_fused)
            reference = last_hidden(path, check_feeds)
            scale = float(np.abs(reference).max())
            rows[name] = {
                "fusions": fusions,
                "size_mb": {k: p.stat().st_size / 2**20 for k, p in (("fp32", path), ("fused", fused),
                                                                        ("int8", int8), ("int8-fused", int8_fused))},
                "rel_error": {k: float(np.abs(last_hidden(p, check_feeds) - reference).max() / scale)
                              for k, p in (("fused", fused), ("int8", int8), ("int8-fused", int8_fused))},
            }
            for kind, p in (("fp32", path), ("fused", fused), ("int8", int8), ("int8-fused", int8_fused)):
                engines[f"{name}/{kind}"] = OnnxRuntimeEngine(p, time_feeds, threads=1)
        timings = measure_interleaved(engines, warmup=3, repeats=args.repeats, rounds=args.rounds, seed=0)
    for key, t in timings.items():
        name, kind = key.split("/")
        rows[name].setdefault("ms", {})[kind] = t.median_ms
    for row in rows.values():
        row["speedup_vs_fp32"] = {k: row["ms"]["fp32"] / row["ms"][k] for k in ("fused", "int8", "int8-fused")}
    Path(args.out).write_text(json.dumps({"family": str(directory), "threads": 1, "batch": 1, "seq_len": 128,
                                          "models": rows}, indent=2) + "\n")
    print("| model | fp32 ms | fused ms | int8 ms (speed-up, error) | int8 of fused ms (speed-up, error) | fusions |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        fusions = ", ".join(f"{k} {v}" for k, v in r["fusions"].items()) or "none"
        ms, up, err = r["ms"], r["speedup_vs_fp32"], r["rel_error"]
        print(f"| {name} | {ms['fp32']:.2f} | {ms['fused']:.2f} | {ms['int8']:.2f} ({up['int8']:.2f}x, "
              f"{err['int8']:.3f}) | {ms['int8-fused']:.2f} ({up['int8-fused']:.2f}x, {err['int8-fused']:.3f}) | "
              f"{fusions} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
