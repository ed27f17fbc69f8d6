"""torch's intra-op thread count is process-wide state that other libraries change: Ultralytics' `select_device`
(called by its exporter) sets it to Ultralytics' own NUM_THREADS, one on a 2-core machine. Whatever runs such code
inside a study does it in `torch_threads_kept()`, so every later PyTorch timing runs on the count the study chose
and records."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def torch_threads_kept(threads: int | None = None) -> Iterator[int]:
    """Run the block with torch's thread count as it is (or set to `threads`) and put back the count found on
    entry when it leaves, however it leaves. Yields the count in force inside the block."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
