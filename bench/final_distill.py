"""Distil an exported model toward the teacher's *final* hidden states (not the states at its own depth).

A teacher cut (the teacher's bottom sub-layers) reproduces the teacher's states at its depth; the teacher's
sentence-level knowledge sits in its last layers. This benchmark trains the cut end to end so that its output
matches the teacher's final layer: per-token cosine distance plus the cosine distance of the mean-pooled
sentence vectors (``--sent`` weights it; ``--mse`` adds plain MSE), on unmasked Wikipedia windows. The result is
saved as a model directory for ``bench/finetune_models.py``.

    python bench/final_distill.py runs/default/family-edge10/nasbert-4x-14.3M runs/default/models/4x-final \\
        --steps 600 --seq 64 --batch-size 32 --lr 2e-4 --corpus ../shared/data/wikipedia-en-sample
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nasbert.data.corpus import CorpusConfig, load_corpus
from nasbert.export.hf import save_hf_model
from nasbert.modeling import NasBertModel
from nasbert.teacher import load_teacher


def losses(student, teacher, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-token cosine distance, mean-pooled sentence cosine distance, MSE) to the teacher's final states."""
    mask = torch.ones_like(ids)
    with torch.no_grad():
        target = teacher(input_ids=ids, attention_mask=mask).last_hidden_state
    out = student(input_ids=ids, attention_mask=mask).last_hidden_state
    token = (1 - F.cosine_similarity(out, target, dim=-1)).mean()
    sentence = (1 - F.cosine_similarity(out.mean(1), target.mean(1), dim=-1)).mean()
    return token, sentence, F.mse_loss(out, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an exported model directory (the student's starting point)")
    parser.add_argument("out", help="where the distilled model goes")
    parser.add_argument("--corpus", default="../shared/data/wikipedia-en-sample")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seq", type=int, default=64, help="tokens per training window")
    parser.add_argument("--sent", type=float, default=1.0, help="weight of the sentence-vector term")
    parser.add_argument("--mse", type=float, default=0.0, help="weight of an MSE term")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not Path(args.model, "config.json").is_file():
        parser.error(f"{args.model} is not a model directory (no config.json): pass an exported member")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    teacher, tokenizer, _ = load_teacher()
    corpus = load_corpus(CorpusConfig(source="files", paths=[args.corpus], seq_len=args.seq, valid_fraction=0.01),
                         tokenizer, cache_dir=Path.home() / ".cache" / "nasbert")
    student = NasBertModel.from_pretrained(args.model).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 50) * max(0.0, 1 - s / args.steps))
    order = torch.randperm(corpus.train.shape[0], generator=torch.Generator().manual_seed(args.seed))
    valid = corpus.valid[:64]

    def evaluate() -> list[float]:
        student.eval()
        with torch.no_grad():
            values = [float(v) for v in losses(student, teacher, valid)]
        student.train()
        return values

    before, started, running = evaluate(), time.perf_counter(), None
    for step in range(args.steps):
        ids = order[(step * args.batch_size) % len(order):][: args.batch_size]
        token, sentence, mse = losses(student, teacher, corpus.train[ids])
        loss = token + args.sent * sentence + args.mse * mse
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0:
            print(f"step {step}: loss {running:.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    after = evaluate()
    save_hf_model(student.eval(), args.out, tokenizer=tokenizer)
    record = {"model": args.model, "steps": args.steps, "batch_size": args.batch_size, "seq": args.seq,
              "lr": args.lr, "sent": args.sent, "mse": args.mse, "seconds": round(time.perf_counter() - started),
              "valid_before": dict(zip(("token_cos_dist", "sentence_cos_dist", "mse"), before)),
              "valid_after": dict(zip(("token_cos_dist", "sentence_cos_dist", "mse"), after))}
    Path(args.out, "final_distill.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
