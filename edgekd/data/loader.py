"""Batches for every consumer, through torch's DataLoader.

A batch is a dict of numpy arrays gathered from a split's inputs (lazy columns or arrays) for a
list of row indices. Columns read from the memory-mapped store cost microseconds a row, so those
batches are gathered in the calling process (measured: loader workers only add their start-up and
pickling there). Columns that run a teacher's processor per row (a 224-px image processor, a
feature extractor) are marked `heavy`, and their batches are made by `data.workers` loader
processes in parallel, a few batches ahead of the consumer.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from edgekd.data.store import workers_default

PREFETCH = 2  # batches each worker prepares ahead


class _Rows:
    """A map-style dataset whose __getitems__ gathers a whole batch at once."""

    def __init__(self, inputs: dict):
        self.inputs = inputs

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def __getitems__(self, idx) -> dict:
        idx = np.asarray(idx, dtype=np.int64)
        return {"idx": idx, **{n: np.ascontiguousarray(x[idx]) for n, x in self.inputs.items()}}

    def __getitem__(self, i):  # DataLoader's fallback; __getitems__ is what it calls
        return self.__getitems__([i])


def heavy(inputs: dict) -> bool:
    return any(getattr(x, "heavy", False) for x in inputs.values())


def loader_workers(inputs: dict, workers: int | None = None) -> int:
    """0 for store reads; for per-row processors `workers`, else the columns' own (the recipe's
    data.workers), else every core."""
    if not heavy(inputs):
        return 0
    if workers is None:
        asked = [x.workers for x in inputs.values() if getattr(x, "workers", None)]
        workers = max(asked) if asked else workers_default()
    return max(0, int(workers))


def batches(inputs: dict, index_batches: list, workers: int | None = None) -> Iterator[tuple[np.ndarray, dict]]:
    """(rows, {name: array}) for each array of row positions in `index_batches`, in that order."""
    import torch
    from torch.utils.data import DataLoader

    if not index_batches:
        return
    # one or two batches: a worker's start-up would cost more than it saves
    n = min(loader_workers(inputs, workers), len(index_batches)) if len(index_batches) > 2 else 0
    # its own generator: an iterator draws its worker seed from it, which would otherwise shift the
    # global torch stream that dropout and augmentation draw from (and every trained weight)
    loader = DataLoader(_Rows(inputs), batch_sampler=[np.asarray(b, dtype=np.int64) for b in index_batches],
                        collate_fn=_identity, num_workers=n, prefetch_factor=PREFETCH if n else None,
                        generator=torch.Generator().manual_seed(0))
    for batch in loader:
        yield batch.pop("idx"), batch


def _identity(batch):
    return batch


def sequential(n: int, batch_size: int) -> list[np.ndarray]:
    """Positions 0..n-1 in batches of `batch_size`."""
    return [np.arange(i, min(n, i + batch_size)) for i in range(0, n, batch_size)]
