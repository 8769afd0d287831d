"""The model registry itself (timm-style decorator) and the output every model returns.

Model files register themselves here and import nothing else of the package, so the package's
`create_model` can import them without a cycle.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple


class ModelOutput(NamedTuple):
    logits: object  # (B, C)
    features: object  # (B, D) fused embedding, the feature-KD target
    modality_features: dict  # modality -> (B, D_m) per-modality embedding


@dataclass(frozen=True)
class Entry:
    name: str
    role: str  # "teacher" or "student"
    factory: Callable
    description: str


_REGISTRY: dict[str, Entry] = {}


def register_model(name: str, role: str, description: str):
    def wrap(factory):
        _REGISTRY[name] = Entry(name, role, factory, description)
        return factory

    return wrap
