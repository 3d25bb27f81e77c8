"""Atomic file and directory writes: readers see the old version or the new one, never half of one."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["FAULT_ENV", "atomic_dir", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "fault_point",
           "free_output", "recover_dir", "truncate_jsonl"]


def free_output(out: str | os.PathLike, force: bool) -> Path:
    """``out`` as a Path, after refusing (a ConfigError naming --out and --force) a path that exists and is not an
    empty directory, unless ``force``: an output folder that a command replaces whole."""
    from .config import ConfigError

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ConfigError(f"{str(out)!r} exists and is not empty: pass another --out, or --force to replace it")
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; give them the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def truncate_jsonl(path: str | os.PathLike, step: int) -> None:
    """Keep the lines of a JSON-lines log up to ``step`` (lines without a step count as step 0), dropping the
    ones a killed process wrote after the checkpoint being resumed (they are written again) and a last line a
    kill cut short. ``step=-1`` empties the log (a fresh start)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _owner(path: Path, leftover: Path) -> int | None:
    """The pid in a leftover's name (``.NAME.PID.XXXX.tmp`` or ``.NAME.old-PID``), if it has one."""
    rest = leftover.name[len(path.name) + 2:]
    pid = rest[len("old-"):] if rest.startswith("old-") else rest.split(".")[0]
    return int(pid) if pid.isdigit() else None


_COMPLETE = ".complete"


def recover_dir(path: str | os.PathLike) -> None:
    """Finish or undo a directory swap of :func:`atomic_dir` that a killed process left half done.

    A kill can leave, next to ``path``: a temporary directory being written (``.NAME.PID.XXXX.tmp``, removed), a
    complete one that was about to replace ``path`` (it holds the ``.complete`` marker; moved to ``path`` if
    ``path`` is missing, else removed), and the old version moved aside (``.NAME.old-PID``; moved back if
    ``path`` is still missing, else removed). Leftovers of a process that is still running are left alone.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return
    leftovers = [p for p in path.parent.glob(f".{glob.escape(path.name)}.*")
                 if p.is_dir() and (p.name.endswith(".tmp") or ".old-" in p.name)]
    leftovers = [p for p in leftovers if (pid := _owner(path, p)) is None or pid == os.getpid() or not _alive(pid)]
    complete = sorted((p for p in leftovers if p.name.endswith(".tmp") and (p / _COMPLETE).is_file()),
                      key=lambda p: p.stat().st_mtime)
    old = [p for p in leftovers if ".old-" in p.name]
    if not path.exists():
        restore = complete[-1] if complete else old[0] if old else None  # the newest complete version wins
        if restore is not None:
            (restore / _COMPLETE).unlink(missing_ok=True)
            os.replace(restore, path)
            leftovers.remove(restore)
    for leftover in leftovers:
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; on success it replaces ``path``, on error it is removed.

    At every moment one complete version exists: ``path`` itself or, for the instant of the swap, a complete
    temporary directory and the old version moved aside, which :func:`recover_dir` (called here first, and by
    readers that must not miss a version) puts back after a kill.

    >>> with atomic_dir("/tmp/nasbert-doc-example") as tmp:  # doctest: +SKIP
    ...     (tmp / "config.json").write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_tree(tmp)
    (tmp / _COMPLETE).touch()
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    fault_point(f"swap:{path.name}")  # the old version is aside, the new one not in place
    os.replace(tmp, path)
    (path / _COMPLETE).unlink(missing_ok=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(directory: Path) -> None:
    """Flush every file under ``directory`` to disk, so that a complete-looking version is complete."""
    for file in directory.rglob("*"):
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


FAULT_ENV = "NASBERT_FAULT"


def fault_point(name: str) -> None:
    """Kill this process with SIGKILL at the named point when ``NASBERT_FAULT`` asks for it (fault injection).

    ``NASBERT_FAULT=NAME`` kills at the first time the point is reached, ``NAME@N`` at the N-th time. The points:
    ``swap:DIR`` (inside :func:`atomic_dir`'s swap of the directory DIR), ``train.step``, ``train.checkpoint``
    (inside a checkpoint write), ``latency.group``, ``search.trial``, ``mark.STAGE.STATUS`` (a stage's files are
    written, the manifest does not say so yet), ``finetune.step``, ``finetune.checkpoint`` (written, not yet in
    place), ``distill.step``. The kill-and-resume tests use them to stop a real command anywhere; unset, the
    call costs one lookup.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    want, _, nth = spec.partition("@")
    if want != name:
        return
    _fault_counts[name] = _fault_counts.get(name, 0) + 1
    if _fault_counts[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


_fault_counts: dict[str, int] = {}
