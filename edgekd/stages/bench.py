"""The bench stage of `edgekd run`: `edgekd bench` with the recipe's bench section."""
from __future__ import annotations

from edgekd.rundir import RunDir


def run_bench_stage(run: RunDir, data_root=None, resume: bool = False, progress=None) -> dict:
    from edgekd.benchmark.bench import run_bench

    b = run.recipe.bench
    run_bench(run.path, batches=b.batches, threads=b.threads, backends=b.backends, data_root=data_root,
              min_seconds=b.min_seconds, max_seconds=b.max_seconds, block=b.block)
    return RunDir.open(run.path).stage("bench")["metrics"]
