"""MobileBERT inside nasbert: the measurements of docs/benchmarks.md ("MobileBERT ops").

Two parts, each one command (results in bench/mobilebert_results.json):

``python bench/mobilebert.py latency``
    ONNX Runtime, 1 thread, batch 1, 128 tokens, on this machine. (a) A bottleneck layer against a plain BERT
    layer (MHA + FFN) of about the same parameter count, at the inter widths 384 and 512. (b) The official
    MobileBERT shape (24 bottleneck layers, 512 / 128, 4 FFNs, factorised embedding 128) with NoNorm + ReLU
    against LayerNorm + GELU (and each change alone): MobileBERT reports 192 ms -> 62 ms on a Pixel 4 for these
    two changes. Every group is timed interleaved in one run (warm-up, medians).

``python bench/mobilebert.py train [--steps 150]``
    Progressive knowledge transfer against NAS-BERT's block-wise training on the same budget (``--steps``
    updates per block, batch 16, 128 tokens, built-in teacher, Wikipedia sample, space mobilebert_minilm,
    shrinking off in both), then the whole-model validation loss of the same fixed architectures under both
    supernets.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nasbert import Arch, NasBertConfig, NasBertModel, SearchSpace, SuperNet  # noqa: E402
from nasbert.onnxio import export_onnx  # noqa: E402
from nasbert.latency.measure import OnnxRuntimeEngine, measure_interleaved  # noqa: E402
from nasbert.space import op_params  # noqa: E402

RESULTS = ROOT / "bench" / "mobilebert_results.json"
WIKIPEDIA = ROOT.parent / "shared" / "data" / "wikipedia-en-sample"


def _save(key: str, value) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    data[key] = value
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(RESULTS)


def _machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "threads": 1, "date": time.strftime("%Y-%m-%d"),
            "torch": torch.__version__}


# ------------------------------------------------------------------------------------------------ latency


def _model(blocks: list[dict], **options) -> NasBertModel:
    config = NasBertConfig(blocks=blocks, vocab_size=30522, hidden_size=blocks[-1]["width"], head_size=32,
                           max_position_embeddings=512, **options)
    torch.manual_seed(0)
    return NasBertModel(config).eval()


def _time_models(models: dict[str, NasBertModel], seq_len: int, workdir: Path, repeats: int) -> dict:
    ids = np.random.default_rng(0).integers(1000, 30000, size=(1, seq_len)).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    engines = {}
    for name, model in models.items():
        path = workdir / f"{name}.onnx"
        export_onnx(model, path)
        engines[name] = OnnxRuntimeEngine(path, feeds, threads=1)
    timings = measure_interleaved(engines, warmup=5, repeats=repeats, rounds=5)
    return {name: {"median_ms": t.median_ms, "iqr_ms": t.iqr_ms,
                   "params": sum(p.numel() for p in models[name].parameters())} for name, t in timings.items()}


def _plain_width_matching(params: int, head_size: int = 32) -> int:
    """The width (a multiple of the head size) whose MHA + FFN layer has the parameter count closest to
    ``params``."""
    widths = range(head_size, 2048, head_size)
    return min(widths, key=lambda w: abs(op_params("mha", w, ffn_ratio=4) + op_params("ffn", w, ffn_ratio=4) - params))


def latency(args) -> None:
    torch.set_num_threads(1)
    out: dict = {"machine": _machine(), "seq_len": args.seq_len, "layers": {}, "norm_act": {}}
    with tempfile.TemporaryDirectory() as tmp:
        # (a) bottleneck layer vs a plain layer of the same parameter count, 4 layers deep (one block)
        for inter, op in ((384, "bottleneck128x4"), (512, "bottleneck128x4"), (384, "bottleneck128x2")):
            params = op_params(op, inter, ffn_ratio=4)
            w = _plain_width_matching(params)
            models = {
                f"{op}@{inter}": _model([{"width": inter, "ops": [op] * 4}]),
                f"mha+ffn@{w}": _model([{"width": w, "ops": ["mha", "ffn"] * 4}]),
            }
            t = _time_models(models, args.seq_len, Path(tmp), args.repeats)
            out["layers"][f"{op}@{inter}"] = {"bottleneck": t[f"{op}@{inter}"], "plain": t[f"mha+ffn@{w}"],
                                              "plain_width": w, "layer_params": params,
                                              "plain_layer_params": op_params("mha", w, ffn_ratio=4)
                                              + op_params("ffn", w, ffn_ratio=4)}
            print(f"{op}@{inter}: {t[f'{op}@{inter}']['median_ms']:.2f} ms vs mha+ffn@{w}: "
                  f"{t[f'mha+ffn@{w}']['median_ms']:.2f} ms (4 layers)", flush=True)
        # (b) the official MobileBERT shape under each norm / activation
        official = [{"width": 512, "ops": ["bottleneck128x4"] * 6} for _ in range(4)]
        variants = {
            "nonorm+relu": dict(bottleneck_norm="nonorm", bottleneck_act="relu", embedding_norm="nonorm"),
            "layernorm+relu": dict(bottleneck_norm="layernorm", bottleneck_act="relu", embedding_norm="layernorm"),
            "nonorm+gelu": dict(bottleneck_norm="nonorm", bottleneck_act="gelu", embedding_norm="nonorm"),
            "layernorm+gelu": dict(bottleneck_norm="layernorm", bottleneck_act="gelu", embedding_norm="layernorm"),
        }
        models = {name: _model(official, factorized_embedding_size=128, bottleneck_head_size=32, **opts)
                  for name, opts in variants.items()}
        out["norm_act"] = _time_models(models, args.seq_len, Path(tmp), args.repeats)
        for name, t in out["norm_act"].items():
            print(f"official MobileBERT, {name}: {t['median_ms']:.1f} ms", flush=True)
    _save("latency", out)


# ------------------------------------------------------------------------------------------------ training


def _fixed_archs(space: SearchSpace) -> dict[str, Arch]:
    mobile = "384:" + ",".join(["bottleneck128x4"] * 4)
    archs = {"mobilebert-like (12 x bottleneck128x4 @ 384)": Arch.parse("|".join([mobile] * 3)),
             "largest (mha/ffn @ 384)": space.largest_arch()}
    rng = np.random.default_rng(123)
    while len(archs) < 8:
        arch = space.sample(rng)
        if arch.num_layers >= 6:
            archs[f"random {len(archs) - 1}"] = arch
    return archs


def train(args) -> None:
    from nasbert.data import CorpusConfig, load_corpus
    from nasbert.training.evaluation import validation_batches, whole_model_loss
    from nasbert.teacher import load_teacher
    from nasbert.training import BlockwiseTrainer, ShrinkConfig, TrainConfig

    torch.set_num_threads(args.threads)
    space = SearchSpace.load("mobilebert_minilm")
    teacher, tokenizer, _ = load_teacher(None)
    source = dict(source="files", paths=(str(WIKIPEDIA),)) if WIKIPEDIA.is_dir() else {}
    corpus = load_corpus(CorpusConfig(seq_len=args.seq_len, valid_fraction=0.01, **source), tokenizer,
                         cache_dir=ROOT / "runs" / "cache")
    valid = validation_batches(corpus.valid, tokenizer, batch_size=16, n_batches=4, seed=0)
    archs = _fixed_archs(space)
    out = {"machine": _machine() | {"threads": args.threads}, "steps_per_block": args.steps, "batch_size": 16,
           "seq_len": args.seq_len, "corpus": "wikipedia-en-sample" if source else "builtin", "modes": {}}
    for mode in ("blockwise", "progressive"):
        workdir = ROOT / "runs" / "mobilebert-bench" / mode
        config = TrainConfig(steps=args.steps, batch_size=16, warmup_steps=10, eval_every=0, checkpoint_every=50,
                             mode=mode, shrink=ShrinkConfig(enabled=False), threads=args.threads)
        supernet = SuperNet.from_teacher(space, teacher)
        trainer = BlockwiseTrainer(supernet, teacher, corpus, config, tokenizer=tokenizer, workdir=workdir, seed=0)
        # Only the weights are compared here: skip scoring all 8,403 paths per block for a search (the proxy a
        # `nasbert run` writes to candidates.json; 20+ minutes on 2 shared cores with shrinking off).
        trainer.final_scores = lambda: None
        t0 = time.perf_counter()
        summary = trainer.train()
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            losses = {name: whole_model_loss(trainer.supernet, teacher, arch, valid) for name, arch in archs.items()}
        out["modes"][mode] = {"seconds": round(seconds, 1), "loop_steps": summary["steps"],
                              "blockwise_proxy_valid_loss": summary["valid_loss"], "whole_model_loss": losses}
        print(mode, json.dumps(out["modes"][mode], indent=1), flush=True)
    out["archs"] = {name: str(a) for name, a in archs.items()}
    _save("train", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("latency")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=40)
    p = sub.add_parser("train")
    p.add_argument("--steps", type=int, default=150, help="updates per block (both modes)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    {"latency": latency, "train": train}[args.part](args)


if __name__ == "__main__":
    main()
