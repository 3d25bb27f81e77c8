"""The search on a real local Ray cluster (``ray start --head`` and a second node, both on this machine): kill the
driver and rerun the same command, kill a worker, join from a second driver; the study ends with exactly the trials
asked for, none lost or counted twice. Slow: a cluster start and several searches."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port

pytestmark = pytest.mark.slow

RAY = Path(sys.executable).parent / "ray"
#: the cluster and its drivers: no usage report; no token authentication (a cluster of this machine's processes)
ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node (2 CPUs) and a second node (1 CPU) on this machine; yields the head's address."""
    pytest.importorskip("ray")
    if not RAY.exists():
        pytest.skip(f"the ray command is not at {RAY}")
    port = free_port()
    temp = Path("/tmp") / f"nasbert-ray-{port}"  # Ray's socket paths must stay short
    env = {**os.environ, **ENV}
    common = ["--disable-usage-stats", f"--temp-dir={temp}"]
    head = subprocess.run([str(RAY), "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                           *common], capture_output=True, text=True, env=env, timeout=180)
    if head.returncode != 0:
        pytest.skip(f"ray start --head failed here: {head.stderr.strip()[-400:]}")
    address = f"127.0.0.1:{port}"
    try:
        node = subprocess.run([str(RAY), "start", f"--address={address}", "--num-cpus=1", *common],
                              capture_output=True, text=True, env=env, timeout=180)
        assert node.returncode == 0, node.stderr[-2000:]
        yield address
    finally:
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, env=env, timeout=180)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def trained_run(tiny_teacher_dir, tmp_path_factory):
    """A micro run profiled and trained, searched by nobody yet; its trials' heartbeat is 1 s."""
    from test_faults import OVERRIDES, SPACE

    root = tmp_path_factory.mktemp("cluster-run")
    (root / "micro.yaml").write_text(SPACE)
    run = root / "run"
    done = _nasbert("run", "--space", str(root / "micro.yaml"), "--teacher", tiny_teacher_dir, "--out", str(run),
                    "--no-progress", "--until", "train", *OVERRIDES, "search.heartbeat_s=1", "search.trials=200",
                    env={"NASBERT_CACHE": str(root / "cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def _nasbert(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nasbert.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=900)


def _search(run: Path, address: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nasbert.cli", "search", "--run", str(run), "--ray-address", address,
                             "--workers", "2", "--no-progress", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **ENV})


def _states(run: Path) -> dict[str, int]:
    """Trial states in the run's study (read with sqlite3, as another process would)."""
    db = run / "search" / "study.db"
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(db, timeout=30) as con:
            return dict(con.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
    except sqlite3.OperationalError:  # the tables are not made yet
        return {}


def _wait_for(run: Path, complete: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    start = time.monotonic()
    while _states(run).get("COMPLETE", 0) < complete:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() - start < timeout
        time.sleep(0.2)


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    return err


def _complete_numbers(run: Path) -> list[int]:
    with sqlite3.connect(run / "search" / "study.db") as con:
        return [n for (n,) in con.execute("SELECT number FROM trials WHERE state = 'COMPLETE'")]


def _worker_pids() -> list[int]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in ps.splitlines() if re.search(r"ray::SearchWorker", line)]


def test_driver_killed_then_rerun_ends_with_every_trial_once(cluster, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    first = _search(run, cluster)
    _wait_for(run, 40, first)
    first.send_signal(signal.SIGKILL)  # the driver dies inside the search; its workers die with it
    first.wait()
    assert _states(run).get("COMPLETE", 0) < 200

    again = _search(run, cluster)  # the same command
    _wait_for(run, 80, again)
    pids = _worker_pids()
    assert pids, "no SearchWorker process found"
    os.kill(pids[0], signal.SIGKILL)  # a worker dies inside the search: it is replaced, its trial retried
    err = _finish(again)
    assert "died" in err
    numbers = _complete_numbers(run)
    assert len(numbers) == 200 == len(set(numbers))
    states = _states(run)
    assert states.get("RUNNING", 0) == 0 and states.get("WAITING", 0) == 0
    pareto = json.loads((run / "search" / "pareto.json").read_text())
    assert pareto["n_trials"] == 200 and pareto["search"]["backend"] == "ray"
    assert len((run / "search" / "trials.csv").read_text().splitlines()) == 201


def test_a_second_driver_joins_the_same_study(cluster, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    drivers = [_search(run, cluster, "--trials", "120")]
    _wait_for(run, 5, drivers[0])  # the first has made the study and queued its starting points
    drivers.append(_search(run, cluster, "--trials", "120"))
    for d in drivers:
        _finish(d)
    numbers = _complete_numbers(run)
    assert len(numbers) == 120 == len(set(numbers))
