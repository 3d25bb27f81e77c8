"""Data-parallel block-wise training on Ray Train (2 CPU workers, gloo) through the real CLI: the same files as
in-process training, a loss curve that follows it, and a resume after a worker is killed. Slow: Ray Train starts a
controller and a worker group."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

#: the micro run of the kill-and-resume tests, with longer training and checkpoints every 4 steps
EXTRA = ["train.steps=24", "train.checkpoint_every=4", "train.batch_size=4", "train.threads=1"]


def _nasbert(*args: str, wait: bool = True):
    cmd = [sys.executable, "-m", "nasbert.cli", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def built(tiny_teacher_dir, tmp_path_factory):
    """The micro run with its supernet built, not trained; returns (run path, its command-line arguments)."""
    pytest.importorskip("ray")
    from test_faults import OVERRIDES, SPACE

    root = tmp_path_factory.mktemp("ray-train")
    (root / "micro.yaml").write_text(SPACE)
    args = ["--space", str(root / "micro.yaml"), "--teacher", tiny_teacher_dir, "--no-progress", *OVERRIDES, *EXTRA]
    done = _nasbert("run", "--out", str(root / "run"), "--until", "supernet", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "run", args


def _losses(run: Path) -> dict[int, list[float]]:
    lines = [json.loads(x) for x in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["losses"] for r in lines if r["event"] == "train"}


def test_two_workers_train_what_one_process_trains(built, tmp_path):
    run, args = built
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    shutil.copytree(run, single)
    shutil.copytree(run, parallel)
    one = _nasbert("train", "--out", str(single), *args)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _nasbert("train", "--out", str(parallel), "--ray-address", "local", *args, "train.workers=2")
    assert two.returncode == 0, two.stderr[-3000:]

    for name in ("train/checkpoint/supernet.safetensors", "train/checkpoint/state.json", "train/candidates.json",
                 "space.yaml", "supernet/supernet.safetensors"):
        assert (parallel / name).is_file(), name
    a, b = _losses(single), _losses(parallel)
    assert sorted(b) == sorted(a) == list(range(1, 25))  # one line per step, written once
    # Same batches, masking and paths; the replicas' dropout masks differ from the single process's, so the
    # curves agree within dropout's noise, not to the last digit.
    diffs = [abs(x - y) / y for s in a for x, y in zip(b[s], a[s])]
    assert sum(diffs) / len(diffs) < 0.1, diffs
    manifest = json.loads((parallel / "manifest.json").read_text())["stages"]["train"]
    assert manifest["status"] == "done" and manifest["workers"] == 2 and manifest["steps"] == 24


def _train_worker_pids() -> list[int]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in ps.splitlines() if re.search(r"ray::.*(RayTrainWorker|TrainWorker)", line)]


def test_training_resumes_after_a_worker_is_killed(built, tmp_path):
    run, args = built
    target = tmp_path / "run"
    shutil.copytree(run, target)
    proc = _nasbert("train", "--out", str(target), "--ray-address", "local", *args, "train.workers=2", wait=False)
    state = target / "train" / "checkpoint" / "state.json"
    start = time.monotonic()
    while not (state.is_file() and json.loads(state.read_text())["step"] >= 8):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() - start < 600
        time.sleep(0.2)
    pids = _train_worker_pids()
    assert pids, "no Ray Train worker process found"
    os.kill(pids[-1], signal.SIGKILL)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    losses = _losses(target)
    assert sorted(losses) == list(range(1, 25))  # the lines after the resumed checkpoint were dropped, then redone
    assert json.loads(state.read_text())["step"] == 24
    train = json.loads((target / "manifest.json").read_text())["stages"]["train"]
    assert train["status"] == "done" and train["resumed_at"] is not None  # the group was restarted and resumed
