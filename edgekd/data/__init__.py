"""Datasets: the built-in avdigits and user folder datasets, preprocessed to numpy arrays."""
from __future__ import annotations

from pathlib import Path

from edgekd.data.base import Dataset
from edgekd.data.root import data_root
from edgekd.errors import DataError

_LOADED: dict[tuple, Dataset] = {}


def load_dataset(recipe, root: str | Path | None = None, progress=None) -> Dataset:
    """The recipe's dataset, loaded once per process (stages of one `edgekd run` share it)."""
    root = data_root(root)
    key = (recipe.data.model_dump_json(), str(root), recipe.seed)
    if key not in _LOADED:
        if recipe.data.name == "avdigits":
            from edgekd.data.avdigits import AVDigits

            _LOADED[key] = AVDigits(recipe.data, root, recipe.seed)
        else:
            from edgekd.data.folder import load_folder

            _LOADED[key] = load_folder(recipe.data, root, recipe.seed, progress)
        data = _LOADED[key]
        for split in ("train", "test"):
            if not data.has_split(split) or len(data.split(split)) == 0:
                del _LOADED[key]
                raise DataError(f"dataset has no {split} samples; add rows with split={split} or drop the split "
                                "column to get a seeded stratified split")
    return _LOADED[key]
