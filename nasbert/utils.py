"""Process-wide settings: torch's thread count, set for one call and given back after; the cache directory; moving
a batch of tensors to a device."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["cache_dir", "to_device", "torch_threads"]


def cache_dir() -> Path:
    """Where tokenised corpora and teacher states are cached: ``$NASBERT_CACHE``, else ``~/.cache/nasbert``."""
    return Path(os.environ.get("NASBERT_CACHE", Path.home() / ".cache" / "nasbert"))


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, then give the caller's count back.

    The count is process-wide: a library call that set it and returned would leave a notebook, or the next model
    in the same process, on the library's count. ``n`` of 0 or None leaves the count as it is. Setting the
    count the process already has is skipped, so that a timed call inside a block holding it pays nothing.

    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    """
    before = torch.get_num_threads()
    if n and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def to_device(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """``batch`` with every tensor on ``device`` (a tensor already there is not copied)."""
    return {k: v.to(device) for k, v in batch.items()}


def ray_init(address: str | None, num_cpus: int | None = None) -> bool:
    """Start (``address`` None: a local instance of ``num_cpus`` CPUs) or join (``"auto"``, ``"ray://host:10001"``)
    a Ray instance unless one is running in this process; returns whether this call started it (and so should shut
    it down)."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    kwargs: dict = {"logging_level": logging.WARNING}
    if address is None:
        kwargs.update(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    elif not str(address).startswith("ray://"):
        kwargs.update(log_to_driver=False)
    ray.init(address=address, **kwargs)
    return True
