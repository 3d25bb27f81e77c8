"""Search storage: a shared PostgreSQL study, credentials that never reach a log or a file, clear errors.

The PostgreSQL tests start a real server in a temporary folder (Debian's ``postgresql`` package: ``initdb`` and
``pg_ctl``, run as the ``postgres`` user when the tests run as root) and are skipped, saying why, only where no
server can be started.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import free_port

from nasbert.redact import redact_url, strip_password

PASSWORD = "s3cret-Pa55"


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(versions[-1]).parent if versions else None


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A PostgreSQL server on a free local port, with password authentication; yields its URL."""
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is not installed: pip install 'psycopg[binary]'")
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server here (pg_ctl not found): install Debian's postgresql package")
    as_user: list[str] = []
    root = tmp_path_factory.mktemp("postgres")
    if os.geteuid() == 0:  # the server refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: the PostgreSQL server cannot be started as another user")
        try:
            import pwd

            pg_user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to start the PostgreSQL server as")
        as_user = ["runuser", "-u", "postgres", "--"]
        os.chown(root, pg_user.pw_uid, pg_user.pw_gid)
        for parent in root.parents:  # the server must reach its folder (pytest's are private to root)
            if parent == Path(tempfile.gettempdir()) or parent == parent.parent:
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
    data, pwfile, port = root / "data", root / "pw", free_port()
    pwfile.write_text(PASSWORD + "\n")
    if as_user:
        os.chown(pwfile, pg_user.pw_uid, pg_user.pw_gid)
    init = subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "nasbert", "-A", "scram-sha-256",
                           f"--pwfile={pwfile}"], capture_output=True, text=True, timeout=120)
    if init.returncode != 0:
        pytest.skip(f"initdb failed, so no PostgreSQL server can be started here: {init.stderr.strip()[-300:]}")
    start = subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w",
                            "-o", f"-p {port} -k {root} -h 127.0.0.1", "start"], capture_output=True, text=True,
                           timeout=120)
    if start.returncode != 0:
        pytest.skip(f"the PostgreSQL server did not start: {start.stderr.strip()[-300:]}")
    try:
        yield f"postgresql://nasbert:{PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=120)


def _nasbert(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "nasbert.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=600)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def searched_run(tiny_teacher_dir, tmp_path_factory):
    """A micro run trained up to the search (the kill-and-resume tests' space and settings)."""
    from test_faults import OVERRIDES, SPACE

    root = tmp_path_factory.mktemp("storage-run")
    (root / "micro.yaml").write_text(SPACE)
    run = root / "run"
    env = {"NASBERT_CACHE": str(root / "cache"), "NASBERT_FAULT": "search.trial@1"}
    killed = _nasbert("run", "--space", str(root / "micro.yaml"), "--teacher", tiny_teacher_dir, "--out", str(run),
                      "--no-progress", *OVERRIDES, env=env, check=False)
    assert killed.returncode == -9, killed.stderr[-3000:]  # stopped in the first search trial: train is done
    return run


def _trial_numbers(url: str, study: str) -> list[int]:
    import optuna

    loaded = optuna.load_study(study_name=study, storage=url)
    return sorted(t.number for t in loaded.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))


def test_two_search_processes_share_one_postgresql_study(postgres, searched_run, tmp_path):
    runs = [searched_run]
    other = tmp_path / "copy"
    shutil.copytree(searched_run, other)  # the same run on a second machine: the same manifest, the same study
    runs.append(other)
    procs = [subprocess.Popen([sys.executable, "-m", "nasbert.cli", "search", "--run", str(r), "--storage", postgres,
                               "--trials", "30", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}) for r in runs]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
        assert PASSWORD not in out + err
    manifest = json.loads((searched_run / "manifest.json").read_text())
    study = manifest["stages"]["search"]["study_name"]
    assert study == json.loads((other / "manifest.json").read_text())["stages"]["search"]["study_name"]
    numbers = _trial_numbers(postgres, study)
    assert len(numbers) >= 30 and len(numbers) == len(set(numbers))  # both wrote to one study, no trial twice
    for run in runs:  # the password is in no file of the run
        for file in run.rglob("*"):
            if file.is_file() and file.suffix in (".json", ".csv", ".yaml", ".jsonl"):
                assert PASSWORD not in file.read_text(errors="replace"), file
        pareto = json.loads((run / "search" / "pareto.json").read_text())
        assert pareto["search"]["storage"] == redact_url(postgres) and pareto["search"]["study_name"] == study

    again = _nasbert("search", "--run", str(searched_run), "--storage", postgres, "--trials", "30", "--no-progress",
                     "--force")
    assert "starts a new study" in again.stderr and PASSWORD not in again.stderr + again.stdout
    forced = json.loads((searched_run / "manifest.json").read_text())["stages"]["search"]["study_name"]
    assert forced == f"{study}-force1"
    assert len(_trial_numbers(postgres, forced)) == 30
    assert _trial_numbers(postgres, study) == numbers  # the old study is kept as it was


