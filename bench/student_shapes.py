"""Batch-1 CPU latency of candidate student shapes against a bundle's teacher, before training any.

    OMP_NUM_THREADS=1 python bench/student_shapes.py runs/avdigits/bundle 16,2,2 12,3,1 [--unfolded]

Each shape is WIDTH,DEPTH,STEM_STRIDE of the fused student (late fusion, embedding 64) on the
bundle's modalities. Weights are random (latency does not depend on them); each is exported like
the export stage does (late-fusion tail folded unless --unfolded) to FP32 ONNX and to the CPU INT8
model (calibrated on the bundle's test inputs: speed only, not accuracy), then every model runs
in interleaved rounds of 20 calls with the teacher, one thread. Printed: p50 per model and the
median of the per-round teacher/model ratios, the statistic `edgekd gate` decides a speed-up on.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgekd.benchmark.runners import load_testset
from edgekd.data.base import ModalitySpec
from edgekd.exporting.cpu_int8 import quantize_for_cpu
from edgekd.exporting.onnx_export import export_onnx
from edgekd.models.student import FusedStudent, inference_form
from edgekd.runtime.bundle import load_bundle
from edgekd.runtime.runner import OrtRunner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("shapes", nargs="+", help="WIDTH,DEPTH,STEM_STRIDE")
    ap.add_argument("--unfolded", action="store_true", help="export the late-fusion tail as trained")
    ap.add_argument("--rounds", type=int, default=60)
    a = ap.parse_args()
    torch.set_num_threads(1)
    bundle = load_bundle(a.bundle)
    specs = {i["name"]: ModalitySpec(i["name"], i["kind"], tuple(i["shape"][1:]), i["dtype"])
             for i in bundle.io_spec["inputs"]}
    inputs, _ = load_testset(a.bundle / "testset.npz")
    one = {k: inputs[k][:1] for k in specs}
    calib = [{k: inputs[k][i : i + 64] for k in specs} for i in range(0, 256, 64)]
    sessions = {"teacher": OrtRunner(bundle.model_path("teacher_fp32")).session}
    with tempfile.TemporaryDirectory() as tmp:
        for shape in a.shapes:
            width, depth, stride = (int(x) for x in shape.split(","))
            torch.manual_seed(0)
            model = FusedStudent(specs, len(bundle.labels), width, depth, 64, "late", stride).eval()
            model = model if a.unfolded else inference_form(model)
            example = {k: torch.from_numpy(v[:2]) for k, v in inputs.items() if k in specs}
            fp32 = export_onnx(model, example, Path(tmp) / f"{shape}.fp32.onnx")
            sessions[f"{shape} fp32"] = OrtRunner(fp32).session
            sessions[f"{shape} int8"] = OrtRunner(quantize_for_cpu(fp32, Path(tmp) / f"{shape}.int8.onnx", calib)).session
        times = {k: [] for k in sessions}
        for _ in range(a.rounds):
            for key, s in sessions.items():
                s.run(None, one)  # re-warm after the previous model
                t = time.perf_counter()
                for _ in range(20):
                    s.run(None, one)
                times[key].append((time.perf_counter() - t) / 20 * 1000)
    teacher = np.asarray(times["teacher"])
    for key, v in times.items():
        print(f"{key:16s} p50 {np.median(v):.4f} ms   teacher/model {np.median(teacher / np.asarray(v)):5.1f}x")


if __name__ == "__main__":
    main()
