"""Pipeline stages. Each reads its inputs through the manifest and records itself last."""
from __future__ import annotations

import contextlib
import os

import torch


@contextlib.contextmanager
def threads(n: int):
    """Pin PyTorch's intra-op threads: on busy 2-core hosts 2 threads ran 15-20x slower than 1."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def progress_bar(enabled: bool = True):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True, disable=not enabled)
