"""One Optuna study that any number of processes search together, and resume after any of them dies.

A search's trials live in an Optuna storage: an RDB (SQLite ``RUN/search/study.db`` by default, PostgreSQL for
machines that share no filesystem) or, within one process, memory. Every process that searches, the in-process
search, a second ``nasbert search`` on the same storage, or the Ray workers of :mod:`nasbert.search.ray_search`,
runs :func:`run_trials` against the same study, so:

- **the count is the study's**: ``trials`` is the number of COMPLETE trials the study should hold, whoever ran them.
  A process starts a trial only while the study's complete and running trials are fewer, and a trial that finds
  itself past the count once it exists (two processes asked at once) is given back unrun (state PRUNED, user
  attribute ``surplus``; a queued trial is queued again), so the study ends with exactly ``trials`` complete ones;
- **a dead process's trials are retried**: RDB storages carry a heartbeat (every ``heartbeat_s`` seconds while a
  trial runs). A RUNNING trial whose heartbeat is older than ``4 * heartbeat_s`` belonged to a process that died: the
  next process that looks fails it and queues it again (Optuna's ``RetryHeartbeatStaleTrialCallback``), so a killed
  search loses no trial and counts none twice. While others' trials run, a process that has nothing left to start
  waits for them rather than leaving, so the last trials of a dead worker are not orphaned. A trial whose process
  died before its first heartbeat (between Optuna's ``ask`` and the heartbeat thread's start), or one left RUNNING by
  a search from before heartbeats, has no heartbeat to go stale: a waiting process that sees it without one for the
  same grace period fails and queues it in the same way (a live trial records its first heartbeat as it starts).

>>> storage, shown = resolve_storage("postgresql://nas@db/search", None, heartbeat_s=10)  # doctest: +SKIP
>>> study = open_study(storage, "nasbert", sampler="nsga2", seed=0, multi=True)  # doctest: +SKIP
>>> run_trials(study, lambda trial: (loss(trial), latency(trial)), trials=200)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..redact import redact_url

__all__ = ["HEARTBEAT_S", "SAMPLERS", "SearchError", "count_states", "open_storage", "open_study", "quiet_optuna",
           "resolve_storage", "run_trials"]

logger = logging.getLogger(__name__)

SAMPLERS = ("nsga2", "tpe", "random")

#: seconds between a running trial's heartbeats. A trial is taken for dead after 4 of them without one: long enough
#: that a busy database or a paused process is not mistaken for a dead one, short enough that a rerun after a kill
#: waits well under a minute for the killed trials
HEARTBEAT_S = 10
#: heartbeats a trial may miss before it is failed and queued again
GRACE_BEATS = 4
#: times a trial is queued again after its process died (then it stays FAIL, and the count goes on without it)
MAX_RETRY = 3


class SearchError(ValueError):
    """A search that cannot start: a storage URL that is not one, a database that cannot be reached, a missing
    driver. The message says which, with the URL's password hidden, and what to do."""


def resolve_storage(storage, out_dir: Path | None, *, heartbeat_s: int | None = HEARTBEAT_S):
    """The Optuna storage object and its description for logs and files (the URL, password hidden).

    ``storage``: an Optuna storage object (used as is), an RDB URL, ``"memory"``, or None for SQLite in
    ``out_dir/study.db`` (memory without ``out_dir``). RDB storages get a heartbeat of ``heartbeat_s`` (None: no
    heartbeat, so that a dead process's trials stay RUNNING)."""
    import optuna

    if isinstance(storage, optuna.storages.BaseStorage):
        return storage, type(storage).__name__
    if storage is None and out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{(out_dir / 'study.db').resolve()}"
    if storage is None or storage in ("memory", ":memory:"):
        return optuna.storages.InMemoryStorage(), "memory"
    if not isinstance(storage, str) or "://" not in storage:
        shown = redact_url(storage) if isinstance(storage, str) else repr(storage)
        raise SearchError(f"storage {shown!r} is not an Optuna RDB URL: give e.g. 'sqlite:///RUN/search/study.db' "
                          "or 'postgresql://user@host/db', 'memory', or None for out_dir/study.db")
    return open_storage(storage, heartbeat_s=heartbeat_s), redact_url(storage)


