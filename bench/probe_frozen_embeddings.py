"""Does the probe rank as well with the word embeddings frozen? Re-probes the models that
bench/proxy_within_budget.py fine-tuned on the panel (saved under /tmp/pw/<budget>/<name>/model), with the probe's
recipe and frozen word embeddings, and prints per budget the Kendall tau of both probes against the panel mean
(read from bench/results/proxy_within_budget.json), over the models that serve the budget.

    python bench/probe_frozen_embeddings.py > /tmp/reprobe.log
"""

import json
import logging
import time
from pathlib import Path

from transformers import AutoTokenizer

from nasbert.latency.predictor import kendall_tau
from nasbert.modeling import NasBertModel
from nasbert.search.probe import Probe, ProbeSettings, load_probe

logging.basicConfig(level=logging.INFO)
d = json.load(open("bench/results/proxy_within_budget.json"))
probe = Probe(load_probe("builtin"), work_dir="/tmp/reprobe", settings=ProbeSettings(freeze_word_embeddings=True))
out = {}
for b in ("4x", "3x", "2x"):
    rows = [r for r in d["budgets"][b]["rows"] if "proxies" in r and r["serves"]]
    xs, ys, old = [], [], []
    for r in rows:
        mdir = Path("/tmp/pw") / b / r["name"] / "model"
        model = NasBertModel.from_pretrained(mdir)
        tok = AutoTokenizer.from_pretrained(mdir)
        t = time.time()
        s = probe.score(model, tok, name=r["name"])
        print(b, r["name"], r["kind"], "new", s, "old", r["proxies"]["probe_qnli"], "panel", r["panel"],
              f"{time.time() - t:.0f}s", flush=True)
        xs.append(s)
        ys.append(r["panel"])
        old.append(r["proxies"]["probe_qnli"])
    out[b] = {"n": len(xs), "tau_new": kendall_tau(xs, ys), "tau_old": kendall_tau(old, ys)}
    print(b, out[b], flush=True)
