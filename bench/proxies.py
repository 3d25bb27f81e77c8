"""Proxy study: which cheap, task-free measurement of a model ranks its fine-tuned score the way the score does?

    python bench/proxies.py runs/default/report          # a finished (or partly finished) quality report

For every model of the report that has fine-tuned scores, the final hidden states on fixed sequences of the
run's validation corpus (no masking) are compared with the teacher's:

- ``mse``: plain MSE (the export's whole-model loss, without the MLM corruption);
- ``cosine``: mean per-token cosine similarity;
- ``cka_tokens`` / ``cka_pooled``: linear CKA over token states / mean-pooled sentence vectors (invariant to
  rotations and scale, so a model whose states are a linear map of the teacher's is not penalised);
- ``r2_tokens``: R^2 of a ridge map from the student's token states to the teacher's, fitted on half the tokens
  and scored on the other half;
- ``params`` and ``flops`` as the baselines every proxy must beat.

Each proxy's Kendall tau against the mean score of each task is printed and written to
``bench/proxies_results.json`` (students only: the teacher is its own perfect match on every proxy).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PROXIES = ("mse", "cosine", "cka_tokens", "cka_pooled", "r2_tokens", "params", "flops")


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x - x.mean(0), y - y.mean(0)
    return float((x.T @ y).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm()))


def ridge_r2(x: torch.Tensor, y: torch.Tensor, *, lam: float = 1e-2, seed: int = 0) -> float:
    n = x.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    fit, test = order[: n // 2], order[n // 2 :]
    x = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1)
    a = x[fit]
    w = torch.linalg.solve(a.T @ a + lam * len(fit) * torch.eye(a.shape[1], dtype=x.dtype), a.T @ y[fit])
    residual = y[test] - x[test] @ w
    return float(1 - (residual**2).sum() / ((y[test] - y[test].mean(0)) ** 2).sum())


def main() -> int:
    from nasbert.latency import kendall_tau
    from nasbert.modeling import NasBertModel
    from nasbert.quality.report import _load_run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", help="a report directory (quality_results.json, models/, models.json)")
    parser.add_argument("--sequences", type=int, default=96, help="validation sequences (default 96)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "proxies_results.json"))
    args = parser.parse_args()
    report = Path(args.report)
    settings = json.loads((report / "report.json").read_text())
    results = json.loads((report / "quality_results.json").read_text())
    models = {row["name"]: row for row in json.loads((report / "models.json").read_text())["rows"]}
    run = _load_run(Path(settings["run"]), Path(settings["family"]))
    torch.manual_seed(0)
    ids = run.corpus.valid[: args.sequences]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        teacher = run.teacher(**batch).last_hidden_state.double()
    tokens = teacher.reshape(-1, teacher.shape[-1])

    scores: dict[str, dict[str, float]] = {}
    for row in results["rows"]:
        scores.setdefault(row["name"], {t: float(np.mean(v)) for t, v in row["scores"].items() if v})
    proxies: dict[str, dict[str, float]] = {}
    for name in scores:
        model = NasBertModel.from_pretrained(report / models[name]["path"]).eval()
        with torch.no_grad():
            states = model(**batch).last_hidden_state.double()
        flat = states.reshape(-1, states.shape[-1])
        proxies[name] = {
            "mse": -float(((flat - tokens) ** 2).mean()),  # negated: higher is better for every proxy
            "cosine": float(torch.nn.functional.cosine_similarity(flat, tokens, dim=-1).mean()),
            "cka_tokens": linear_cka(flat, tokens),
            "cka_pooled": linear_cka(states.mean(1), teacher.mean(1)),
            "r2_tokens": ridge_r2(flat[::4], tokens[::4]),
            "params": float(models[name]["params"]),
            "flops": float(run.space.flops(__import__("nasbert").Arch.parse(models[name]["arch"]),
                                           run.device["seq_len"])),
        }
    tasks = sorted({t for s in scores.values() for t in s})
    taus = {task: {p: kendall_tau([proxies[n][p] for n in scores if task in scores[n]],
                                  [scores[n][task] for n in scores if task in scores[n]]) for p in PROXIES}
            for task in tasks}
    out = {"report": str(report), "sequences": args.sequences, "models": len(scores), "scores": scores,
           "proxies": proxies, "kendall_tau": taus}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print("| task | n | " + " | ".join(PROXIES) + " |")
    print("|---|---|" + "---|" * len(PROXIES))
    for task in tasks:
        n = sum(task in s for s in scores.values())
        print(f"| {task} | {n} | " + " | ".join(f"{taus[task][p]:+.2f}" for p in PROXIES) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