def open_storage(url: str, *, heartbeat_s: int | None = HEARTBEAT_S):
    """Connect to an Optuna RDB storage, with a heartbeat (``heartbeat_s``; None: none); a failure is one clear line
    (no traceback, no password)."""
    import optuna
    import sqlalchemy.exc

    shown = redact_url(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # several processes write to one file: wait for its lock rather than fail at once
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    if heartbeat_s is not None:
        if isinstance(heartbeat_s, bool) or not isinstance(heartbeat_s, int) or heartbeat_s < 1:
            raise SearchError(f"heartbeat_s must be a whole number of seconds >= 1, got {heartbeat_s!r}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRY)
        kwargs.update(heartbeat_interval=heartbeat_s, grace_period=GRACE_BEATS * heartbeat_s,
                      heartbeat_stale_trial_callback=retry)
    try:
        for attempt in range(5):
            try:
                with warnings.catch_warnings():  # the heartbeat's arguments are "experimental" (since Optuna 2.9)
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    storage = optuna.storages.RDBStorage(url, **kwargs)
                if url.startswith("sqlite"):
                    _serialize_sqlite(storage.engine)
                return storage
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError):
                # Two processes that open a new database at once both create Optuna's tables, and the slower one's
                # CREATE fails (or, in SQLite, finds the file locked); once the faster one is done, the tables are
                # there. A database that cannot be reached fails every attempt and is reported below.
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))
    except ImportError as e:  # optuna: "Failed to import DB access module"; SQLAlchemy: the driver module
        driver = getattr(e.__cause__, "name", None) or getattr(e, "name", None) or "its driver"
        raise SearchError(f"storage {shown}: the database driver ({driver}) is not installed: "
                          "pip install 'psycopg[binary]' for postgresql://, pymysql for mysql+pymysql://") from None
    except sqlalchemy.exc.NoSuchModuleError:
        raise SearchError(f"storage {shown}: SQLAlchemy knows no database of this kind; give a sqlite:///, "
                          "postgresql:// or mysql+pymysql:// URL") from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        lines = str(getattr(e, "orig", None) or e).strip().splitlines()
        raise SearchError(f"storage {shown}: cannot open the database ({redact_url(lines[0]) if lines else e}); "
                          "check that the server runs and that the host, port, user, password and database "
                          "are right") from None


def _serialize_sqlite(engine) -> None:
    """Make every transaction on a SQLite study take the database's write lock when it begins (``BEGIN
    IMMEDIATE``; SQLAlchemy's recipe for pysqlite). Optuna takes a queued trial by reading that it is WAITING and
    then marking it RUNNING; PostgreSQL locks the row in between (``SELECT ... FOR UPDATE``), SQLite does not, and
    two processes then run the same queued trial. Serialised, the second reads it RUNNING and takes another."""
    import sqlalchemy

    @sqlalchemy.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, record):
        dbapi_connection.isolation_level = None  # pysqlite emits no BEGIN of its own

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners (Optuna's table set-up) are not reused


def make_sampler(kind: str, *, seed: int, population_size: int = 50):
    import optuna

    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r}; choose one of {', '.join(SAMPLERS)}")
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population_size, seed=seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


@contextlib.contextmanager
def quiet_optuna():
    """Optuna logs every trial at INFO; the progress bar says as much."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def open_study(storage, name: str, *, sampler: str, seed: int, multi: bool, population_size: int = 50,
               shown: str = ""):
    """Create study ``name`` in ``storage``, or load it if it is there (with a sampler of its own); it minimises
    (proxy loss, latency) when ``multi``, the proxy loss otherwise."""
    import optuna

    with quiet_optuna():
        study = optuna.create_study(
            storage=storage, study_name=name, load_if_exists=True,
            sampler=make_sampler(sampler, seed=seed, population_size=population_size),
            **({"directions": ["minimize", "minimize"]} if multi else {"direction": "minimize"}))
    if len(study.directions) != (2 if multi else 1):
        raise ValueError(f"study {name!r} in {shown or storage} has {len(study.directions)} objective(s), this "
                         f"search needs {2 if multi else 1}: use another study_name or storage")
    return study


def enqueue_once(study, params: Iterable[dict]) -> int:
    """Queue ``params`` (each a trial's parameters) as the first trials of a study that has none; returns how many."""
    if study.get_trials(deepcopy=False):
        return 0
    n = 0
    for p in params:
        study.enqueue_trial(p)
        n += 1
    return n


def count_states(study) -> dict[str, int]:
    """``{"COMPLETE": n, "RUNNING": n, "WAITING": n, "FAIL": n, "PRUNED": n}`` of a study."""
    counts = {s: 0 for s in ("COMPLETE", "RUNNING", "WAITING", "FAIL", "PRUNED")}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] += 1
    return counts


