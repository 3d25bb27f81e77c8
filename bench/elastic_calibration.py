"""How far from the teacher a random architecture of the elastic teacher space is, magnitude-pruned, calibrated as
the search calibrates it (one fit per sub-layer and size, on the teacher's inputs) and as the export does (bottom-up,
on its own inputs); and what a search trial costs.

    python bench/elastic_calibration.py --archs 12 --out bench/results/elastic_calibration.json

Built-in teacher and corpus (offline); 1 - cosine of the final states to the teacher's on unmasked validation
batches, the search's proxy. Writes the command, machine, date and every raw number.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nasbert.data.corpus import CorpusConfig, load_corpus
from nasbert.latency.measure import device_info
from nasbert.search.calibrated import CalibratedObjective, calibrated_model
from nasbert.space import SearchSpace
from nasbert.teacher import load_teacher
from nasbert.training.evaluation import plain_batches


class _NoLatency:
    """The objective's latency is not what this benchmark measures."""

    device = {"seq_len": 128}
    teacher_latency_ms = None

    def predict(self, arch) -> float:
        return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", type=int, default=12)
    parser.add_argument("--rows", type=int, default=128, help="calibration rows (search and export alike)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/results/elastic_calibration.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    teacher, tokenizer, source = load_teacher(None)
    c = teacher.config
    space = SearchSpace.elastic_for(SearchSpace.load("minilm_l6_elastic").teacher, name="minilm_l6_elastic")
    corpus = load_corpus(CorpusConfig(), tokenizer, show_progress=False)
    rows = corpus.train[: args.rows]
    batches = plain_batches(corpus.valid, batch_size=16, n_batches=2)
    start = time.perf_counter()
    objective = CalibratedObjective(space, _NoLatency(), teacher, calibration=rows, batches=batches)
    setup_s = time.perf_counter() - start
    rng = np.random.default_rng(args.seed)
    results = []
    for _ in range(args.archs):
        arch = space.sample(rng)
        start = time.perf_counter()
        searched = objective.proxy_loss(arch)
        trial_s = time.perf_counter() - start
        bottom_up, _ = calibrated_model(objective.source, arch, teacher, rows)
        magnitude, _ = calibrated_model(objective.source, arch, teacher, None)
        results.append({"arch": str(arch), "params": space.num_params(arch, adapters=False),
                        "trial_s": trial_s, "search_calibrated": searched,
                        "bottom_up_calibrated": objective.score(bottom_up), "magnitude": objective.score(magnitude)})
        print(json.dumps(results[-1]), flush=True)
    out = {"command": " ".join(["python", *sys.argv]), "date": dt.date.today().isoformat(),
           "machine": {**device_info(engine="onnxruntime", device="cpu", threads=args.threads, batch=1,
                                     seq_len=128).to_dict(), "platform": platform.platform()},
           "teacher": source, "space": space.name, "rows": args.rows, "setup_s": setup_s,
           "teacher_layers": c.num_hidden_layers, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