def test_ray_workers_and_a_plain_search_share_one_postgresql_study(postgres, searched_run, tmp_path):
    pytest.importorskip("ray")
    run = tmp_path / "run"
    shutil.copytree(searched_run, run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["created"] += "-ray"  # another run for the study's name: not the study the test above filled
    (run / "manifest.json").write_text(json.dumps(manifest))
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    on_ray = _nasbert("search", "--run", str(run), "--storage", postgres, "--ray-address", "local", "--workers", "2",
                      "--trials", "30", "--no-progress", env=env)
    assert PASSWORD not in on_ray.stdout + on_ray.stderr
    study = json.loads((run / "manifest.json").read_text())["stages"]["search"]["study_name"]
    assert len(_trial_numbers(postgres, study)) == 30
    joined = _nasbert("search", "--run", str(run), "--storage", postgres, "--trials", "40", "--no-progress")
    assert PASSWORD not in joined.stdout + joined.stderr
    numbers = _trial_numbers(postgres, study)
    assert len(numbers) == 40 == len(set(numbers))  # the in-process search went on with the Ray workers' study
    pareto = json.loads((run / "search" / "pareto.json").read_text())
    assert pareto["n_trials"] == 40 and pareto["search"]["storage"] == redact_url(postgres)


def _refused(capsys, *argv: str) -> str:
    from nasbert.cli import main

    assert main(list(argv)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and PASSWORD not in err
    return err


@pytest.fixture
def bare_run(tmp_path) -> Path:
    """A run directory with nothing done: the storage is checked before the search needs anything else."""
    from nasbert.run import RunConfig, RunDir

    return RunDir.open(tmp_path / "run", RunConfig()).path


def test_an_unreachable_database_is_one_clear_line(bare_run, capsys):
    url = f"postgresql://nasbert:{PASSWORD}@127.0.0.1:1/postgres"
    (bare_run / "search").mkdir()
    (bare_run / "search" / "trials.csv").write_text("kept\n")
    err = _refused(capsys, "search", "--run", str(bare_run), "--storage", url, "--no-progress", "--force")
    assert "cannot open the database" in err and "nasbert:***@127.0.0.1:1" in err
    assert (bare_run / "search" / "trials.csv").read_text() == "kept\n"  # --force deleted nothing


def test_a_database_without_its_driver_is_one_clear_line(bare_run, capsys):
    if __import__("importlib").util.find_spec("pymysql") is not None:
        pytest.skip("pymysql is installed here: the missing-driver case cannot be shown with MySQL")
    err = _refused(capsys, "search", "--run", str(bare_run), "--storage", f"mysql+pymysql://u:{PASSWORD}@h/db",
                   "--no-progress")
    assert "driver" in err and "not installed" in err


def test_a_ray_search_in_memory_is_refused(bare_run, capsys):
    err = _refused(capsys, "search", "--run", str(bare_run), "--ray-address", "local", "--storage", "memory",
                   "--no-progress")
    assert "share one study through a database" in err and "study.db" in err


@pytest.mark.parametrize("url, shown, stored", [
    ("postgresql://nas:pw@host:5432/db", "postgresql://nas:***@host:5432/db", "postgresql://nas@host:5432/db"),
    ("postgresql://nas@host/db?password=pw&sslmode=require", "postgresql://nas@host/db?password=***&sslmode=require",
     "postgresql://nas@host/db?sslmode=require"),
    ("sqlite:////abs/path/study.db", "sqlite:////abs/path/study.db", "sqlite:////abs/path/study.db"),
    ("mysql+pymysql://u:p%40ss@h/d", "mysql+pymysql://u:***@h/d", "mysql+pymysql://u@h/d"),
])
def test_urls_are_redacted_for_logs_and_stripped_for_files(url, shown, stored):
    assert redact_url(url) == shown
    assert strip_password(url) == stored


def test_the_manifest_keeps_no_storage_password(tmp_path):
    from nasbert.run import RunConfig, RunDir

    config = RunConfig.from_dict({"search": {"storage": f"postgresql://nas:{PASSWORD}@h/db"}})
    run = RunDir.open(tmp_path / "run", config)
    text = (tmp_path / "run" / "manifest.json").read_text()
    assert PASSWORD not in text and "postgresql://nas@h/db" in text
    assert RunDir.open(tmp_path / "run", config).path == run.path  # the same config opens it again
