"""Runners for the bench: onnxruntime (CPU/CUDA/TensorRT providers), TensorRT engines, PyTorch eager.

Backend names are "<library>-<device>" so a budget file can name one: onnxruntime-cpu,
onnxruntime-cuda, onnxruntime-trt (TensorRT execution provider), tensorrt (a bundle's engine),
torch-cpu, torch-cuda. torch is imported only inside the torch functions: benchmarking a bundle on a
device without torch must never touch it.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from edgekd.benchmark.testset import TESTSET, batch_of, load_testset  # noqa: F401  (re-exported)
from edgekd.contract import OUTPUTS, to_numpy
from edgekd.errors import BundleError

ORT_PROVIDERS = {
    "onnxruntime-cpu": ["CPUExecutionProvider"],
    "onnxruntime-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "onnxruntime-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
TORCH_BACKENDS = ("torch-cpu", "torch-cuda")
BACKENDS = (*ORT_PROVIDERS, "tensorrt", *TORCH_BACKENDS)
DEVICE = {"onnxruntime-cpu": "cpu", "torch-cpu": "cpu"}  # every other backend runs on the CUDA device


def device_of(backend: str) -> str:
    return DEVICE.get(backend, "cuda")


# --------------------------------------------------------------------------- data


def synthetic(specs: dict[str, tuple[str, tuple]], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Stand-in inputs (name -> (dtype, per-sample shape)) where no test set is at hand: latency
    does not depend on values for these models, but accuracy then cannot be reported."""
    rng = np.random.default_rng(seed)
    return {n: (np.ones((batch, *shape), dtype=dtype) if np.dtype(dtype).kind in "iu"  # token id 1: never padding
                else rng.standard_normal((batch, *shape)).astype(dtype)) for n, (dtype, shape) in specs.items()}


def accuracy(run, inputs: dict[str, np.ndarray], labels: np.ndarray, batch: int) -> float:
    """Top-1 accuracy of `run` (inputs dict -> outputs dict) over the split, in chunks of `batch`.

    The last chunk is padded to a full batch because an engine may only accept its profile's batch
    sizes; the padded rows' answers are discarded."""
    correct = 0
    for i in range(0, len(labels), batch):
        chunk = {k: v[i : i + batch] for k, v in inputs.items()}
        real = len(next(iter(chunk.values())))
        if real < batch:
            chunk = {k: np.concatenate([v, np.repeat(v[:1], batch - real, axis=0)]) for k, v in chunk.items()}
        out = run(chunk)
        logits = out["logits"] if "logits" in out else next(iter(out.values()))
        correct += int((np.asarray(logits)[:real].argmax(axis=1) == labels[i : i + real]).sum())
    return round(correct / len(labels), 4)


# --------------------------------------------------------------------------- onnxruntime and TensorRT


def open_onnx(path: Path, backend: str, threads: int):
    """An OrtRunner with the backend's providers (BundleError when this onnxruntime lacks them)."""
    from edgekd.runtime.runner import OrtRunner

    return OrtRunner(path, threads=threads, providers=ORT_PROVIDERS[backend])


def fast_call(runner, feeds: dict[str, np.ndarray]):
    """A zero-argument call of one inference. The inputs are checked once through runner.run; the
    timed call then goes straight to the onnxruntime session, so the harness adds nothing a bare
    `InferenceSession.run` loop would not pay (the per-call input check costs microseconds, a
    visible share of a small model's batch-1 latency)."""
    runner.run(feeds)
    session = getattr(runner, "_session", None)
    if session is not None and hasattr(session, "run"):
        return partial(session.run, list(runner.output_names), feeds)
    return partial(runner.run, feeds)


def open_engine(bundle, key: str, threads: int):
    """A bundle engine's runner, BundleError with the reason where TensorRT or the GPU is missing."""
    from edgekd.runtime.runner import make_runner

    try:
        return make_runner(bundle, key, backend="tensorrt", threads=threads)
    except ImportError as e:  # an optional module another engineer adds may be absent in this install
        raise BundleError(f"the TensorRT runner is not available here ({e})") from None


# --------------------------------------------------------------------------- PyTorch eager


class TorchRunner:
    """The Runner interface over an nn.Module in eager mode (no_grad), outputs copied to numpy like
    every other backend, so the timings include the same device-to-host transfer."""

    def __init__(self, model, device: str = "cpu", threads: int = 1, specs: dict | None = None):
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise BundleError("torch-cuda needs a CUDA build of torch and a GPU (torch.cuda.is_available() is False)")
        torch.set_num_threads(max(1, int(threads)))  # intra-op threads, as explicit as onnxruntime's
        self._torch, self.device = torch, device
        self.model = model.to(device).eval()
        self.input_names = list(model.names)
        self.output_names = list(OUTPUTS)
        self.specs = dict(specs or {})  # name -> (dtype, per-sample shape)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.no_grad():
            out = self.model({n: torch.from_numpy(inputs[n]).to(self.device) for n in self.input_names})
        return to_numpy(out)

    def sync(self) -> None:
        if self.device == "cuda":
            self._torch.cuda.synchronize()

    def close(self) -> None:
        self.model = None




def torch_available(backend: str) -> str | None:
    """None when `backend` can run here, else why not (without importing torch when it is absent)."""
    from importlib.util import find_spec

    if find_spec("torch") is None:
        return "torch is not installed (PyTorch backends need a run directory's environment)"
    if backend == "torch-cuda":
        import torch

        if not torch.cuda.is_available():
            return "torch has no CUDA device here"
    return None


def cuda_peak_gflops(n: int = 4096, reps: int = 5) -> float | None:
    """The GPU's achieved float32 GFLOP/s on an n x n matmul (torch), when torch and CUDA exist."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        a = torch.randn(n, n, device="cuda")
        b = torch.randn(n, n, device="cuda")
        a @ b
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            torch.cuda.synchronize()
            best = min(best, start.elapsed_time(end) / 1000)
        return round(2 * n**3 / best / 1e9, 1)
    except Exception:  # noqa: BLE001 -- a peak we cannot measure is reported as unknown
        return None
