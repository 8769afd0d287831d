"""Augmented views of the train split, for distillation that teaches consistently.

A student distilled on the rows as written only ever hears what the teacher says of those rows. With
`distill.views: K`, views 1..K-1 are seeded copies of the train split whose texts lose words
(`distill.word_dropout`), cycled over epochs like avdigits' pairings. Each view goes through both
input paths (the teacher's processor and the student's preprocessing) from the same augmented raw
text, and the teacher's targets are cached per view, so the student always matches what the teacher
says of the very sample it sees ("consistent teaching", Beyer et al. 2022) at the cost of one teacher
pass per view. Val and test are never augmented.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ViewSpec:
    """distill.views, distill.word_dropout and the seed that draws the views."""

    count: int
    word_dropout: float
    seed: int

    def fingerprint(self, base: str) -> str:
        """`base` for one view (so a run without views keeps its caches), else a key that names the views."""
        if self.count == 1:
            return base
        key = f"{base}:views={self.count},word_dropout={self.word_dropout},seed={self.seed}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]


def drop_words(text: str, rng: np.random.Generator, p: float) -> str:
    """`text` with each whitespace-separated word dropped with chance `p`; at least one word stays."""
    words = text.split()
    if not words:
        return text
    kept = [w for w in words if rng.random() >= p]
    return " ".join(kept or [words[int(rng.integers(len(words)))]])


def text_views(data, names: list[str], spec: ViewSpec) -> list:
    """[data, view 1, ..., view count-1]: each view the dataset with the train rows' texts of
    modalities `names` augmented (seeded by the spec's seed and the view's index), its own inputs
    re-encoded. The recipe has already refused views for a student that reads no such text."""
    if spec.count == 1:
        return [data]
    texts = [m for m in names if data.modalities[m].kind == "text"]
    train = data.split_rows("train")
    views = [data]
    for k in range(1, spec.count):
        rng = np.random.default_rng([spec.seed, k, 0x7E475])
        changed = {}
        for m in texts:
            column = data.texts(m, np.arange(len(data)))
            for i in train:
                column[i] = drop_words(column[i], rng, spec.word_dropout)
            changed[m] = column
        views.append(data.with_texts(changed))
    return views


class TrainViews:
    """Datasets of one row layout as one (the edgekd.data.base.Dataset protocol): train pairing k
    is view k; val and test, and everything else, come from view 0 (the rows as written)."""

    def __init__(self, views: list, spec: ViewSpec):
        self.views, self.spec = views, spec
        self.num_pairings = len(views)

    def __getattr__(self, name):  # name, classes, modalities, preprocess, params, raw_text, split_rows ...
        if name == "views":  # not set yet (copy, unpickling): no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.views[0], name)

    def split(self, name: str, pairing: int = 0):
        return self.views[pairing if name == "train" else 0].split(name)

    def fingerprint(self) -> str:
        return self.spec.fingerprint(self.views[0].fingerprint())


def with_views(views: list, spec: ViewSpec):
    """One dataset for the trainer: view 0 itself when there is one view, else TrainViews."""
    return views[0] if len(views) == 1 else TrainViews(views, spec)
