"""The recipe's deploy sections: export (ONNX, parity, bundle), build (TensorRT) and bench."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from edgekd.schema import Strict


class ExportConfig(Strict):
    """ONNX models, the parity ladder and the device bundle."""

    teacher: bool = Field(True, description="Also export the teacher (FP32), so benchmarks compare on one backend.")
    cpu_int8: bool = Field(True, description="Also build the INT8 model onnxruntime's CPU provider fuses.")
    cpu_calib_batches: int = Field(8, ge=1, description="Real train batches of 64 calibrating the CPU INT8 model.")
    cpu_calib_method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="onnxruntime calibration method for the CPU INT8 model.")
    parity_batch: int = Field(32, ge=2, description="The larger batch of each parity rung (the other is 1).")
    testset: bool = Field(
        True, description="Ship the test split's model inputs in the bundle (testset.npz) so `edgekd bench` on a "
        "device reports accuracy through the device's backend.")
    testset_rows: int = Field(2000, ge=0, description="testset.npz's rows at most (a seeded sample; 0: all).")
    fp32_tolerance: float = Field(1e-4, gt=0, description="Max abs logit diff, PyTorch FP32 vs onnxruntime FP32.")
    qdq_tolerance: float = Field(
        0.03, gt=0, description="Max abs logit diff, PyTorch fake-quant vs onnxruntime QDQ, as a fraction of the "
        "batch's largest |logit| when that exceeds 1 (float rounding flips activations by one INT8 step here and "
        "there, so not 0).")
    qdq_min_agreement: float = Field(0.95, ge=0, le=1, description="Top-1 agreement required of the QDQ rung.")
    cpu_int8_min_agreement: float = Field(
        0.9, ge=0, le=1, description="Top-1 agreement of the CPU INT8 model with PyTorch FP32 over the test "
        "split (its own calibration, so logits differ more than the QDQ model's).")


class BuildConfig(Strict):
    """TensorRT engine build for a deployment target (export/targets/<target>.yaml)."""

    target: str = Field("x86-gpu", description="Deployment target: a name under export/targets/ or a YAML path.")
    model: Literal["student_int8_qdq", "student_fp32", "teacher_fp32"] = Field(
        "student_int8_qdq", description="Which exported ONNX model to build (INT8 QDQ by default).")
    require_trt: bool = Field(False, description="Fail instead of skipping where TensorRT or a GPU is missing.")
    build_twice: bool = Field(False, description="Build twice and report whether the engines are byte-identical.")


class BenchConfig(Strict):
    """Latency and accuracy of every exported model on every available backend (edgekd bench)."""

    batches: list[int] = Field(default_factory=lambda: [1, 32], min_length=1, description="Batch sizes.")
    threads: int = Field(1, ge=1, description="Intra-op threads of every backend (1: see README, threads).")
    backends: list[Literal["onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-trt", "tensorrt", "torch-cpu",
                           "torch-cuda"]] | None = Field(None, description="Backends (default: every one available here).")
    min_seconds: float = Field(5.0, gt=0, description="Minimum measuring time per batch size.")
    max_seconds: float = Field(30.0, gt=0, description="Stop here even if the p90/p99 bounds are not tight yet.")
    block: int = Field(10, ge=1, description="Timed calls per model per interleaved round, after one untimed "
                       "call that re-warms its caches (1: strict A B C rounds).")
    baseline_floor: bool = Field(False, description="Fail the bench stage (exit 1) when the shipped student is less "
                                 "accurate than the best linear baseline of the teacher stage (a `baseline_floor` "
                                 "budget of `edgekd gate`).")
    default_budget: float = Field(0.01, ge=0, le=1, description="Accuracy (fraction) the bundle's default model "
                                  "may give up against the best student for speed (see docs/bench.md).")

    @field_validator("batches")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError("batch sizes must be >= 1")
        return v
