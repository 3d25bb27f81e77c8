"""Recovery distillation of a pruned teacher cut: train it end to end to reproduce, sub-layer by sub-layer, the
hidden states of the same cut unpruned, on unmasked text.

Calibration (nasbert.export.calibrate) refits only the pruned FFNs' output weights, in closed form, one FFN at a
time. This trains every weight of the cut (embeddings, attentions, both FFN matrices, LayerNorms) against the
unpruned cut's state after each of its sub-layers, the way CoFi and DynaBERT recover a pruned BERT by layer-wise
distillation from the unpruned one. Both models keep the same sub-layers, so every state has a target.

    python bench/recover_cut.py --student runs/cuts/l3-ffn576-cal --reference runs/cuts/bottom3 \\
        --out runs/cuts/l3-ffn576-rec --steps 600 --json bench/recover_l3_ffn576.json

The relative squared error of the final states against the reference, on held-out rows of the corpus, is
measured before and after.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from nasbert.data import BatchIterator, CorpusConfig, load_corpus
from nasbert.export.hf import save_hf_model
from nasbert.modeling import NasBertModel
from transformers import AutoTokenizer

from calibration import _compare, _states  # bench/ is on sys.path when a script in it runs


def _sublayer_states(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """The output of every sub-layer of ``model`` on ``ids`` (all tokens real)."""
    states = []
    handles = [layer.register_forward_hook(lambda _m, _a, out: states.append(out))
               for layer in model.encoder.layer]
    try:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for handle in handles:
            handle.remove()
    return states


def _loss(student_states, reference_states) -> torch.Tensor:
    """Mean over sub-layers of the squared error relative to the reference state's mean square."""
    return torch.stack([(s - r).pow(2).mean() / r.pow(2).mean()
                        for s, r in zip(student_states, reference_states)]).mean()


def _final_error(student, reference, rows: torch.Tensor) -> float:
    return _compare(_states(student, rows), _states(reference, rows))["relative_error"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", required=True, type=Path, help="the pruned cut (a nasbert model directory)")
    parser.add_argument("--reference", required=True, type=Path, help="the same cut unpruned")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--corpus", nargs="+", default=["../shared/data/wikipedia-en-sample"])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of the steps")
    parser.add_argument("--eval-rows", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dropout", action="store_true",
                        help="train with the model's dropout (default: off, so that the targets can be met exactly)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.student)
    student = NasBertModel.from_pretrained(args.student)
    reference = NasBertModel.from_pretrained(args.reference).eval()
    if len(student.encoder.layer) != len(reference.encoder.layer):
        sys.exit(f"error: the student has {len(student.encoder.layer)} sub-layers, the reference "
                 f"{len(reference.encoder.layer)}: pass the same cut unpruned as --reference")
    corpus = load_corpus(CorpusConfig(source="files", paths=tuple(args.corpus)), tokenizer)
    held_out = corpus.valid[: args.eval_rows]
    before = _final_error(student.eval(), reference, held_out)
    print(f"final-state relative error before: {before:.4f}", flush=True)

    for p in reference.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(1, int(args.warmup * args.steps))

    def rate(step: int) -> float:
        return step / warmup if step < warmup else max(0.0, (args.steps - step) / max(1, args.steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    batches = BatchIterator(corpus.train.shape[0], args.batch_size, seed=args.seed)
    student.train(args.dropout)
    start, running = time.time(), None
    bar = tqdm(range(args.steps), desc="recover", unit="step", dynamic_ncols=True)
    for _ in bar:
        ids = corpus.train[batches.next_indices()]
        with torch.no_grad():
            targets = _sublayer_states(reference, ids)
        loss = _loss(_sublayer_states(student, ids), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        bar.set_postfix(loss=f"{running:.4f}")
    seconds = time.time() - start
    after = _final_error(student.eval(), reference, held_out)
    print(f"final-state relative error after: {after:.4f} ({args.steps} steps, {seconds:.0f} s)", flush=True)
    save_hf_model(student, args.out, tokenizer=tokenizer)
    if args.json:
        record = {"command": "python bench/recover_cut.py " + " ".join(sys.argv[1:]),
                  "date": str(datetime.date.today()), "machine": f"{platform.machine()}, {args.threads} threads",
                  "student": str(args.student), "reference": str(args.reference), "steps": args.steps,
                  "batch_size": args.batch_size, "dropout": args.dropout, "seq_len": corpus.train.shape[1],
                  "lr": args.lr,
                  "tokens": args.steps * args.batch_size * corpus.train.shape[1],
                  "final_error_before": before, "final_error_after": after, "seconds": round(seconds, 1),
                  "final_loss": None if running is None or math.isnan(running) else running}
        args.json.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
