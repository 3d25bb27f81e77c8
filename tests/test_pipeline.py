"""The whole pipeline through the real `nasbert` entry point on the tiny space: run -> family -> pick."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel

from nasbert import Arch, SuperNet
from nasbert.export.calibrate import calibrate
from nasbert.export.family import Family

from conftest import copy_run

TINY = ["corpus.seq_len=32", "corpus.max_documents=12", "train.steps=8", "train.batch_size=4", "train.eval_every=0",
        "train.eval_batches=1", "train.eval_paths=2", "train.warmup_steps=2", "train.shrink.bins=4",
        "train.shrink.samples_per_bin=40", "train.shrink.keep_per_bin=2", "train.shrink.warmup_steps=4",
        "train.shrink.steps_between_rounds=2", "train.shrink.max_rounds=2", "latency.seq_len=32",
        "latency.archs=12", "latency.repeats=3", "latency.rounds=1", "latency.warmup=1", "latency.table_repeats=3",
        "latency.group_size=6", "search.trials=60", "search.budgets=[1.2x, 1.5x, 2x]", "search.top_k=2",
        "export.eval_batches=1"]


def _corpus(run: Path, tokenizer_dir: str):
    """The run's tokenised corpus, from the cache beside it."""
    from transformers import AutoTokenizer

    from nasbert.data import CorpusConfig, load_corpus

    return load_corpus(CorpusConfig(seq_len=32, max_documents=12), AutoTokenizer.from_pretrained(tokenizer_dir),
                       cache_dir=run.parent / "cache" / "corpus", show_progress=False)


def _nasbert() -> list[str]:
    exe = shutil.which("nasbert") or str(Path(sys.executable).with_name("nasbert"))
    return [exe]


@pytest.fixture(scope="module")
def run(tiny_run_template, tmp_path_factory) -> Path:
    return copy_run(tiny_run_template, tmp_path_factory.mktemp("pipeline"))


