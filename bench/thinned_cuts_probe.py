"""Thinned teacher cuts at 4x and 6x against the whole-attention members: predicted speed-up (run d10's predictor) and
the search's probe, one worker. python bench/thinned_cuts_probe.py --probe (reads /tmp/runs/d10)"""
import sys, logging, torch
from dataclasses import replace
from nasbert.run.rundir import RunDir
from nasbert.run.stages import calibrated_objective
from nasbert.search.calibrated import calibrated_model
from nasbert.search.probe import Probe, ProbeSettings, load_probe
from nasbert.space import Arch
from nasbert.teacher import load_teacher
logging.basicConfig(level=logging.INFO, format="%(message)s")
torch.set_num_threads(1)
run = RunDir.load("/tmp/runs/d10")
objective, corpus = calibrated_objective(run, run.config)
t = objective.teacher_latency_ms
I = "384:identity,identity"
def A(*layers): return Arch.parse("|".join([f"384:{l}" for l in layers] + [I] * (6 - len(layers))))
cands = {
 "6x edge L2@192": A("mha,ffn192", "mha,ffn192"),
 "6x L4 mha4,ffn192": A(*["mha4,ffn192"] * 4),
 "6x L5 mha3,ffn192": A(*["mha3,ffn192"] * 5),
 "6x L3 mha6,ffn384 top mha6": A("mha6,ffn384", "mha6,ffn384", "mha6,identity"),
 "6x L3 mha8": A(*["mha8,identity"] * 3),
 "4x L4 mha8,ffn192": A(*["mha8,ffn192"] * 4),
 "4x L5 mha6,ffn192": A(*["mha6,ffn192"] * 5),
 "4x L4 mha8,ffn192 top mha8": A("mha8,ffn192", "mha8,ffn192", "mha8,ffn192", "mha8,identity"),
 "4x L3@192 member": A(*["mha,ffn192"] * 3),
}
for k, a in cands.items():
    print(f"{k:28s} predicted {objective.predictor.predict(a):.2f} ms = {t / objective.predictor.predict(a):.2f}x", flush=True)
if "--probe" in sys.argv:
    rows = corpus.train[:run.config.search.calibrate_rows]
    tok = load_teacher(run.config.teacher)[1]
    probe = Probe(load_probe("builtin"), work_dir="/tmp/p6", settings=replace(ProbeSettings(), workers=1))
    items = [(calibrated_model(objective.source, a, objective.teacher, rows)[0], k.replace(" ", "_").replace(",", "-").replace("+", "p")) for k, a in cands.items()]
    for (k, _), s in zip(cands.items(), probe.score_many(items, tok)):
        print(f"{k:28s} probe {s:.1f}", flush=True)
