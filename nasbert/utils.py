"""Process-wide torch settings, set for one call and given back after."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["torch_threads"]


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
