"""edgekd.data.loader: batches in the order asked, from lazy columns and arrays alike; columns that
run a processor per row are made by loader worker processes, with the same result."""
import os

import numpy as np

from edgekd.data.columns import Column
from edgekd.data.loader import batches, loader_workers, sequential


def _slow_square(rows):  # a stand-in for a teacher's processor; records which process ran it
    return np.stack([np.full(3, r * r, dtype=np.float32) for r in rows]) + 0 * os.getpid()


def test_batches_follow_the_order_asked_and_heavy_columns_use_workers():
    rows = np.arange(100, 160)
    col = Column(_slow_square, rows, (3,), np.float32)
    plain = np.arange(60, dtype=np.int64) * 10
    order = [np.array([5, 1, 9]), np.array([0, 2]), np.array([59, 58, 57, 56]), np.array([30])]
    inputs = {"x": col, "y": plain}
    assert loader_workers(inputs) == 0  # store reads: in this process
    col.heavy, col.workers = True, 2
    assert loader_workers(inputs) == 2 and loader_workers(inputs, workers=1) == 1
    got = list(batches(inputs, order))
    assert [list(i) for i, _ in got] == [list(o) for o in order]
    for idx, b in got:
        np.testing.assert_array_equal(b["x"][:, 0], (rows[idx] ** 2).astype(np.float32))
        np.testing.assert_array_equal(b["y"], plain[idx])


def test_sequential_covers_every_row_once():
    parts = sequential(10, 4)
    assert [len(p) for p in parts] == [4, 4, 2] and np.concatenate(parts).tolist() == list(range(10))
    assert sequential(0, 4) == []