def _fail_stale(study) -> None:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _without_heartbeat(study) -> set[int]:
    """Trial ids of the study's RUNNING trials that have no heartbeat record (Optuna's RDB tables)."""
    import optuna
    from optuna.storages._rdb import models

    storage = getattr(study._storage, "_backend", study._storage)  # Optuna wraps an RDBStorage in a cache
    if not isinstance(storage, optuna.storages.RDBStorage):
        return set()
    session = storage.scoped_session()
    try:
        rows = (session.query(models.TrialModel.trial_id)
                .outerjoin(models.TrialHeartbeatModel,
                           models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id)
                .filter(models.TrialModel.study_id == study._study_id,
                        models.TrialModel.state == optuna.trial.TrialState.RUNNING,
                        models.TrialHeartbeatModel.trial_heartbeat_id.is_(None))
                .all())
    finally:
        session.close()
    return {trial_id for (trial_id,) in rows}


def _fail_orphans(study, since: dict[int, float], grace_s: float) -> None:
    """Fail, and queue again as a stale trial is, every RUNNING trial that has had no heartbeat record for
    ``grace_s`` seconds of this process's watch (``since``: trial id -> when it was first seen without one). The
    watch is this process's monotonic clock, so machines with other clocks or time zones agree."""
    import optuna

    now, bare = time.monotonic(), _without_heartbeat(study)
    for trial_id in set(since) - bare:
        del since[trial_id]
    storage = study._storage
    for trial_id in bare:
        if now - since.setdefault(trial_id, now) < grace_s:
            continue
        del since[trial_id]
        try:
            failed = storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # it finished, or another process failed it
            continue
        if failed:
            frozen = storage.get_trial(trial_id)
            logger.warning("study %r: trial %d was RUNNING with no heartbeat for %.0f s; failed and queued again",
                           study.study_name, frozen.number, grace_s)
            callback = storage.get_heartbeat_stale_trial_callback()
            if callback is not None:
                callback(study, frozen)


def _heartbeat_s(study) -> int | None:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    storage = study._storage
    return storage.get_heartbeat_interval() if is_heartbeat_enabled(storage) else None


def _surplus(study, trial, trials: int) -> bool:
    """Whether ``trial`` (just asked for) is past the study's count: ``trials`` complete, running or queued trials
    were there before it (trial numbers follow creation order)."""
    import optuna

    live = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    before = sum(1 for t in study.get_trials(deepcopy=False, states=live)
                 if t.number < trial.number)
    return before >= trials


def _give_back(study, trial) -> None:
    """A surplus trial: marked, and queued again if it came from the queue (a starting point or a retry)."""
    import optuna

    trial.set_user_attr("surplus", True)
    frozen = study._storage.get_trial(trial._trial_id)
    if "fixed_params" in frozen.system_attrs or "failed_trial" in frozen.system_attrs:
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, params=frozen.params,
                                                  distributions=frozen.distributions,
                                                  system_attrs=frozen.system_attrs))


def run_trials(study, fn: Callable, trials: int, *, on_trial: Callable[[], None] | None = None,
               wait: bool = True, poll_s: float = 1.0) -> int:
    """Run ``fn`` (an Optuna objective) in ``study`` until it holds ``trials`` COMPLETE trials; returns how many
    trials this call completed.

    Trials of other processes count: this call starts one only while complete + running trials are fewer than
    ``trials``. With ``wait`` (and a heartbeat), it then waits for the others' running trials: they complete, or
    their process died and they are failed and queued again (this call runs them). ``on_trial`` is called after
    each trial this call completes."""
    import optuna

    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be a positive integer, got {trials!r}")
    heartbeat = _heartbeat_s(study)
    complete = optuna.trial.TrialState.COMPLETE

    def objective(trial):
        if _surplus(study, trial, trials):
            _give_back(study, trial)
            raise optuna.TrialPruned("surplus: the study held its count of trials when this one was asked for")
        return fn(trial)

    ran, bare_since = 0, {}
    with quiet_optuna():
        while True:
            now = study.get_trials(deepcopy=False, states=(complete, optuna.trial.TrialState.RUNNING))
            done = sum(t.state == complete for t in now)
            running = len(now) - done
            if done >= trials:
                return ran
            if done + running >= trials:
                if not wait or heartbeat is None:
                    return ran
                # Others' trials would finish the count. Wait: they complete, or go stale (or never had a
                # heartbeat) and come back queued, and this call runs them. Optuna fails stale trials before each
                # trial it starts; while waiting, none starts here.
                _fail_stale(study)
                _fail_orphans(study, bare_since, GRACE_BEATS * heartbeat)
                time.sleep(poll_s)
                continue
            bare_since.clear()
            finished = []
            study.optimize(objective, n_trials=1, gc_after_trial=False,
                           callbacks=[lambda study, frozen: finished.append(frozen.state)])
            if finished and finished[0] == complete:
                ran += 1
                if on_trial is not None:
                    on_trial()
