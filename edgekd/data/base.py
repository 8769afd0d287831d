"""What every dataset hands the rest of edgekd: named modalities as numpy arrays.

A dataset is preprocessed once into model-ready arrays (the same numbers the torch-free
runtime produces from raw files, see edgekd.runtime.preprocess) and exposes them per split.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

ModalityKind = Literal["image", "audio", "text", "vector"]
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ModalitySpec:
    name: str
    kind: ModalityKind
    shape: tuple[int, ...]  # per-sample shape, without the batch axis
    dtype: str = "float32"  # "int64" for text token ids
    vocab_size: int = 0  # text only


@dataclass
class Split:
    inputs: dict[str, np.ndarray]  # modality name -> (N, *shape)
    labels: np.ndarray  # (N,) int64 class indices
    ids: list[str] = field(default_factory=list)  # stable sample identifiers, for reports

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class Dataset(Protocol):
    name: str
    modalities: dict[str, ModalitySpec]
    classes: list[str]
    # modality name -> the parameters edgekd.runtime.preprocess needs (goes into preprocess.json)
    preprocess: dict[str, dict]
    # how many distinct train pairings exist (avdigits re-pairs audio with images; others: 1)
    num_pairings: int

    def split(self, name: str, pairing: int = 0) -> Split:
        """The arrays of split `name` ("train", "val" or "test"); `pairing` selects the seeded
        cross-modal pairing for paired datasets and is ignored by others."""
        ...

    def has_split(self, name: str) -> bool: ...

    def fingerprint(self) -> str:
        """A short hash of everything that determines the arrays (files + options)."""
        ...
