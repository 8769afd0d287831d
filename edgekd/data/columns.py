"""Lazy columns: a split's inputs as (N, *shape) arrays whose rows are fetched when indexed.

A folder dataset's split hands out Columns instead of arrays: `split.inputs["image"][idx]` reads
just those rows from the memory-mapped store and normalises them, a teacher processor's column
runs the processor on just those rows. Every consumer already reads batches (`x[i:i + 256]`,
`x[order[k:k + b]]`), so memory is a function of the batch, not of the dataset. Plain numpy
arrays (avdigits, tests) satisfy the same interface.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

Fetch = Callable[[np.ndarray], np.ndarray]  # dataset rows (int64, any order) -> (len(rows), *shape)
CHUNK = 1024  # rows per fetch when a whole column is walked (statistics, lengths)


class Column:
    """Rows `rows` of a dataset column, fetched by `fetch` on indexing."""

    heavy = False  # True: fetching runs a processor per row (edgekd.data.loader gives it workers)
    workers: int | None = None  # how many loader workers a heavy column asks for (None: every core)

    def __init__(self, fetch: Fetch, rows: np.ndarray, shape: tuple[int, ...], dtype):
        self.fetch, self.rows = fetch, np.asarray(rows, dtype=np.int64)
        self.row_shape, self.dtype = tuple(shape), np.dtype(dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.fetch(self.rows[[int(key)]])[0]
        picked = self.rows[key]
        if len(picked) == 0:
            return np.zeros((0, *self.row_shape), dtype=self.dtype)
        return self.fetch(picked)

    def take(self, idx) -> Column:
        """The same column over rows `idx` of this one, still lazy."""
        out = Column(self.fetch, self.rows[idx], self.row_shape, self.dtype)
        out.heavy, out.workers = self.heavy, self.workers
        return out

    def __array__(self, dtype=None, copy=None):
        # Materialises every row: meant for small splits (a bundle's capped test set, tests)
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def chunks(self, size: int = CHUNK):
        """(start, rows) pairs over the whole column, `size` rows at a time."""
        for i in range(0, len(self.rows), size):
            yield i, self[i : i + size]


def take(x, idx):
    """Rows `idx` of a Column (still lazy) or of an array."""
    return x.take(idx) if isinstance(x, Column) else x[idx]


def chunks(x, size: int = CHUNK):
    """(start, rows) over a Column or an array, `size` rows at a time."""
    for i in range(0, len(x), size):
        yield i, np.asarray(x[i : i + size])
