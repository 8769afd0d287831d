"""Checking model inputs against what the model declares, before any backend runs them.

onnxruntime's and TensorRT's own errors for a wrong dtype or shape name internal node ids; a device
user needs the input name, what the model expects and what was given, on one line.
"""
from __future__ import annotations

import numpy as np

from edgekd.errors import BundleError


def _shape_str(dims) -> str:
    return "(" + ", ".join(str(d) for d in dims) + (",)" if len(dims) == 1 else ")")


def check_inputs(specs: dict[str, tuple[str, list]], inputs: dict, model: str) -> None:
    """Refuse inputs that do not match `specs` (name -> (dtype, dims)); dims are ints for fixed
    axes and names (or None) for dynamic ones. Axes sharing a name (the batch) must agree."""
    takes = ", ".join(specs)
    for name in specs:
        if name not in inputs:
            raise BundleError(f"missing input '{name}': {model} takes {takes}")
    for name in inputs:
        if name not in specs:
            raise BundleError(f"unexpected input '{name}': {model} takes {takes}")
    seen: dict[str, tuple[int, str]] = {}  # symbolic axis -> (size, input that fixed it)
    for name, (dtype, dims) in specs.items():
        x = inputs[name]
        if not isinstance(x, np.ndarray):
            raise BundleError(f"input '{name}' must be a numpy array, got {type(x).__name__}")
        if x.dtype != np.dtype(dtype):
            raise BundleError(f"input '{name}' expects dtype {dtype}, got {x.dtype}")
        if x.ndim != len(dims) or any(isinstance(d, int) and d != n for d, n in zip(dims, x.shape)):
            raise BundleError(f"input '{name}' expects shape {_shape_str(dims)}, got {_shape_str(x.shape)}")
        for d, n in zip(dims, x.shape):
            if isinstance(d, str) and d:
                size, other = seen.setdefault(d, (n, name))
                if size != n:
                    raise BundleError(f"input '{name}' has {d}={n} but input '{other}' has {d}={size}: "
                                      f"give every input the same {d}")
