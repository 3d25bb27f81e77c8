"""Frozen-feature linear probe on the built-in QNLI pairs, a cheaper proxy candidate, against the 4x panel of
bench/results/proxy_within_budget.json (its models under /tmp/pw/4x). python bench/linear_probe.py bench/results/proxy_within_budget.json"""
import json, sys, time, numpy as np, torch
from sklearn.linear_model import LogisticRegression
from nasbert.modeling import NasBertModel
from transformers import AutoTokenizer
from nasbert.search.probe import load_probe
from nasbert.latency.predictor import kendall_tau
torch.set_num_threads(1)
task = load_probe("builtin")
rows = json.load(open(sys.argv[1]))["budgets"]["4x"]["rows"]
tok = AutoTokenizer.from_pretrained(f"/tmp/pw/4x/{rows[0]['name']}/model")
def enc(exs):
    return tok([e.text_a for e in exs], [e.text_b for e in exs], truncation=True, max_length=64, padding="max_length", return_tensors="pt")
tr, te = enc(task.train), enc(task.dev)
ytr, yte = np.array([e.label for e in task.train]), np.array([e.label for e in task.dev])
out = []
for r in rows:
    if r["kind"] == "pruned" or not r["serves"]: continue
    t0 = time.time()
    model = NasBertModel.from_pretrained(f"/tmp/pw/4x/{r['name']}/model").eval()
    feats = []
    for batch in (tr, te):
        parts = []
        with torch.no_grad():
            for i in range(0, len(batch["input_ids"]), 250):
                o = model(**{k: v[i:i+250] for k, v in batch.items()}, output_hidden_states=False)
                h = o.last_hidden_state; m = batch["attention_mask"][i:i+250, :, None].float()
                parts.append(torch.cat([(h*m).sum(1)/m.sum(1), h[:, 0]], 1).numpy())
        feats.append(np.concatenate(parts))
    mu, sd = feats[0].mean(0), feats[0].std(0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=2000).fit((feats[0]-mu)/sd, ytr)
    acc = 100 * clf.score((feats[1]-mu)/sd, yte)
    out.append((r["name"], r["kind"], r["panel"], r["proxies"].get("probe_qnli"), acc))
    print(f"{r['name']} {r['kind']:9s} panel {r['panel']:.2f} probe {r['proxies'].get('probe_qnli'):.1f} linear {acc:.1f} ({time.time()-t0:.0f} s)", flush=True)
p = [o[2] for o in out]
print("tau linear", kendall_tau([o[4] for o in out], p), "tau probe", kendall_tau([o[3] for o in out], p), "n", len(out))
