"""One search trial's parts that are not Optuna's: teacher targets for the held-out fit rows, and
the latency and size of an architecture as it would deploy."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np


class HeldOutTargets:
    """Teacher targets for a HeldOut dataset's train rows: its row k is row fit[k] of the cache,
    which covers the whole train split (the distill stage reuses it)."""

    def __init__(self, targets, fit: np.ndarray):
        self.targets, self.fit = targets, np.asarray(fit, np.int64)

    def __getattr__(self, name):  # teacher, names, modalities
        if name == "targets":
            raise AttributeError(name)
        return getattr(self.targets, name)

    def get(self, pairing: int, idx: np.ndarray, inputs: dict | None = None) -> dict:
        return self.targets.get(pairing, self.fit[np.asarray(idx)], inputs)


def deployed_size_and_latency(model, names: list[str], example: dict, feeds: dict, calib: list[dict], budget,
                              recipe, seconds: float) -> tuple[float, dict]:
    """(size in KB, latency {value, lo, hi, samples, converged} or {}) of `model` exported as the
    export stage would ship it for `budget` (edgekd.exporting.deployed), timed alone on the budget's
    backend with the bench harness. Weights do not change the time: students are measured before
    they train, so an over-budget one costs seconds, not a training run."""
    from edgekd.benchmark import budget as lat
    from edgekd.exporting.deployed import deployed_onnx

    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        onnx = deployed_onnx(model, names, example, budget, calib, recipe.qat, recipe.export.cpu_calib_method,
                             Path(tmp) / "student.onnx")
        size_kb = round(onnx.stat().st_size / 1024, 1)
        if budget.latency_ms is None:
            return size_kb, {}
        c = lat.Candidate("student", 0, 0, 0.0, onnx=onnx)
        lat.measure([c], budget, feeds, recipe.bench.threads, min_seconds=seconds, max_seconds=3 * seconds,
                    block=recipe.bench.block)
    return size_kb, c.latency
