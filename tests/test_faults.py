"""Kill -9 anywhere, run the same command again: it finishes, loses nothing, counts nothing twice and leaves
nothing half-written.

Every case runs the real CLI in a subprocess with ``NASBERT_FAULT`` naming a kill point (``nasbert/io.py``,
:func:`~nasbert.io.fault_point`): the process dies by SIGKILL there, at that moment, with no chance to clean up.
The same command without the variable must then finish, and where the interrupted stage is deterministic its
outputs must equal those of a run that was never interrupted. The space is a small one (three ops, two widths)
so that a whole ``nasbert run`` takes seconds, and the budgets are parameter counts, so that the family does not
depend on timing noise. The default suite tries a kill inside a training checkpoint write, one inside the search
and one inside fine-tuning; the ``slow`` variant (``pytest -m slow tests/test_faults.py``) tries 20 points in all: in
every stage of ``nasbert run`` (supernet 2, latency 2, train 7, search 4, export 2), in ``nasbert finetune`` (2)
and in ``nasbert distill`` (1).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from nasbert.io import FAULT_ENV

SPACE = """\
name: micro
description: the tiny teacher with three ops and two widths, for kill-and-resume tests
teacher:
  name: null
  hidden_size: 32
  num_hidden_layers: 4
  num_attention_heads: 4
  intermediate_size: 128
  vocab_size: 99
  max_position_embeddings: 64
  type_vocab_size: 2
