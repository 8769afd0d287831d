"""A bundle's test set (testset.npz) and batches of it: torch-free, for the bench, the gate's tools and
`edgekd profile`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.errors import DataError

TESTSET = "testset.npz"  # in the bundle: "labels" (N,) int64 and "input.<name>" for every model input


def load_testset(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The bundle's test split: (inputs by input name, labels)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            inputs = {k[len("input."):]: z[k] for k in z.files if k.startswith("input.")}
            labels = z["labels"].astype(np.int64)
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path} is not a readable test set ({e}); it needs 'labels' and one 'input.<name>' array "
                        "per model input; re-export with `edgekd export RUN_DIR`") from None
    bad = [k for k, v in inputs.items() if len(v) != len(labels)]
    if bad or not inputs:
        raise DataError(f"{path}: inputs {bad or '(none)'} do not have one row per label; re-export the bundle")
    return inputs, labels


def batch_of(inputs: dict[str, np.ndarray], names: list[str], batch: int) -> dict[str, np.ndarray]:
    """The first `batch` test samples (repeated when the split is smaller), contiguous, per input."""
    out = {}
    for n in names:
        x = inputs[n]
        reps = -(-batch // len(x))
        out[n] = np.ascontiguousarray(np.concatenate([x] * reps)[:batch] if reps > 1 else x[:batch])
    return out