def test_every_stage_is_done_and_recorded(run):
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert [stages[s]["status"] for s in ("supernet", "latency", "train", "search", "export")] == ["done"] * 5
    assert stages["search"]["trials"] == 60
    for name in ("trials.csv", "pareto.json", "pareto.png", "study.db"):
        assert (run / "search" / name).is_file(), name
    assert (run / "search" / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_family_members_meet_their_budgets_and_load_everywhere(run, tiny_space):
    family = Family.load(run / "family")
    assert 1 <= len(family.models) <= 3 and family.teacher_latency_ms > 0
    supernet = SuperNet.from_pretrained(run / "supernet")
    ids = torch.randint(5, 99, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    for member in family.models:
        arch = Arch.from_dict(member.arch)
        limit = {"1.2x": 1.2, "1.5x": 1.5, "2x": 2.0}[member.budget]
        assert member.latency_ms * limit <= family.teacher_latency_ms + 1e-9
        assert member.speedup == pytest.approx(family.teacher_latency_ms / member.latency_ms)
        # the NAS-BERT space (not elastic): every member is a path of the trained supernet, with its adapters
        assert member.source == "supernet" and "calibration" not in member.extra
        assert member.params == tiny_space.num_params(arch)
        directory = run / "family" / member.path
        with torch.no_grad():
            expected = supernet(ids, mask, arch=arch)
        _assert_reload_and_onnx(directory, member, expected, ids, mask)
        # the int8 graph: written within its error bound, timed with the teacher
        assert member.int8_onnx == f"{member.path}/model.int8.onnx" and (run / "family" / member.int8_onnx).is_file()
        assert 0 < member.int8_error <= 0.25 and member.int8_latency_ms > 0 and member.int8_speedup > 0
        card = (directory / "README.md").read_text()
        assert f"{member.params:,}" in card and member.budget in card


def test_pick_chooses_from_the_family_and_fails_right(run):
    family = Family.load(run / "family")
    fastest = max(m.speedup for m in family.models)
    done = subprocess.run(_nasbert() + ["pick", str(run / "family"), "--speedup", "1.2", "--json"],
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    chosen = json.loads(done.stdout)
    eligible = [m for m in family.models if m.latency_ms * 1.2 <= family.teacher_latency_ms]
    # the export's own ranking: the highest cosine to the teacher, then the lower loss, then the faster
    assert chosen["name"] == min(eligible, key=lambda m: (-m.cosine, m.valid_loss, m.latency_ms)).name
    done = subprocess.run(_nasbert() + ["pick", str(run / "family"), "--speedup", str(fastest * 10)],
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "ask for at most" in done.stderr


def test_search_resumes_from_its_storage(run):
    done = subprocess.run(_nasbert() + ["search", "--run", str(run), "--trials", "75", "--no-progress"],
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "60 complete; 75 trials wanted" in done.stderr
    assert json.loads((run / "manifest.json").read_text())["stages"]["search"]["trials"] == 75


# ---------------------------------------------------------------------------------------------------- elastic

#: the default space (``elastic``: built from the teacher's config) on the tiny teacher; a parameter budget that
#: the teacher's own sub-layers meet whatever the host's timing, and a latency budget they may miss (then skipped)
ELASTIC = [*TINY, "search.trials=24", "search.budgets=[1.2x, 40k]", "search.calibrate_rows=64",
           "export.calibrate_rows=64", "export.int8=false", "search.probe_train=48", "search.probe_test=32"]


@pytest.fixture(scope="module")
def elastic_run(tiny_teacher_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("elastic") / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NASBERT_CACHE": str(out.parent / "cache")}
    done = subprocess.run(_nasbert() + ["run", "--teacher", tiny_teacher_dir, "--out", str(out), "--no-progress",
                                        *ELASTIC], check=False, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_elastic_run_exports_calibrated_members_that_reload_exactly(elastic_run, tiny_space, tiny_teacher,
                                                                    tiny_teacher_dir):
    """The default run: the elastic space of the teacher, every member the teacher's own heads and neurons,
    calibrated; its Hugging Face directory and ONNX graph compute what :func:`calibrate` makes of it."""
    import dataclasses

    from nasbert import SearchSpace

    config = json.loads((elastic_run / "manifest.json").read_text())
    assert [config["stages"][s]["status"] for s in ("supernet", "latency", "train", "search", "export")] == \
        ["done", "done", "skipped", "done", "done"]  # export.weights: teacher reads no trained supernet
    assert "export.weights is teacher" in config["stages"]["train"]["reason"]
    assert not (elastic_run / "train").exists()
    space = SearchSpace.load(elastic_run / "space.yaml")
    assert space.elastic and space.teacher.hidden_size == tiny_space.teacher.hidden_size
    assert space.num_blocks == tiny_space.teacher.num_hidden_layers and space.candidates is None
    family = Family.load(elastic_run / "family")
    assert "40k" in {m.budget for m in family.models}
    # the probe chose: every member has the best probe score among the candidates that meet its budget and no
    # tighter budget took (every probed candidate's fine-tuning run is in the run, with that score)
    pareto = json.loads((elastic_run / "search" / "pareto.json").read_text())
    assert any(c["enqueued"] for b in pareto["budgets"] for c in b["best"])  # starting points are candidates
    probed = {c["arch"]: c["probe"] for c in family.extra["candidates"] if "probe" in c}
    runs = sorted((elastic_run / "search" / "probe").glob("*/run/metrics.json"))
    assert len(runs) == len(probed) >= len(family.models)
    assert sorted(100 * json.loads(r.read_text())["dev"]["accuracy"] for r in runs) == pytest.approx(
        sorted(probed.values()))
    for member in family.models:
        assert member.choice.startswith("highest score on the qnli probe (48 pairs x 2 epochs, scored on 32)")
        assert member.extra["probe"] == probed[str(Arch.from_dict(member.arch))]
    source = SuperNet.from_teacher(dataclasses.replace(space, candidates=None), tiny_teacher_dir,
                                   reorder="units").eval()
    rows = load_corpus_rows(elastic_run, tiny_teacher_dir)[:64]
    ids = torch.randint(5, 99, (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    for member in family.models:
        arch = Arch.from_dict(member.arch)
        space.validate(arch)
        assert member.source == "teacher" and member.extra["trial"] is not None
        assert member.params == space.num_params(arch, adapters=False)  # the teacher's sub-layers, no adapters
        if member.budget == "40k":
            assert member.params <= 40_000
        model = source.extract(arch, drop_identity_adapters=True)
        records = [r.to_dict() for r in calibrate(model, arch, space, tiny_teacher, rows)]
        pruned = sum(1 for b in arch.blocks for op in b.layers if op not in ("mha", "ffn"))
        assert len(records) == pruned == len(member.extra.get("calibration", []))
        for got, want in zip(records, member.extra.get("calibration", [])):
            assert {k: v for k, v in got.items() if "error" not in k} == \
                {k: v for k, v in want.items() if "error" not in k}
            assert got["error_after"] == pytest.approx(want["error_after"], rel=1e-6, abs=1e-12)
            assert got["error_after"] <= got["error_before"]
        with torch.no_grad():
            expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
        _assert_reload_and_onnx(elastic_run / "family" / member.path, member, expected, ids, mask)


def test_an_export_that_reads_the_untrained_supernet_is_refused(elastic_run, tmp_path, monkeypatch):
    """The default run skipped training; an export told to compete the supernet's weights stops with the fix
    instead of exporting the untrained supernet, and writes nothing."""
    import dataclasses

    from nasbert.config import ConfigError
    from nasbert.run import RunDir, stage_export

    monkeypatch.setenv("NASBERT_CACHE", str(elastic_run.parent / "cache"))
    rundir = RunDir.load(elastic_run)
    config = dataclasses.replace(rundir.config, export=dataclasses.replace(rundir.config.export, weights="both"))
    with pytest.raises(ConfigError, match=r"train stage is skipped: train it first with nasbert train --out"):
        stage_export(rundir, config, out=str(tmp_path / "family"))
    assert not (tmp_path / "family").exists()


def test_nasbert_train_trains_what_the_run_skipped(elastic_run, tiny_teacher_dir, tmp_path):
    """Asked for by name, training is never skipped: on a copy of the default run it trains the supernet."""
    run = copy_run(elastic_run, tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NASBERT_CACHE": str(run.parent / "cache")}
    done = subprocess.run(_nasbert() + ["train", "--teacher", tiny_teacher_dir, "--out", str(run), "--no-progress",
                                        *ELASTIC], check=False, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    train = json.loads((run / "manifest.json").read_text())["stages"]["train"]
    assert train["status"] == "done" and train["steps"] > 0 and (run / "train" / "metrics.jsonl").is_file()


def _assert_reload_and_onnx(directory: Path, member, expected: torch.Tensor, ids, mask) -> None:
    """The exported member, reloaded with transformers and run with ONNX Runtime, computes ``expected``."""
    import onnxruntime as ort

    reloaded = AutoModel.from_pretrained(directory)
    assert sum(p.numel() for p in reloaded.parameters()) == member.params
    with torch.no_grad():
        got = reloaded(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                  "token_type_ids": np.zeros_like(ids.numpy())})[0]
    keep = mask.bool().numpy()
    np.testing.assert_allclose(onnx_out[keep], expected.numpy()[keep], atol=1e-4)


def load_corpus_rows(run: Path, tokenizer_dir: str) -> torch.Tensor:
    """The training rows of ``run``'s corpus (the rows its export calibrated on come first)."""
    return _corpus(run, tokenizer_dir).train


@pytest.mark.slow  # Ray in the default suite: tests/test_search.py (Tune) and tests/test_training.py (actors)
def test_export_reevaluates_candidates_as_ray_tasks(run, tmp_path):
    pytest.importorskip("ray")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NASBERT_CACHE": str(run.parent / "cache")}
    families = {}
    for name, extra in (("local", []), ("ray", ["--ray-address", "local"])):
        out = tmp_path / name
        done = subprocess.run(_nasbert() + ["export", "--run", str(run), "--out", str(out), *extra],
                              check=False, capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-4000:]
        families[name] = Family.load(out)
    # The same candidates are evaluated on the same batches, in Ray tasks instead of in-process.
    losses = {str(Arch.from_dict(m.arch)): m.valid_loss for m in families["local"].models}
    common = [m for m in families["ray"].models if str(Arch.from_dict(m.arch)) in losses]
    assert common, "the Ray export chose none of the in-process export's models"
    for member in common:
        assert member.valid_loss == pytest.approx(losses[str(Arch.from_dict(member.arch))], rel=1e-5)


def test_export_with_whole_model_distillation_records_it(run, tmp_path, monkeypatch):
    """export.distill.steps > 0: every member is distilled on the run's corpus before it is written."""
    import dataclasses

    from nasbert.run import stage_export
    from nasbert.run import RunDir
    from nasbert.training import DistillConfig

    monkeypatch.setenv("NASBERT_CACHE", str(run.parent / "cache"))
    rundir = RunDir.load(run)
    config = rundir.config
    distill = DistillConfig(steps=3, batch_size=4, lr=1e-3, warmup_steps=1, eval_batches=1, threads=1)
    config = dataclasses.replace(config, export=dataclasses.replace(config.export, distill=distill))
    stage_export(rundir, config, out=str(tmp_path / "family"))
    raw = json.loads((tmp_path / "family" / "family.json").read_text())
    family = Family.load(tmp_path / "family")
    assert raw["models"] and all(m["distill_steps"] == 3 for m in raw["models"])
    for member in family.models:
        assert member.valid_loss_before_distill is not None and member.valid_loss != member.valid_loss_before_distill
        assert "before whole-model distillation" in (tmp_path / "family" / member.path / "README.md").read_text()
    # "before" is the loss the undistilled export chose on (same batches; a calibrated member's is the cut's own,
    # as a distilled member starts from the supernet's weights); measured latency may pick other models
    plain = {(m.source, str(Arch.from_dict(m.arch))): m.extra.get("uncalibrated", {}).get("valid_loss", m.valid_loss)
             for m in Family.load(run / "family").models}
    for member in family.models:
        key = (member.source, str(Arch.from_dict(member.arch)))
        if key in plain:
            assert member.valid_loss_before_distill == pytest.approx(plain[key], rel=1e-5)
    assert all(m.distill_steps == 0 for m in Family.load(run / "family").models)


def test_an_elastic_familys_baselines_hold_each_members_magnitude_pruned_twin(elastic_run, tiny_teacher,
                                                                              tiny_teacher_dir, tmp_path):
    """`nasbert baselines` on the default (elastic) run: each member's twin has its shape, the teacher's heads and
    neurons by weight magnitude and no calibration, and is timed with the other rows; a rule's choice (--rule) is
    calibrated as the export calibrates."""
    import dataclasses

    from nasbert import SearchSpace
    from nasbert.modeling import NasBertModel

    out = tmp_path / "baselines"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NASBERT_CACHE": str(elastic_run.parent / "cache")}
    family = Family.load(elastic_run / "family")
    space = SearchSpace.load(elastic_run / "space.yaml")
    rule = space.layer_dropped(1).blocks[:1] + (space._elastic_path("mha1", "identity"),) \
        + space.layer_dropped(1).blocks[2:]  # a hand-made point: the bottom layer and one head of the next
    rule = Arch(rule)
    done = subprocess.run(_nasbert() + ["baselines", str(elastic_run), "--out", str(out), "--no-progress",
                                        "--baselines", "layerdrop", "pruned",
                                        "--rule", f"{family.models[0].budget}={rule}"],
                          check=False, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    models = json.loads((out / "models.json").read_text())
    rule_row = next(r for r in models["rows"] if r["kind"] == "rule")
    assert rule_row["budget"] == family.models[0].budget and rule_row["arch"] == str(rule)
    rows = load_corpus_rows(elastic_run, tiny_teacher_dir)[:64]  # export.calibrate_rows of the run
    want = SuperNet.from_teacher(dataclasses.replace(space, candidates=None), tiny_teacher_dir,
                                 reorder="units").eval().extract(rule, drop_identity_adapters=True)
    calibrate(want, rule, space, tiny_teacher, rows)
    got = NasBertModel.from_pretrained(out / rule_row["path"]).state_dict()
    assert all(torch.allclose(got[k], v, atol=1e-6) for k, v in want.state_dict().items())
    source = SuperNet.from_teacher(dataclasses.replace(space, candidates=None), tiny_teacher_dir,
                                   reorder="units").eval()
    assert {r["kind"] for r in models["rows"]} <= {"teacher", "searched", "layerdrop", "pruned", "rule"}
    for member in family.models:
        twin = next(r for r in models["rows"] if r["kind"] == "pruned" and r["budget"] == member.budget)
        assert twin["name"] == f"pruned-{member.name}" and twin["arch"] == str(Arch.from_dict(member.arch))
        assert twin["params"] == member.params and twin["latency_ms"] > 0
        got = NasBertModel.from_pretrained(out / twin["path"]).state_dict()
        want = source.extract(Arch.from_dict(member.arch), drop_identity_adapters=True).state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        calibrated = NasBertModel.from_pretrained(elastic_run / "family" / member.path).state_dict()
        pruned_layers = any(op not in ("mha", "ffn", "identity") for b in Arch.from_dict(member.arch).blocks
                            for op in b.layers)
        assert pruned_layers == any(not torch.equal(got[k], calibrated[k]) for k in got)