num_blocks: 2
hidden_choices: [16, 32]
ops: [mha, ffn, identity]
head_size: 8
ffn_ratio: 4
"""

OVERRIDES = ["corpus.seq_len=32", "corpus.max_documents=12", "train.steps=12", "train.batch_size=4",
             "train.checkpoint_every=4", "train.eval_every=0", "train.eval_batches=1", "train.eval_paths=2",
             "train.warmup_steps=2", "train.shrink.bins=4", "train.shrink.samples_per_bin=8",
             "train.shrink.keep_per_bin=2", "train.shrink.warmup_steps=4", "train.shrink.steps_between_rounds=2",
             "train.shrink.max_rounds=2", "latency.seq_len=32", "latency.archs=12", "latency.repeats=2",
             "latency.rounds=1", "latency.warmup=1", "latency.table_repeats=2", "latency.group_size=6",
             "search.trials=40", "search.budgets=[40k, 25k]", "search.top_k=2", "export.eval_batches=1"]


def _command(space: Path, teacher: str, run: Path) -> list[str]:
    return [sys.executable, "-m", "nasbert.cli", "run", "--space", str(space), "--teacher", teacher, "--out",
            str(run), "--no-progress", *OVERRIDES]


def _env(cache: Path, fault: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    env.update(HF_HUB_OFFLINE="1", NASBERT_CACHE=str(cache))
    if fault is not None:
        env[FAULT_ENV] = fault
    return env


def _run(command: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _leftovers(root: Path) -> list[Path]:
    """Temporary or moved-aside directories and files of an atomic write that nobody cleaned up."""
    return [p for p in root.rglob(".*") if p.name.endswith(".tmp") or ".old-" in p.name]


def _train_steps(run: Path) -> list[int]:
    lines = (run / "train" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if json.loads(line)["event"] == "train"]


def _trials(run: Path) -> list[dict]:
    with open(run / "search" / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def micro(tiny_teacher_dir, tmp_path_factory):
    """The space file, and a run whose supernet and latency stages are done (killed as training starts), from
    which the training, search and export cases start: they share its latency profile, so their training is
    comparable with the reference run's."""
    root = tmp_path_factory.mktemp("faults")
    space = root / "micro.yaml"
    space.write_text(SPACE)
    base = root / "base"
    killed = _run(_command(space, tiny_teacher_dir, base), _env(root / "cache", "mark.train.running"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    manifest = json.loads((base / "manifest.json").read_text())
    assert {s for s, e in manifest["stages"].items() if e["status"] == "done"} == {"supernet", "latency"}
    reference = root / "reference"
    shutil.copytree(base, reference)
    done = _run(_command(space, tiny_teacher_dir, reference), _env(root / "cache"))
    assert done.returncode == 0, done.stderr[-3000:]
    return {"root": root, "space": space, "base": base, "reference": reference, "teacher": tiny_teacher_dir}


def _kill_and_resume(micro, fault: str, name: str, *, from_base: bool = True) -> Path:
    run = micro["root"] / name
    if from_base:
        shutil.copytree(micro["base"], run)
    command, cache = _command(micro["space"], micro["teacher"], run), micro["root"] / "cache"
    killed = _run(command, _env(cache, fault))
    assert killed.returncode == -signal.SIGKILL, f"{fault} was never reached:\n{killed.stderr[-3000:]}"
    done = _run(command, _env(cache))
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(manifest["stages"][s]["status"] == "done" for s in ("supernet", "latency", "train", "search",
                                                                     "export"))
    assert not _leftovers(run)
    assert _train_steps(run) == list(range(1, 13))  # every step logged once
    numbers = [int(t["number"]) for t in _trials(run)]
    assert sorted(numbers) == list(range(40))  # every trial once
    family = json.loads((run / "family" / "family.json").read_text())
    assert family["models"] and all((run / "family" / m["path"] / "model.safetensors").is_file()
                                    for m in family["models"])
    return run


def _same_training(run: Path, reference: Path) -> None:
    """Training is deterministic: a resumed run ends with the reference's weights and surviving paths, so the
    (seeded) search over them finds the same trials."""
    got, want = load_file(run / "supernet" / "supernet.safetensors"), load_file(reference / "supernet" /
                                                                             "supernet.safetensors")
    assert got.keys() == want.keys()
    assert all(got[k].equal(want[k]) for k in want)
    assert (run / "space.yaml").read_text() == (reference / "space.yaml").read_text()
    assert [(t["number"], t["arch"]) for t in _trials(run)] == [(t["number"], t["arch"]) for t in _trials(reference)]


# The default suite: a kill inside a checkpoint write and one inside the search (whose resumed run is checked
# against the reference through training as well). The slow variant: every other point below.
TRAINING = ["train.checkpoint@2"]
LATER = ["search.trial@15"]
SLOW_TRAINING = ["train.step@1", "train.step@3", "train.checkpoint@1", "swap:checkpoint@2", "swap:supernet",
                 "mark.train.done"]
SLOW_LATER = ["search.trial@1", "search.trial@39", "mark.search.done", "swap:family", "mark.export.done"]
EARLY: list[str] = []
SLOW_EARLY = ["swap:supernet", "latency.group@1", "mark.supernet.done", "mark.latency.done"]


def _params(points: list[str], slow: list[str]) -> list:
    return [*points, *(pytest.param(p, marks=pytest.mark.slow) for p in slow)]


@pytest.mark.parametrize("fault", _params(TRAINING, SLOW_TRAINING))
def test_killed_training_resumes_to_the_same_weights(micro, fault):
    run = _kill_and_resume(micro, fault, "train-" + fault.replace(":", "-").replace("@", "-"))
    _same_training(run, micro["reference"])


@pytest.mark.parametrize("fault", _params(LATER, SLOW_LATER))
def test_killed_search_or_export_finishes_with_every_trial_once(micro, fault):
    run = _kill_and_resume(micro, fault, "later-" + fault.replace(":", "-").replace("@", "-"))
    (reference_pareto,) = [json.loads((r / "search" / "pareto.json").read_text()) for r in [micro["reference"]]]
    pareto = json.loads((run / "search" / "pareto.json").read_text())
    assert [b["budget"] for b in pareto["budgets"]] == [b["budget"] for b in reference_pareto["budgets"]]
    if not fault.startswith("search"):  # killed after the search: its trials are the reference's
        _same_training(run, micro["reference"])


@pytest.mark.parametrize("fault", _params(EARLY, SLOW_EARLY))
def test_killed_supernet_or_latency_stage_finishes(micro, fault):
    _kill_and_resume(micro, fault, "early-" + fault.replace(":", "-").replace("@", "-"), from_base=False)


def test_a_swap_killed_between_its_two_renames_is_put_back(tmp_path):
    """The one moment of atomic_dir with no directory at its path: the rerun's first look finds the version."""
    from nasbert.io import atomic_dir, recover_dir

    target = tmp_path / "checkpoint"
    with atomic_dir(target) as tmp:
        (tmp / "state.json").write_text('{"step": 1}')
    code = ("import sys; from pathlib import Path; from nasbert.io import atomic_dir\n"
            f"with atomic_dir(Path({str(target)!r})) as tmp:\n"
            "    (tmp / 'state.json').write_text('{\"step\": 2}')\n")
    env = {**os.environ, FAULT_ENV: "swap:checkpoint"}
    killed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not target.exists()  # the old version is aside, the new one complete beside it
    recover_dir(target)
    assert json.loads((target / "state.json").read_text()) == {"step": 2}  # the newer complete version wins
    assert not (target / ".complete").exists() and not _leftovers(tmp_path)


def test_recovery_puts_the_old_version_back_when_the_new_one_is_incomplete(tmp_path):
    from nasbert.io import recover_dir

    target = tmp_path / "family"
    old = tmp_path / ".family.old-999999999"  # no such process
    old.mkdir()
    (old / "family.json").write_text("{}")
    partial = tmp_path / ".family.999999999.abcd1234.tmp"  # killed while it was being written: no marker
    partial.mkdir()
    (partial / "half").write_text("")
    recover_dir(target)
    assert (target / "family.json").read_text() == "{}" and not _leftovers(tmp_path)


def test_recovery_leaves_a_running_writers_directory_alone(tmp_path):
    from nasbert.io import recover_dir

    target = tmp_path / "model"
    target.mkdir()
    mine = tmp_path / f".model.{os.getppid()}.abcd1234.tmp"  # a live process (the one that started pytest)
    mine.mkdir()
    recover_dir(target)
    assert mine.is_dir()


def _finetune_command(model: str, data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "nasbert.cli", "finetune", model, "--task", "sst2", "--data-dir", str(data),
            "--epochs", "2", "--lr", "3e-3", "--batch-size", "16", "--max-seq-len", "16",
            "--out", str(out), "--no-progress", "--no-onnx"]


@pytest.mark.parametrize("fault", ["finetune.step@7", pytest.param("finetune.checkpoint@2", marks=pytest.mark.slow)])
def test_killed_finetuning_resumes_to_the_same_model(micro, fault, tmp_path):
    from test_finetune import _sentences

    data = tmp_path / "glue"
    (data / "SST-2").mkdir(parents=True)
    for split, n, seed in (("train", 96, 0), ("dev", 32, 1)):
        rows = "".join(f"{s}\t{y}\n" for s, y in _sentences(n, seed))
        (data / "SST-2" / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    env = _env(micro["root"] / "cache")
    reference = _run(_finetune_command(micro["teacher"], data, tmp_path / "reference"), env)
    assert reference.returncode == 0, reference.stderr[-3000:]
    command = _finetune_command(micro["teacher"], data, tmp_path / "ft")
    killed = _run(command, _env(micro["root"] / "cache", fault))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    done = _run(command, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stderr
    log = [json.loads(line) for line in (tmp_path / "ft" / "log.jsonl").read_text().splitlines()]
    want = [json.loads(line) for line in (tmp_path / "reference" / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], "dev" in r) for r in log] == [(r["step"], "dev" in r) for r in want]  # each line once
    assert [r.get("dev") for r in log] == [r.get("dev") for r in want]
    got = load_file(tmp_path / "ft" / "model" / "model.safetensors")
    ref = load_file(tmp_path / "reference" / "model" / "model.safetensors")
    assert all(got[k].equal(ref[k]) for k in ref)
    assert not _leftovers(tmp_path) and not list(tmp_path.rglob("*.tmp"))


@pytest.mark.slow
def test_killed_distillation_reruns_to_the_same_model(micro, tmp_path):
    """``nasbert distill`` writes its model at the end, atomically: a kill leaves nothing, the rerun starts
    over with the same seed and ends with the same weights."""
    arch = json.loads((micro["reference"] / "family" / "family.json").read_text())["models"][0]["arch"]
    def command(out):
        return [sys.executable, "-m", "nasbert.cli", "distill", "--run", str(micro["reference"]), "--arch",
                json.dumps(arch), "--steps", "8", "--batch-size", "4", "--out", str(out), "--no-progress"]
    env = _env(micro["root"] / "cache")
    reference = _run(command(tmp_path / "reference"), env)
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed = _run(command(tmp_path / "model"), _env(micro["root"] / "cache", "distill.step@5"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "model").exists() and not _leftovers(tmp_path)
    done = _run(command(tmp_path / "model"), env)
    assert done.returncode == 0, done.stderr[-3000:]
    got = load_file(tmp_path / "model" / "model.safetensors")
    ref = load_file(tmp_path / "reference" / "model.safetensors")
    assert got.keys() == ref.keys() and all(got[k].equal(ref[k]) for k in ref)
