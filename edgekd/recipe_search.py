"""The recipe's budgets and the student search: what "small enough" means, measured.

`LatencyBudget` is a measured latency on a named backend (prune.constraint); `StudentBudget` adds
parameter and file-size bounds (student.budget, for student: auto); `SearchConfig` bounds the search.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from edgekd.schema import Strict, suggest

BUDGET_BACKENDS = ("onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-trt")


def _percentage(where: str, v: str) -> None:
    num = v[:-1] if isinstance(v, str) and v.endswith("%") else None
    if num is None or not num.replace(".", "", 1).isdigit() or not 0 < float(num) < 100:
        raise ValueError(f"{where}: {v!r} is not a percentage between 0 and 100 (e.g. 50%)")


class LatencyBudget(Strict):
    """The most accurate pruned student whose measured latency meets this budget."""

    latency_ms: float = Field(gt=0, description="Budget in milliseconds per call (the whole batch).")
    backend: str = Field("onnxruntime-cpu", description="Where to measure: onnxruntime-cpu, onnxruntime-cuda or "
                         "onnxruntime-trt (TensorRT through onnxruntime's TensorRT execution provider).")
    batch: int = Field(1, ge=1, description="Batch size of the measured call.")
    precision: Literal["int8", "fp32"] = Field("int8", description="Deploy precision of the measured model: int8 = "
                                               "the CPU INT8 model on the CPU, the Q/DQ model on a GPU backend.")
    metric: Literal["p50_ms", "p90_ms", "p99_ms", "mean_ms"] = Field(
        "p50_ms", description="The latency statistic whose upper confidence bound must meet the budget.")

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        if v == "tensorrt":
            raise ValueError("a bundle engine cannot be built per candidate here; use onnxruntime-trt (the same "
                             "TensorRT kernels through onnxruntime's TensorRT execution provider)")
        if v not in BUDGET_BACKENDS:
            raise ValueError(f"unknown backend {v!r}; choose one of {', '.join(BUDGET_BACKENDS)}{suggest(v, BUDGET_BACKENDS)}")
        return v


def _bound(where: str, v) -> None:
    """A size bound: a positive number or a percentage of the teacher's."""
    if isinstance(v, str):
        _percentage(where, v)
    elif v is not None and v <= 0:
        raise ValueError(f"{where}: {v} must be a positive bound")


class StudentBudget(Strict):
    """What `student: auto` must fit: a measured latency (as prune.constraint) and/or size bounds."""

    latency_ms: float | None = Field(None, gt=0, description="Budget in milliseconds per call (the whole batch), "
                                     "measured on the deployable form (CPU INT8 or FP32, as the export ships).")
    backend: str = Field("onnxruntime-cpu", description="Where latency is measured (onnxruntime-cpu here; a GPU "
                         "backend where the search runs on that GPU).")
    batch: int = Field(1, ge=1, description="Batch size of the measured call.")
    precision: Literal["int8", "fp32"] = Field("int8", description="Deploy precision of the measured model.")
    metric: Literal["p50_ms", "p90_ms", "p99_ms", "mean_ms"] = Field(
        "p50_ms", description="The latency statistic whose upper 95% confidence bound must meet the budget.")
    params: str | float | None = Field(
        None, description='Parameter bound: a number or a share of the teacher\'s ("2%"). Default 2% of the '
        "teacher's when no size bound is given (a student is for compression).")
    size_kb: float | None = Field(None, gt=0, description="Bound on the deployed ONNX model's size in KB.")

    @model_validator(mode="after")
    def _check(self):
        _bound("student.budget.params", self.params)
        LatencyBudget._backend(self.backend)
        return self


class SearchConfig(Strict):
    """The student search (student.name: auto, or `edgekd search`): Optuna's TPE sampler with the
    budget as a constraint and a Hyperband pruner on per-epoch validation accuracy."""

    trials: int = Field(40, ge=1, description="Trained trials at most (one the pruner stops counts; a student "
                        "over the budget is refused before training and does not, up to 20 x trials samples).")
    minutes: float = Field(15.0, gt=0, description="Wall-clock bound: no trial starts after it.")
    max_epochs: int = Field(40, ge=2, description="Distillation epochs of a trial at most (Hyperband's top rung); "
                            "the winner then trains for its own sampled epochs on every train row.")
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="Without a val split: the share of each class's "
                                "train rows held out to choose on (edgekd.data.holdout, shared with the baselines).")
    latency_seconds: float = Field(1.0, gt=0, description="Measuring time per architecture (the winner is "
                                   "measured again for longer).")
    seed: int | None = Field(None, ge=0, description="Sampler seed (default: the recipe's).")
