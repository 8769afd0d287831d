"""Checks of the benchmark harness itself on a real bundle (issue targets; not part of CI):

    OMP_NUM_THREADS=1 python bench/harness_checks.py runs/avdigits/bundle [--runs 20]

1. overhead: batch-1 p50 of `edgekd bench` vs a bare `InferenceSession.run` loop, same model;
2. repeatability: p50 of three successive benches;
3. gate reliability: a regression budget (10%) against a baseline bench passes for the unchanged
   student and fails for a 20%-slower student (a wider student of the same architecture), N times.
   `--width auto` picks the width whose bare-loop p50 is closest to 1.2x the bundle's student.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgekd.benchmark.bench import run_bench
from edgekd.benchmark.gate import gate
from edgekd.runtime.runner import OrtRunner

MODEL = "student_fp32"
FAST = {"min_seconds": 3.0, "max_seconds": 10.0}


def bench(bundle: Path, out: Path, baseline: Path | None = None) -> tuple[dict, Path]:
    result, files = run_bench(bundle, batches=[1], threads=1, backends=["onnxruntime-cpu"], models=[MODEL], out=out,
                              baseline=baseline, **FAST)
    return result, files["json"]


def p50(b: dict) -> float:
    return next(r["p50_ms"] for r in b["results"] if r["model"] == MODEL and not r.get("skipped"))


def bare_p50(path: Path, inputs: dict, seconds: float = 3.0) -> float:
    s = OrtRunner(path).session
    for _ in range(50):
        s.run(None, inputs)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        s.run(None, inputs)
        times.append(time.perf_counter() - t)
    return float(np.percentile(np.asarray(times) * 1000, 50))


def slower_bundle(bundle: Path, dest: Path, width: int, student: str = "fusion_lean") -> Path:
    """A copy of the bundle whose student FP32 is a wider student of the same design, exported in
    the same (folded) form."""
    import torch

    from edgekd.data.base import ModalitySpec
    from edgekd.exporting.onnx_export import export_onnx
    from edgekd.models import create_model
    from edgekd.models.student import inference_form
    from edgekd.runtime.bundle import load_bundle, write_bundle

    b = load_bundle(bundle)
    specs = {i["name"]: ModalitySpec(i["name"], i["kind"], tuple(i["shape"][1:]), i["dtype"]) for i in b.io_spec["inputs"]}
    torch.manual_seed(0)
    wide = inference_form(create_model(student, "student", modalities=specs, num_classes=len(b.labels),
                                       fusion="late", width=width).eval())
    onnx_path = export_onnx(wide, {k: torch.zeros((1, *s.shape)) for k, s in specs.items()}, dest / "wide.onnx")
    return write_bundle(dest / "bundle", name="wide", models={MODEL: {k: v for k, v in b.models[MODEL].items() if k != "file"}},
                        model_files={MODEL: onnx_path}, io_spec=b.io_spec, preprocess=b.preprocess, labels=b.labels,
                        extra_files={"testset.npz": bundle / "testset.npz"})


def pick_width(bundle: Path, work: Path, inputs: dict, student: str, base_width: int,
               target: float = 1.2) -> tuple[int, float]:
    """The width (base+1 .. base+12) whose FP32 student runs closest to `target` x the bundle's, bare loops."""
    from edgekd.runtime.bundle import load_bundle

    base = load_bundle(bundle).model_path(MODEL)
    best = None
    for width in range(base_width + 1, base_width + 13):
        wide = load_bundle(slower_bundle(bundle, work / f"w{width}", width, student)).model_path(MODEL)
        ratios = [bare_p50(wide, inputs, 1.5) / bare_p50(base, inputs, 1.5) for _ in range(5)]
        ratio = float(np.median(ratios))
        print(f"width {width}: {ratio:.3f}x", flush=True)
        if best is None or abs(ratio - target) < abs(best[1] - target):
            best = (width, ratio)
    return best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--student", default="fusion_lean", help="the bundle student's preset (the default recipe's)")
    ap.add_argument("--base-width", type=int, default=16, help="the bundle student's width (the default recipe's)")
    ap.add_argument("--width", default="auto", help="width of the slower student, or auto: the width closest to "
                    "20%% slower")
    ap.add_argument("--pairs", type=int, default=5, help="alternations of bare loop and bench for the overhead "
                    "(0: skip the overhead and repeatability checks)")
    ap.add_argument("--modes", default="separate,interleaved",
                    help="regression gate baselines to test: separate (an earlier bench), interleaved (same run)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="harness-"))
    report = {}
    from edgekd.benchmark.runners import load_testset
    from edgekd.runtime.bundle import load_bundle

    inputs, _ = load_testset(args.bundle / "testset.npz")
    one = {k: v[:1] for k, v in inputs.items()}
    model_path = load_bundle(args.bundle).model_path(MODEL)
    pairs = []
    for i in range(args.pairs):  # alternate so drift hits both
        bare = bare_p50(model_path, one)
        b, _ = bench(args.bundle, work / f"o{i}")
        pairs.append((bare, p50(b)))
    if pairs:  # --pairs 0: the gate check alone
        report["overhead"] = {"bare_p50_ms": [round(a, 4) for a, _ in pairs],
                              "bench_p50_ms": [round(b, 4) for _, b in pairs],
                              "ratio": [round(b / a, 3) for a, b in pairs],
                              "median_ratio": round(float(np.median([b / a for a, b in pairs])), 3)}
        report["repeatability_p50_ms"] = [round(b, 4) for _, b in pairs]
        p50s = np.array(report["repeatability_p50_ms"])
        report["repeatability_max_dev_from_mean"] = round(float(np.abs(p50s / p50s.mean() - 1).max()), 3)
        print(json.dumps(report), flush=True)

    if not args.modes:
        print(json.dumps(report, indent=1))
        return 0
    budget = work / "regression.yaml"
    budget.write_text("budgets:\n  - {name: no regression, kind: regression, model: student_fp32, "
                      "backend: onnxruntime-cpu, batch: 1, metric: p50_ms, max_slowdown: 0.10}\n")
    _, baseline = bench(args.bundle, work / "baseline")
    if args.width == "auto":
        width, ratio = pick_width(args.bundle, work, one, args.student, args.base_width)
        report["slower_width"] = {"width": width, "bare_p50_ratio": round(ratio, 3)}
    else:
        width = int(args.width)
    wide = slower_bundle(args.bundle, work / "wide", width, args.student)
    for mode in args.modes.split(","):  # baseline bench taken earlier vs measured in the same run
        codes = {"unchanged": [], "slower": []}
        slow_ratio = []
        for i in range(args.runs):
            for label, src in (("unchanged", args.bundle), ("slower", wide)):
                same = args.bundle if mode == "interleaved" else None
                b, path = bench(src, work / f"{mode}{label}{i}", baseline=same)
                code, _ = gate(path, budget, None if same else baseline)
                codes[label].append(code)
                if label == "slower":
                    ref = b if same else json.loads(baseline.read_text())
                    slow_ratio.append(p50(b) / next(r["p50_ms"] for r in ref["results"]
                                                    if r["model"] == ("baseline/" if same else "") + MODEL))
            print(mode, i, codes["unchanged"][-1], codes["slower"][-1], flush=True)
        report[f"gate_{mode}"] = {k: {"pass": v.count(0), "fail": v.count(1), "inconclusive": v.count(3)}
                                  for k, v in codes.items()}
        report[f"slower_p50_ratio_{mode}"] = round(float(np.median(slow_ratio)), 3)
    print(json.dumps(report, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
