"""A .npy file written row by row, in any order, without holding the array.

Teacher outputs and frozen-encoder embeddings are computed in length order (similar lengths share a
batch) and land at each row's own position. A writable memory map would do that too, but a full
disk then kills the process with SIGBUS; plain positioned writes turn it into an OSError that
becomes the usual one-line error, and the temp file is removed.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgekd.files import os_error


class RowFile:
    """(rows, *shape) `dtype` rows at `path` (a temp name until `close`)."""

    def __init__(self, path: Path, rows: int, shape: tuple[int, ...], dtype=np.float32):
        self.path, self.tmp = Path(path), Path(path).with_name(Path(path).name + f".tmp{os.getpid()}")
        self.row_shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize
        try:
            mm = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=self.dtype, shape=(rows, *shape))
            self.offset = mm.offset  # the header's length; the data follow, row-major
            del mm
            self.fd = os.open(self.tmp, os.O_WRONLY)
        except OSError as e:
            self.tmp.unlink(missing_ok=True)
            raise os_error(e, self.path) from None

    def write(self, rows: np.ndarray, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype)
        rows = np.asarray(rows, dtype=np.int64)
        try:
            if len(rows) and (np.diff(rows) == 1).all():  # a run of rows (a merge, a dataset-order pass): one write
                self._put(values.tobytes(), int(rows[0]))
                return
            for r, v in zip(rows, values):
                self._put(v.tobytes(), int(r))
        except OSError as e:
            self.abort()
            raise os_error(e, self.path) from None

    def _put(self, data: bytes, row: int) -> None:
        view, at = memoryview(data), self.offset + row * self.row_bytes
        while view:  # pwrite may write less than asked (very large runs)
            done = os.pwrite(self.fd, view, at)
            view, at = view[done:], at + done

    def close(self) -> Path:
        os.close(self.fd)
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)
