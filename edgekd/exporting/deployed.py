"""A student as it deploys, written to ONNX: what a latency budget is measured on.

The prune stage's candidates and the student search's architectures are timed on exactly what the
export stage would ship for the budget's backend and precision, so a budget met while choosing is
met by the bundle.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from edgekd.benchmark.runners import device_of


def deployed_onnx(model, names: list[str], example: dict, budget, calib: list[dict], qat, cpu_calib_method: str,
                     out: Path) -> Path:
    """`model` as it would deploy under `budget`, written to `out`: the CPU INT8 model (onnxruntime's static quantization of the
    float export) on the CPU, ModelOpt's Q/DQ model on a GPU backend, or the float export."""
    import copy

    from edgekd.exporting.onnx_export import export_onnx
    from edgekd.models.student import inference_form
    from edgekd.quant.fold import fold_batchnorm

    out.parent.mkdir(parents=True, exist_ok=True)
    q = copy.deepcopy(model).eval()
    fold_batchnorm(q)  # as the qat stage does before the export stage ships it (an unfolded BatchNorm
    # between quantized convolutions stays a separate float node: 0.032 against 0.023 ms on avdigits)
    if budget.precision == "fp32":
        return export_onnx(inference_form(q), example, out)
    if device_of(budget.backend) == "cpu":
        from edgekd.exporting.cpu_int8 import quantize_for_cpu

        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_onnx(inference_form(q), example, Path(tmp) / "fp32.onnx")
            return quantize_for_cpu(fp32, out, [{n: b[n] for n in names} for b in calib], cpu_calib_method)
    import torch

    from edgekd.quant.int8 import quantize

    q = quantize(q, qat, [{n: torch.from_numpy(b[n]) for n in names} for b in calib])
    return export_onnx(q, example, out, quantized=True)
