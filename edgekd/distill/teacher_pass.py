"""Where a frozen encoder's embedding pass runs: measured, not assumed.

On a machine with CUDA the pass runs there. On a CPU it runs through PyTorch or through
onnxruntime (the encoder exported to ONNX for the pass), whichever a timed trial batch says
finishes the whole pass sooner -- the export's own seconds counted against onnxruntime -- and only
if both give the same embeddings on that batch. The trial's figures go into the manifest.
"""
from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

TRIAL_TOLERANCE = 1e-3  # relative to the embeddings' scale: onnxruntime must agree before it is used


class _Embed(torch.nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, x):
        return self.encoder.embed(x)


def _torch_fn(encoder, device: str = "cpu"):
    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return encoder.embed(x.to(device)).float().cpu().numpy()
    return run


def _timed(fn, x) -> tuple[float, np.ndarray]:
    fn(x)  # warm-up: allocations, onnxruntime's first-call planning
    t0 = time.perf_counter()
    out = fn(x)
    return time.perf_counter() - t0, out


def _onnx_fn(encoder, x: torch.Tensor, threads: int, workdir: Path):
    """The encoder's embed() as an onnxruntime session over `x`'s layout (batch, and token axes)."""
    import onnxruntime as ort

    path = workdir / "encoder.onnx"
    axes = {0: "batch", 1: "tokens"} if x.dtype == torch.int64 else {0: "batch"}
    with warnings.catch_warnings():  # the tracer's notes on transformers' Python branches are not the user's
        warnings.simplefilter("ignore")
        torch.onnx.export(_Embed(encoder).eval(), (x,), str(path), input_names=["x"], output_names=["embedding"],
                          dynamic_axes={"x": axes, "embedding": {0: "batch"}}, opset_version=17, dynamo=False,
                          do_constant_folding=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda t: session.run(None, {"x": t.numpy()})[0].astype(np.float32, copy=False)


def pick(encoder, trial: torch.Tensor, rows: int, threads: int = 1):
    """(embed function over torch batches, {backend, trial figures}) for a pass over `rows` rows,
    `trial` being one representative batch."""
    encoder.eval()
    if torch.cuda.is_available():
        encoder.to("cuda")
        return _torch_fn(encoder, "cuda"), {"backend": "torch-cuda", "device": torch.cuda.get_device_name(0)}
    fn = _torch_fn(encoder)
    seconds, ref = _timed(fn, trial)
    info = {"backend": "torch", "trial_rows": int(trial.shape[0]),
            "torch_samples_per_s": round(trial.shape[0] / seconds, 1)}
    tmp = tempfile.TemporaryDirectory(prefix="edgekd-pass-")
    try:
        t0 = time.perf_counter()
        ort_fn = _onnx_fn(encoder, trial, threads, Path(tmp.name))
        export_s = time.perf_counter() - t0
        ort_seconds, got = _timed(ort_fn, trial)
    except Exception as e:  # an encoder the exporter cannot trace stays on PyTorch, and says why
        tmp.cleanup()
        return fn, {**info, "onnxruntime": f"not used: export failed ({type(e).__name__}: {str(e)[:120]})"}
    diff = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-6))
    per_row_torch, per_row_ort = seconds / trial.shape[0], ort_seconds / trial.shape[0]
    info.update(onnxruntime_samples_per_s=round(1 / per_row_ort, 1), onnx_export_seconds=round(export_s, 2),
                trial_max_rel_diff=float(f"{diff:.2g}"))
    if diff <= TRIAL_TOLERANCE and export_s + rows * per_row_ort < rows * per_row_torch:
        info["backend"] = "onnxruntime"
        ort_fn.keep = tmp  # the model file lives as long as the function
        return ort_fn, info
    tmp.cleanup()
    return fn, info
