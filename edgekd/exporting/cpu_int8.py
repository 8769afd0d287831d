"""An INT8 model onnxruntime's CPU provider fuses into integer kernels.

TensorRT-style QDQ (Q/DQ on Conv/Gemm inputs only) is not fused by onnxruntime's CPU provider and
runs slower than FP32 there, so the CPU target gets its own model: onnxruntime's static
quantization in QDQ format (Q/DQ around inputs *and* outputs, which the CPU provider turns into
QLinearConv/QGemm), calibrated on real train batches, weights per channel.

Its input is the QAT/QAD student with the fake-quantized weights folded in (the export stage
builds it), so the weights are already on the per-channel symmetric grid they were trained for.

Weights use 7 bits (`reduce_range`): on x86 CPUs without VNNI (AVX2 only), onnxruntime's u8 x s8
kernels add pairs of products in int16 (VPMADDUBSW) and saturate. Measured on this AVX2 machine,
on the avdigits student: 94.2% with 8-bit weights against 96.7% when the same model's Q/DQ are
computed in float (optimisations off), and 96.6-96.9% with 7-bit weights.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np

from edgekd.errors import ExportError
from edgekd.files import atomic_path


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of input dicts."""

    def __init__(self, batches: list[dict[str, np.ndarray]]):
        self.batches = batches
        self.rewind()

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self.batches)


def _float_tail(model: Path) -> tuple[list[str], dict]:
    """(nodes to leave float, quantize_static extra options).

    - A Split whose outputs are the model's outputs (the folded late-fusion tail) stays float:
      quantized, it costs a DequantizeLinear per output. When every Gemm feeds only such a Split,
      Gemm outputs stay float too, so QGemm writes float itself and no DequantizeLinear runs first.
    - 2-D convolutions (4-D weights: the image encoder) and LayerNormalization stay float. Timed node
      by node (docs/int8-cpu-profile.md), onnxruntime's float NCHWc kernels beat QLinearConv on them
      (a 1-channel stem 5-7x, 3x3 depthwise 1.6-2.6x) and the CPU provider has no integer
      LayerNormalization; 1-D convolutions (text, audio) are 1.5-36x faster in INT8 and stay INT8.
      Prototyped: image+text student 1.03-1.05x -> 1.30-1.35x FP32 at batch 1, image+audio
      1.30-1.33x -> 1.64-1.69x, accuracy within 2 test samples."""
    import onnx

    graph = onnx.load(str(model)).graph
    outputs = {o.name for o in graph.output}
    tail = [n.name for n in graph.node if n.op_type == "Split" and set(n.output) <= outputs]
    extra = {"WeightSymmetric": True, "ActivationSymmetric": False}
    consumers = {t: {n.name for n in graph.node if t in n.input} for n in graph.node for t in n.output}
    gemms = [n for n in graph.node if n.op_type == "Gemm"]
    if tail and all(consumers[g.output[0]] <= set(tail) for g in gemms):
        extra["OpTypesToExcludeOutputQuantization"] = ["Gemm"]
    init = {t.name: t for t in graph.initializer}
    slow = [n.name for n in graph.node if n.op_type == "LayerNormalization"
            or (n.op_type == "Conv" and len(n.input) > 1 and len(getattr(init.get(n.input[1]), "dims", ())) == 4)]
    return tail + slow, extra


def quantize_for_cpu(fp32: Path, out: Path, batches: list[dict[str, np.ndarray]], method: str = "minmax") -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not batches:
        raise ExportError("CPU INT8 quantization needs at least one calibration batch; raise recipe.export.calib_batches")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    logging.getLogger("root").setLevel(logging.ERROR)  # quant_pre_process logs advice at WARNING
    with tempfile.TemporaryDirectory() as tmp, atomic_path(out) as dest, contextlib.redirect_stdout(io.StringIO()):
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        keep_float, extra = _float_tail(pre)
        try:
            # u8 activations / s8 weights is the x86 fast path; symmetric per-channel 7-bit weights (above)
            quantize_static(str(pre), str(dest), _Reader(batches), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=methods[method], nodes_to_exclude=keep_float,
                            extra_options=extra)
        except Exception as e:
            raise ExportError(f"onnxruntime static quantization of {fp32.name} failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e
    return out
