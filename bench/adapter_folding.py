"""uniform-L1-H384 / teacher-L1+mha1 from the default run's supernet: old layout (a map at every boundary) vs
folded maps, and the teacher-weights cut (no maps), timed with the teacher in one interleaved run."""
import json, torch
from nasbert import SuperNet, Arch
from nasbert.modeling import NasBertModel
from nasbert.latency.models import measure_models
from nasbert.teacher import load_teacher
torch.manual_seed(0)
teacher, tok, _ = load_teacher()
sn = SuperNet.from_pretrained("runs/default/supernet")
raw = SuperNet.from_teacher(sn.space, teacher, reorder=False).eval()
E = "identity,identity,identity,identity"
archs = {"L1": Arch.parse(f"384:mha,ffn,identity,identity|384:{E}|384:{E}"),
         "L1+mha1": Arch.parse(f"384:mha,ffn,mha,identity|384:{E}|384:{E}")}
models = {}
for name, arch in archs.items():
    m = sn.extract(arch)
    models[f"{name}/folded"] = m
    cfg = m.config.__class__(**{**m.config.to_dict(), "adapters": True})
    models[f"{name}/every-boundary"] = NasBertModel(cfg).eval()
    models[f"{name}/teacher-weights"] = raw.extract(arch, drop_identity_adapters=True)
    print(name, {k: v.config.adapters for k, v in models.items() if k.startswith(name)})
r = measure_models(models, teacher, engine="onnxruntime", device="cpu", threads=1, batch=1, seq_len=128,
                   vocab_size=30522, repeats=30, rounds=6)
out = {"teacher_ms": r.teacher_latency_ms, "ms": r.latency_ms,
       "speedup": {k: r.teacher_latency_ms / v for k, v in r.latency_ms.items()}}
print(json.dumps(out, indent=1))
json.dump(out, open("bench/adapter_folding.json", "w"), indent=1)
