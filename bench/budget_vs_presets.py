"""Does a latency-budgeted pruned student beat hand-picked students under the same budget?

Times the deployed CPU INT8 student of several finished run directories together (interleaved, the
bench harness, the budget's statistic and 95% bound, as the prune stage does) and prints, per run,
its latency, its test accuracy through onnxruntime (the export stage's) and whether it meets the
budget.

    OMP_NUM_THREADS=1 python bench/budget_vs_presets.py --budget-ms 0.45 --batch 32 \\
        pruned=/tmp/av-bud lean=/tmp/av-lean small=/tmp/av-small tiny=/tmp/av-tiny
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgekd.benchmark import budget as lat
from edgekd.benchmark.runners import batch_of, load_testset
from edgekd.recipe import LatencyBudget


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="LABEL=RUN_DIR (a run whose export stage is done)")
    ap.add_argument("--budget-ms", type=float, required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--metric", default="p50_ms")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=20.0, help="most measuring time")
    a = ap.parse_args()
    budget = LatencyBudget(latency_ms=a.budget_ms, batch=a.batch, metric=a.metric)
    cands, test = [], {}
    for spec in a.runs:
        label, run = spec.split("=", 1)
        stages = json.loads((Path(run) / "manifest.json").read_text())["stages"]
        flops = (stages.get("prune", {}).get("metrics") or {}).get("flops") or stages["distill"]["metrics"].get("flops", 0)
        c = lat.Candidate(label, int(flops or 0), int(stages["distill"]["metrics"].get("params", 0)),
                          stages["export"]["metrics"]["student_int8_cpu"]["accuracy"],  # test, for this report
                          onnx=Path(run) / "bundle" / "student.int8-cpu.onnx")
        cands.append(c)
        test[label] = Path(run) / "bundle" / "testset.npz"
    inputs, _ = load_testset(next(iter(test.values())))
    lat.measure(cands, budget, batch_of(inputs, list(inputs), a.batch), a.threads, min_seconds=min(5.0, a.seconds),
                max_seconds=a.seconds, block=10)
    print(f"budget: {a.metric[:-3]} <= {a.budget_ms} ms, onnxruntime-cpu, batch {a.batch}, {a.threads} thread(s)\n")
    print(f"| student | test accuracy (CPU INT8) | {a.metric[:-3]} ms | 95% CI | meets |")
    print("|---|---|---|---|---|")
    for c in cands:
        m = c.latency
        print(f"| {c.name} | {c.val_accuracy:.1%} | {m.get('value')} | [{m.get('lo')}, {m.get('hi')}] | "
              f"{'yes' if lat.meets(c, budget) else 'no'} |")


if __name__ == "__main__":
    main()
