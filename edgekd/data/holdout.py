"""Where settings are chosen: the data's own validation split, or a seeded, stratified share of the
train split held out for the choice.

Grid searches refit on every train row once the settings are fixed; a dataset without a val split
(icons trains on all its train rows) is still never chosen on test. The baselines and the student
search hold out the same rows, so their validation figures compare.
"""
from __future__ import annotations

import numpy as np

FRACTION = 0.1  # of each class's train rows, when the data has no val split


def holdout(labels: np.ndarray, fraction: float = FRACTION, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit, val) positions into a train split with these labels: `fraction` of each class (at
    least one row where the class has two or more), seeded."""
    rng = np.random.default_rng([seed, 0x401D])
    fit, val = [], []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        k = min(len(rows) - 1, max(1, int(round(fraction * len(rows))))) if len(rows) > 1 else 0
        val.append(rows[:k])
        fit.append(rows[k:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


class HeldOut:
    """A dataset whose train split is rows `fit` of another's train split and whose val split is
    rows `val` of it (the rows as written: pairing 0, view 0); test and everything else as it is."""

    def __init__(self, data, fit: np.ndarray, val: np.ndarray):
        self.data, self.fit, self.val = data, np.asarray(fit, np.int64), np.asarray(val, np.int64)

    def __getattr__(self, name):  # modalities, classes, preprocess, params, num_pairings, fingerprint ...
        if name == "data":  # not set yet (copy, unpickling): no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.data, name)

    def has_split(self, name: str) -> bool:
        return name in ("train", "val") or self.data.has_split(name)

    def split(self, name: str, pairing: int = 0):
        from edgekd.data.base import Split
        from edgekd.data.columns import take

        if name not in ("train", "val"):
            return self.data.split(name, pairing)
        base = self.data.split("train", pairing if name == "train" else 0)
        rows = self.fit if name == "train" else self.val
        return Split({m: take(x, rows) for m, x in base.inputs.items()}, base.labels[rows],
                     [base.ids[i] for i in rows] if base.ids else [])

    def split_rows(self, name: str) -> np.ndarray:
        if name not in ("train", "val"):
            return self.data.split_rows(name)
        return self.data.split_rows("train")[self.fit if name == "train" else self.val]
