"""Accuracy of the int8 latency predictor: profile this machine for the default space with ``precision: int8``.

    python bench/int8_latency.py --out runs/int8-profile [--archs 60]

Runs :func:`nasbert.latency.profile_device` on the built-in space (``minilm_l6``) with ONNX Runtime, 1 thread,
batch 1, 128 tokens, timing every op of the lookup table and ``--archs`` whole models as dynamic int8 graphs (the
teacher, the drift reference, in fp32). Latency does not depend on the weights, so where the built-in teacher is
not installed a randomly initialised BERT of the same shape stands in for it. Prints and writes accuracy.json
(held-out MAPE and Kendall tau of the table and of the predictor).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from transformers import BertConfig, BertModel

    from nasbert import SearchSpace
    from nasbert.latency import profile_device
    from nasbert.latency.profile import LatencyConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--archs", type=int, default=60)
    parser.add_argument("--precision", default="int8", choices=["fp32", "int8"])
    args = parser.parse_args()
    space = SearchSpace.load("minilm_l6")
    try:
        from nasbert import load_teacher

        teacher = load_teacher(None)[0]
    except Exception as e:  # the built-in teacher's package is not installed: same shape, random weights
        print(f"built-in teacher not available ({type(e).__name__}); a random BERT of its shape is the reference")
        t = space.teacher
        teacher = BertModel(BertConfig(vocab_size=t.vocab_size, hidden_size=t.hidden_size,
                                       num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
                                       intermediate_size=t.intermediate_size,
                                       max_position_embeddings=t.max_position_embeddings,
                                       type_vocab_size=t.type_vocab_size)).eval()
    config = LatencyConfig(archs=args.archs, precision=args.precision)
    report = profile_device(space, args.out, config=config, teacher=teacher, show_progress=False)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
