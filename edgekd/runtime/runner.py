"""One runner interface for every backend, so predict, bench and parity are written once.

Inputs are checked against the model's own input metadata before running: onnxruntime's errors
for a wrong dtype or shape name internal node ids, while a device user needs the input name, what
the model expects and what was given, on one line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from edgekd.errors import BundleError, UsageError
from edgekd.runtime.inputs import check_inputs

BACKENDS = ("onnxruntime", "tensorrt")
# onnxruntime's type strings for the tensor element types an edgekd model can have
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
               "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
               "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


@runtime_checkable
class Runner(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class OrtRunner:
    """An onnxruntime session over one model file, with explicit threads (1 by default: on shared
    small machines more intra-op threads than free cores was measured many times slower)."""

    def __init__(self, path, threads: int = 1, providers: list[str] | None = None, model_bytes: bytes | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BundleError("the onnxruntime runner needs the onnxruntime package: pip install onnxruntime") from None
        self.path = Path(path)
        providers = list(providers or ["CPUExecutionProvider"])
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise BundleError(f"onnxruntime here has no {', '.join(missing)} (available: "
                              f"{', '.join(ort.get_available_providers())}): choose an available provider")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # warnings about unused initializers etc. are not the user's concern
        try:
            # from the bytes that were verified, where given: a file swapped after the check is never loaded
            source = model_bytes if model_bytes is not None else str(self.path)
            self._session = ort.InferenceSession(source, sess_options=opts, providers=providers)
        except Exception as e:  # ORT raises its own exception types per failure
            raise BundleError(f"onnxruntime cannot load {self.path.name} ({str(e).splitlines()[0][:200]}); "
                              "re-export with `edgekd export RUN_DIR`") from None
        meta = self._session.get_inputs()
        self.input_names = [m.name for m in meta]
        self.output_names = [m.name for m in self._session.get_outputs()]
        self._specs = {m.name: (_ORT_DTYPES.get(m.type, m.type), list(m.shape)) for m in meta}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(self._specs, inputs, self.path.name)
        try:
            outs = self._session.run(self.output_names, dict(inputs))
        except Exception as e:
            raise BundleError(f"onnxruntime failed running {self.path.name} "
                              f"({str(e).splitlines()[0][:200]})") from None
        return dict(zip(self.output_names, outs))

    @property
    def session(self):
        """The onnxruntime InferenceSession itself (bare timing loops, the bench's fast path)."""
        return self._session

    def close(self) -> None:
        self._session = None


def make_runner(bundle, key: str | None = None, backend: str = "onnxruntime", threads: int = 1) -> Runner:
    """A runner for model `key` (default: the bundle's default model) of a bundle or bundle path."""
    from edgekd.runtime.bundle import Bundle, load_bundle

    if backend not in BACKENDS:
        raise UsageError(f"unknown backend '{backend}': use one of {', '.join(BACKENDS)}")
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    if backend == "tensorrt":  # imported here: the onnxruntime path never loads TensorRT code
        from edgekd.runtime.trt_runner import open_bundle_engine

        return open_bundle_engine(bundle, key)
    key = bundle.resolve_key(key)
    if bundle.models[key].get("backend") == "tensorrt":
        raise UsageError(f"model {key} is a TensorRT engine: run it with --backend tensorrt, or pick an ONNX model")
    return OrtRunner(bundle.model_path(key), threads=threads, model_bytes=bundle.verified_bytes(key))
