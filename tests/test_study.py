"""One Optuna study shared by processes (nasbert.search.study): the count is the study's, a dead process's trial is
retried with its parameters, a trial past the count is given back. Real processes on a real SQLite file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import optuna
import pytest

from nasbert.search.study import count_states, open_study, resolve_storage, run_trials

#: a worker process: run_trials on the study in argv[1] until it holds argv[2] trials; a trial sleeps a little (so
#: that workers overlap) and, when argv[3] names a trial number, that trial kills its own process
WORKER = textwrap.dedent("""
    import os, sys, time
    from nasbert.search.study import open_study, resolve_storage, run_trials

    url, trials, die_at, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    storage, _ = resolve_storage(url, None, heartbeat_s=1)
    study = open_study(storage, "s", sampler="random", seed=seed, multi=False)

    def fn(trial):
        x = trial.suggest_int("x", 0, 10_000)
        if trial.number == die_at:
            os.kill(os.getpid(), 9)
        time.sleep(0.05)
        return float(x)

    print(run_trials(study, fn, trials, poll_s=0.2))
""")


def _workers(url: str, trials: int, n: int, die_at: int = -1) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(trials), str(die_at), str(seed)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in range(n)]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=300), *p.communicate()) for p in procs]


def _study(url: str):
    storage, _ = resolve_storage(url, None, heartbeat_s=1)
    return open_study(storage, "s", sampler="random", seed=0, multi=False)


def test_processes_sharing_a_study_stop_at_its_count(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _study(url)  # created once, as the driver does
    done = _workers(url, 40, n=3)
    assert all(d.returncode == 0 for d in done), [d.stderr[-2000:] for d in done]
    study = _study(url)
    counts = count_states(study)
    assert counts["COMPLETE"] == 40 and counts["RUNNING"] == counts["WAITING"] == counts["FAIL"] == 0
    assert sum(int(d.stdout.strip()) for d in done) == 40  # each trial was counted by the worker that ran it
    assert all(int(d.stdout.strip()) > 0 for d in done)  # all three worked
    surplus = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert all(t.user_attrs.get("surplus") for t in surplus)


def test_each_queued_trial_is_run_once_by_processes_sharing_a_sqlite_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = _study(url)
    for x in range(24):  # starting points, queued by the driver before the workers start
        study.enqueue_trial({"x": x})
    done = _workers(url, 30, n=3)
    assert all(d.returncode == 0 for d in done), [d.stderr[-2000:] for d in done]
    study = _study(url)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 30 and count_states(study)["FAIL"] == 0
    queued = [t.params["x"] for t in complete if "fixed_params" in t.system_attrs]
    assert sorted(queued) == list(range(24))  # every starting point once, none twice


def test_a_killed_process_trial_is_retried_with_its_parameters(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _study(url)
    killed = _workers(url, 12, n=1, die_at=4)[0]
    assert killed.returncode == -9
    study = _study(url)
    lost = study.trials[4]
    assert lost.state == optuna.trial.TrialState.RUNNING and count_states(study)["COMPLETE"] == 4

    start = time.monotonic()
    again = _workers(url, 12, n=1)[0]  # the same command again
    assert again.returncode == 0, again.stderr[-2000:]
    assert time.monotonic() - start < 60
    study = _study(url)
    counts = count_states(study)
    assert counts["COMPLETE"] == 12 and counts["FAIL"] == 1 and counts["RUNNING"] == counts["WAITING"] == 0
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == 4]
    assert len(retried) == 1 and retried[0].state == optuna.trial.TrialState.COMPLETE
    assert retried[0].params == lost.params  # the same candidate, run again


def test_a_trial_past_the_count_is_given_back_and_a_queued_one_queued_again():
    storage, _ = resolve_storage("memory", None)
    study = open_study(storage, "s", sampler="random", seed=0, multi=False)
    study.enqueue_trial({"x": 7})
    ran = []

    def fn(trial):
        ran.append(trial.suggest_int("x", 0, 9))
        return 0.0

    first = study.ask()  # the queued trial, taken by "another process" that is still running it
    assert run_trials(study, fn, 1, wait=False) == 0 and ran == []  # complete + running already make the count
    study.tell(first, state=optuna.trial.TrialState.FAIL)  # ... and that process failed it
    assert run_trials(study, fn, 2) == 2 and len(ran) == 2


def test_surplus_rule_counts_what_was_there_before(tmp_path):
    from nasbert.search.study import _give_back, _surplus

    storage, _ = resolve_storage(f"sqlite:///{tmp_path / 'study.db'}", None, heartbeat_s=1)
    study = open_study(storage, "s", sampler="random", seed=0, multi=False)
    a, b = study.ask(), study.ask()  # two processes asked at once for the last trial of a count of 1
    assert not _surplus(study, a, 1) and _surplus(study, b, 1)
    study.enqueue_trial({"x": 3})
    c = study.ask()  # the queued trial
    assert _surplus(study, c, 2)
    _give_back(study, c)
    study.tell(c, state=optuna.trial.TrialState.PRUNED)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].system_attrs["fixed_params"] == {"x": 3}


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_a_bad_heartbeat_is_a_clear_error(tmp_path, bad):
    from nasbert.search.study import SearchError

    with pytest.raises(SearchError, match="heartbeat_s"):
        resolve_storage(f"sqlite:///{tmp_path / 'study.db'}", None, heartbeat_s=bad)


@pytest.mark.parametrize("left_by", ["a process killed before its first heartbeat", "a search before heartbeats"])
def test_a_running_trial_that_never_had_a_heartbeat_is_failed_and_run_again(tmp_path, caplog, left_by):
    """A RUNNING trial with no heartbeat record never goes stale in Optuna's sense: after the grace period of this
    process's watch it is failed and queued again with its parameters, and the count ends exact."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage, _ = resolve_storage(url, None, heartbeat_s=1 if left_by.startswith("a process") else None)
    orphan = open_study(storage, "s", sampler="random", seed=0, multi=False).ask()  # no heartbeat thread
    orphan.suggest_int("x", 0, 9)
    study = _study(url)
    start = time.monotonic()
    assert run_trials(study, lambda t: float(t.suggest_int("x", 0, 9)), 1, poll_s=0.1) == 1
    assert 4 <= time.monotonic() - start < 30  # GRACE_BEATS heartbeats of 1 s
    assert "no heartbeat" in caplog.text
    states = {t.number: t for t in study.get_trials()}
    assert states[orphan.number].state == optuna.trial.TrialState.FAIL
    retry = [t for t in states.values() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(retry) == 1 and retry[0].system_attrs["failed_trial"] == orphan.number
    assert retry[0].params == states[orphan.number].params


def test_a_live_trial_is_not_taken_for_an_orphan(tmp_path):
    """A process waiting for another's live trial (heartbeat records flowing) never fails it, however long it
    runs: the other process's trial completes and is the study's only trial."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    code = ("import time, sys; from nasbert.search.study import resolve_storage, open_study, run_trials\n"
            f"storage, _ = resolve_storage({url!r}, None, heartbeat_s=1)\n"
            "study = open_study(storage, 's', sampler='random', seed=0, multi=False)\n"
            "run_trials(study, lambda t: (t.suggest_int('x', 0, 9), time.sleep(8))[0] * 1.0, 1)\n")
    other = subprocess.Popen([sys.executable, "-c", code])
    try:
        study = _study(url)
        deadline = time.monotonic() + 60
        while not study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            assert time.monotonic() < deadline and other.poll() is None
            time.sleep(0.1)
        assert run_trials(study, lambda t: 0.0, 1, poll_s=0.1) == 0  # waited 8 s > 4 s of grace, ran nothing
    finally:
        assert other.wait(timeout=60) == 0
    assert count_states(study) == {"COMPLETE": 1, "RUNNING": 0, "WAITING": 0, "FAIL": 0, "PRUNED": 0}
