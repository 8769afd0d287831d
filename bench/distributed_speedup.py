"""Speed-up of torchrun with N processes over one, on the avdigits teacher (the heaviest stage).

    OMP_NUM_THREADS=1 python bench/distributed_speedup.py [--epochs 3] [--procs 2] [--out runs/bench-ddp.json]

Runs `edgekd teacher recipes/avdigits.yaml` with 1 intra-op thread per process, first as one
process, then under `torchrun --standalone --nproc-per-node N`, each in a fresh run directory, and
compares the median epoch time (epoch 1 excluded: it pays allocation and oneDNN's kernel choice)
from teacher/eval.json. Accuracy is reported beside it: N processes take the same global batches.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def teacher_run(procs: int, epochs: int, run_dir: Path) -> dict:
    launcher = [sys.executable, "-m", "edgekd"] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs), "-m", "edgekd"]
    cmd = [*launcher, "teacher", str(ROOT / "recipes" / "avdigits.yaml"), "--run-dir", str(run_dir), "-q",
           "--set", f"teacher.epochs={epochs}", "--set", "threads=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    history = json.loads((run_dir / "teacher" / "eval.json").read_text())["history"]
    accuracy = json.loads((run_dir / "manifest.json").read_text())["stages"]["teacher"]["metrics"]["accuracy"]
    epoch_s = [h["seconds"] for h in history]
    return {"processes": procs, "epoch_seconds": epoch_s, "median_epoch_s": statistics.median(epoch_s[1:] or epoch_s),
            "wall_s": round(wall, 1), "accuracy": accuracy, "final_train_loss": history[-1]["loss"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-ddp.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = teacher_run(1, args.epochs, Path(tmp) / "one")
        many = teacher_run(args.procs, args.epochs, Path(tmp) / "many")
    result = {"cpu_count": os.cpu_count(), "epochs": args.epochs, "one": one, "many": many,
              "speedup_epoch": round(one["median_epoch_s"] / many["median_epoch_s"], 2),
              "speedup_wall": round(one["wall_s"] / many["wall_s"], 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"teacher epoch: {one['median_epoch_s']:.2f} s with 1 process, {many['median_epoch_s']:.2f} s with "
          f"{args.procs} -> {result['speedup_epoch']}x (wall {one['wall_s']} s vs {many['wall_s']} s, "
          f"{result['speedup_wall']}x); accuracy {one['accuracy']:.3f} vs {many['accuracy']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
