"""How far the calibration of a teacher cut's pruned FFNs (nasbert.export.calibrate) brings the cut back to its
unpruned self: relative squared error and cosines of the final hidden states on held-out text, for the neurons
the weight magnitudes rank first or those whose output matters on the text, with the teacher's output weights or
refitted ones.

    python bench/calibration.py --out bench/calibration.json      # about 5 minutes on 2 CPU cores
    python bench/calibration.py --corpus builtin --out bench/calibration_builtin.json   # what `nasbert run` has

Calibration uses the first ``--rows`` training rows of ``--corpus`` (128 tokens each; ``builtin``: the built-in
corpus of ``nasbert run``); the error is measured on the first ``--eval-rows`` validation rows of
``--eval-corpus``, which calibration never sees.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

from nasbert import SearchSpace, SuperNet
from nasbert.export.calibrate import calibrate_cut
from nasbert.export.cuts import cut_arch, cut_name
from nasbert.teacher import load_teacher
from teacher_cuts import CUTS as TEACHER_CUTS, load_text  # bench/ is on sys.path when a script in it runs

#: the cuts of bench/teacher_cuts.py that prune an FFN and are compared here
CUTS = {name: TEACHER_CUTS[name] for name in ("2x", "2x-every", "3x-ffn", "3x-every", "4x-ffn", "l3-ffn384",
                                              "l3-ffn576")}
VARIANTS = {  # name -> (neurons, refit, target); ("magnitude", False, ...) is the cut as the supernet gives it
    "magnitude": ("magnitude", False, "ffn"),
    "output-ranked": ("output", False, "ffn"),
    "magnitude+refit": ("magnitude", True, "ffn"),
    "output-ranked+refit": ("output", True, "ffn"),
    "output-ranked+refit to states": ("output", True, "states"),  # the unpruned cut's states after each FFN
}


@torch.no_grad()
def _states(model, ids: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    return torch.cat([model(input_ids=ids[i : i + batch_size],
                            attention_mask=torch.ones_like(ids[i : i + batch_size])).last_hidden_state
                      for i in range(0, len(ids), batch_size)])


def _compare(out: torch.Tensor, ref: torch.Tensor) -> dict:
    cos = torch.nn.functional.cosine_similarity
    return {"relative_error": float((out - ref).pow(2).sum() / ref.pow(2).sum()),
            "token_cosine": float(cos(out, ref, dim=-1).mean()),
            "sentence_cosine": float(cos(out.mean(1), ref.mean(1), dim=-1).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--corpus", nargs="+", default=["../shared/data/wikipedia-en-sample"],
                        help="text files or directories, or builtin")
    parser.add_argument("--eval-corpus", nargs="+", default=["../shared/data/wikipedia-en-sample"])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--eval-rows", type=int, default=256)
    parser.add_argument("--only", nargs="+", choices=sorted(CUTS))
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), help="default: all of them")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    teacher, tokenizer, _ = load_teacher()
    rows = load_text(args.corpus, tokenizer).train[: args.rows]
    held_out = load_text(args.eval_corpus, tokenizer).valid[: args.eval_rows]
    space = SearchSpace.load("minilm_l6")
    net = SuperNet.from_teacher(space, teacher, reorder="units").eval()
    results, start = {}, time.time()
    for name in args.only or CUTS:
        kept, pruned, every = CUTS[name]
        arch = cut_arch(space, kept, pruned=pruned, every=every)
        reference = _states(net.extract(cut_arch(space, kept), drop_identity_adapters=True), held_out)
        row = {"cut": cut_name(kept, pruned=pruned, every=every)}
        for variant, (neurons, refit, target) in VARIANTS.items():
            if args.variants and variant not in args.variants:
                continue
            model = net.extract(arch, drop_identity_adapters=True)
            report = calibrate_cut(model, arch, space, teacher, rows, neurons=neurons, refit=refit, target=target)
            row[variant] = {**_compare(_states(model, held_out), reference),
                            "ffn_errors": [round(r.error_after, 5) for r in report]}
            print(f"{name:10s} {variant:20s} " + " ".join(f"{k} {v:.4f}" for k, v in row[variant].items()
                                                          if k != "ffn_errors"), flush=True)
        results[name] = row
    record = {"command": "python bench/calibration.py " + " ".join(sys.argv[1:]),
              "date": str(datetime.date.today()), "machine": f"{platform.machine()}, {args.threads} threads",
              "rows": len(rows), "eval_rows": len(held_out), "seq_len": rows.shape[1], "corpus": list(args.corpus),
              "eval_corpus": list(args.eval_corpus),
              "seconds": round(time.time() - start, 1),
              "what": "final hidden states of each pruned cut against the same cut unpruned, on held-out rows",
              "cuts": results}
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
