"""PyTorch -> ONNX: one named input per modality, named outputs `logits` and `embedding`, a dynamic
batch axis, opset 17, a single file.

The choice of exporter lives here alone. The legacy TorchScript exporter (`dynamo=False`) is
used because it turns ModelOpt's fake-quant modules into plain QuantizeLinear/DequantizeLinear
pairs, which is what TensorRT's explicit quantization reads; the dynamo exporter (torch's
default) fails on ModelOpt's quantizers and needs onnxscript. The legacy exporter is deprecated
upstream: when it goes, this is the one function to change.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from edgekd.contract import OUTPUTS
from edgekd.errors import ExportError
from edgekd.files import atomic_path

OPSET = 17


class _Positional(nn.Module):
    """The exporter wants positional tensors in and a tuple out; edgekd models take a dict."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *xs):
        out = self.model(dict(zip(self.names, xs)))
        return out.logits, out.features


def export_onnx(model: nn.Module, example: dict[str, torch.Tensor], path: Path, quantized: bool = False) -> Path:
    """Export `model` (eval mode) for inputs named like `example`'s keys; checks and shape-infers
    the result and writes it atomically."""
    names = list(example)
    wrapper = _Positional(model.eval(), names).eval()
    axes = {n: {0: "batch"} for n in [*names, *OUTPUTS]}
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        try:
            torch.onnx.export(wrapper, tuple(example[n] for n in names), str(tmp), input_names=names,
                              output_names=list(OUTPUTS), dynamic_axes=axes, opset_version=OPSET,
                              dynamo=False, external_data=False, do_constant_folding=True)
        except Exception as e:  # the exporter raises many types; the user needs the op that failed
            raise ExportError(f"ONNX export of {path.name} failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e
        m = onnx.load(str(tmp))
        try:
            onnx.checker.check_model(m, full_check=True)
        except onnx.checker.ValidationError as e:
            raise ExportError(f"{path.name}: onnx.checker rejects the exported model ({str(e).splitlines()[0]})") from e
        m = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
        onnx.save(m, str(tmp))
    return path
