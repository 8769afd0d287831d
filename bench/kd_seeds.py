"""KD gain across seeds: is distillation's gain over the no-KD baseline bigger than seed noise?

    OMP_NUM_THREADS=1 python bench/kd_seeds.py recipes/avdigits.yaml --teacher runs/avdigits/teacher \
        --seeds 0,1,2,3,4 [--jobs 2] [--set distill.epochs=25 ...] [--out runs/kd-seeds-avdigits]

One `edgekd run RECIPE --until distill` per seed, each in its own run directory under --out, all
reusing one trained teacher (`teacher.checkpoint`) and varying only `distill.seed`: the students'
initial weights, batch order and modality masks (the baseline is always trained, whatever the recipe
says). The KD student and its baseline share each seed,
so the per-seed difference is a paired sample; the summary gives its mean with a Student-t 95%
interval. A single run's `kd_gain` on a 1,000-clip speaker-held-out test split moves by several
points from seed to seed, so judge a student or a loss setting on this, not on one run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def distill_run(recipe: Path, teacher: Path, seed: int, run_dir: Path, overrides: list[str]) -> dict:
    sets = [f"teacher.checkpoint={teacher}", f"distill.seed={seed}", "threads=1", "distill.baseline=true", *overrides]
    cmd = [sys.executable, "-m", "edgekd", "run", str(recipe), "--until", "distill", "--run-dir", str(run_dir), "-q"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"seed {seed} failed: {done.stderr.strip().splitlines()[-1] if done.stderr else done.returncode}")
    m = json.loads((run_dir / "manifest.json").read_text())["stages"]["distill"]["metrics"]
    return {"seed": seed, "student": m["accuracy"], "baseline": m["baseline_accuracy"], "gain": m["kd_gain"],
            "student_val": m.get("val_accuracy"), "baseline_val": m.get("baseline_val_accuracy"),
            "teacher": m["teacher_accuracy"], "wall_s": round(time.perf_counter() - t0, 1)}


def t95(df: int) -> float:
    """Two-sided 95% Student-t quantile (scipy where present, else the table for small df)."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:
        table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
        return table.get(df, 1.96 + 2.5 / df)


def summarize(rows: list[dict]) -> dict:
    out = {"seeds": len(rows)}
    for key in ("student", "baseline", "gain", "student_val", "baseline_val"):
        xs = [r[key] for r in rows if r.get(key) is not None]
        if not xs:
            continue
        mean = statistics.fmean(xs)
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        half = t95(len(xs) - 1) * sd / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")
        out[key] = {"mean": round(mean, 4), "std": round(sd, 4), "ci95": [round(mean - half, 4), round(mean + half, 4)],
                    "min": min(xs), "max": max(xs)}
    out["gain_positive"] = sum(r["gain"] > 0 for r in rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--teacher", type=Path, required=True, help="A trained teacher directory (run/teacher).")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--jobs", type=int, default=2, help="Runs at once, one thread each.")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="Extra recipe override.")
    ap.add_argument("--out", type=Path, default=None, help="Parent of the per-seed run directories.")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    out = (a.out or ROOT / "runs" / f"kd-seeds-{a.recipe.stem}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(a.jobs) as pool:
        rows = list(pool.map(lambda s: distill_run(a.recipe.resolve(), a.teacher.resolve(), s, out / f"seed-{s}",
                                                   a.overrides), seeds))
    for r in rows:
        val = f"  (val {r['student_val']:.3f} / {r['baseline_val']:.3f})" if r.get("student_val") is not None else ""
        print(f"seed {r['seed']}: student {r['student']:.3f}  baseline {r['baseline']:.3f}  "
              f"gain {r['gain']:+.3f}{val}  ({r['wall_s']} s)")
    s = summarize(rows)
    g = s["gain"]
    print(f"{a.recipe.name} {' '.join(a.overrides)}: student {s['student']['mean']:.4f} ± {s['student']['std']:.4f}, "
          f"baseline {s['baseline']['mean']:.4f} ± {s['baseline']['std']:.4f}, KD gain {g['mean']:+.4f} "
          f"(95% CI {g['ci95'][0]:+.4f} … {g['ci95'][1]:+.4f}; positive in {s['gain_positive']}/{s['seeds']} seeds)"
          + (f"; val: student {s['student_val']['mean']:.4f}, baseline {s['baseline_val']['mean']:.4f}"
             if "student_val" in s and "baseline_val" in s else ""))
    (out / "kd_seeds.json").write_text(json.dumps({"recipe": str(a.recipe), "overrides": a.overrides,
                                                    "runs": rows, "summary": s}, indent=2) + "\n")


if __name__ == "__main__":
    main()
