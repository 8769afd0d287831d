"""The measurement loop: interleaved rounds, synchronised clocks, a statistical stopping rule.

Targets run in interleaved rounds, A B C A B C ..., rather than A A A ... B B B: a shared machine's
load, thermal state and clock governor drift over seconds, and interleaving spreads that drift over
every target alike, so ratios between targets (student vs teacher, INT8 vs FP32) stay honest even
when absolute numbers move. Within a round each target runs a short block of calls (`block`, 10 by
default) after one untimed call: a model that runs right after another finds its weights evicted
from the caches (measured: a 35k-parameter student's batch-1 call took 0.48 ms right after an
11 ms PyTorch teacher, 0.2 ms warm), and a device runs one model back to back, warm. `block=1`
times every call of strict A B C rounds, caches as the other targets left them.

Measurement stops when every target has both the minimum duration/sample count and tight enough
confidence intervals on p90 and p99 (stats.ci_tight), or at max_seconds, whichever comes first; a
result that hit the time cap says so (`converged: False`), and gates see its wide intervals.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgekd.benchmark import sysinfo
from edgekd.benchmark.stats import ci_tight


@dataclass
class Target:
    """One thing to time: `model` on `backend` at `batch`, as a zero-argument `call` that runs one
    inference on inputs prepared beforehand (so input preparation is never timed)."""

    model: str
    backend: str
    batch: int
    call: Callable[[], object]
    device: str = "cpu"
    threads: int = 1
    sync: Callable[[], None] | None = None  # waits for queued device work (CUDA); None on CPU
    flops: float | None = None  # per inference, i.e. per-sample FLOPs x batch
    accuracy: Callable[[], float | None] | None = None  # test-split accuracy through this backend
    meta: dict = field(default_factory=dict)  # precision, role, file, rss when loaded, ...


@dataclass
class Result:
    model: str
    backend: str
    device: str
    batch: int
    threads: int
    latencies_ms: np.ndarray
    converged: bool = False
    stop: str = ""  # "ci" (the stopping rule was met), "max_seconds", or "failed"
    accuracy: float | None = None
    flops: float | None = None
    peak_rss_mb: float | None = None
    gpu_mem_mb: float | None = None
    skipped: str | None = None
    meta: dict = field(default_factory=dict)


def skipped_result(model: str, backend: str, batch: int, reason: str, *, device: str = "cpu", threads: int = 1,
                   meta: dict | None = None) -> Result:
    """A result row that says why this model/backend was not measured (no such provider, ...)."""
    return Result(model, backend, device, batch, threads, np.empty(0), stop="failed", skipped=reason,
                  meta=dict(meta or {}))


def _describe(e: BaseException) -> str:
    text = str(e).splitlines()[0][:300] if str(e) else ""
    return f"failed: {type(e).__name__}: {text}".rstrip(": ")


def measure(targets: list[Target], *, warmup_count: int = 10, warmup_seconds: float = 1.0, min_seconds: float = 5.0,
            max_seconds: float = 30.0, min_samples: int = 100, ci_rel_width: float = 0.10, confidence: float = 0.95,
            block: int = 1, clock: Callable[[], float] = time.perf_counter, sync: Callable[[], None] | None = None,
            memory: bool = True) -> list[Result]:
    """Time `targets` interleaved; one Result per target, in the order given.

    Warm-up runs interleaved rounds until both `warmup_count` rounds and `warmup_seconds` have
    passed (first calls pay allocation, graph optimisation, kernel selection). Then every call is
    timed alone: clock, call, synchronise (the target's `sync`, else `sync`), clock. A target that
    raises is dropped and reported as skipped with the error; the others carry on. With `block` > 1
    every round gives each target one untimed call, then `block` timed ones, so sample j of round r
    of two targets are still neighbours in time (the gate pairs them)."""
    if min_seconds > max_seconds:
        raise ValueError(f"min_seconds {min_seconds} > max_seconds {max_seconds}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    rewarm = 1 if block > 1 else 0
    active = list(range(len(targets)))
    failed: dict[int, str] = {}
    syncs = [t.sync or sync for t in targets]

    def drop(i: int, e: BaseException) -> None:
        failed[i] = _describe(e)
        active.remove(i)

    start, rounds = clock(), 0
    while active and (rounds < warmup_count or clock() - start < warmup_seconds):
        for i in list(active):
            try:
                targets[i].call()
                if syncs[i]:
                    syncs[i]()
            except Exception as e:  # noqa: BLE001 -- one broken backend must not end the whole bench
                drop(i, e)
        rounds += 1
        if clock() - start >= max_seconds:  # a warm-up that never ends is a hung target, not a warm one
            break

    lat: list[list[float]] = [[] for _ in targets]
    start, rounds, next_check, stop = clock(), 0, max(1, min_samples), "max_seconds"
    while active:
        for i in list(active):
            call, done = targets[i].call, syncs[i]
            times = []
            try:
                for k in range(rewarm + block):
                    t0 = clock()
                    call()
                    if done:
                        done()
                    t1 = clock()
                    if k >= rewarm:
                        times.append(t1 - t0)
            except Exception as e:  # noqa: BLE001
                drop(i, e)
                continue
            lat[i].extend(times)
        rounds += 1
        elapsed = clock() - start
        if elapsed >= max_seconds:
            break
        if elapsed >= min_seconds and rounds * block >= next_check:
            if all(ci_tight(lat[i], p, ci_rel_width, confidence) for i in active for p in (0.90, 0.99)):
                stop = "ci"
                break
            # sorting every sample each round would cost O(n^2); checking every ~10% more rounds keeps
            # the overshoot past the point of convergence small and the overhead amortised O(1)
            next_check = max((rounds + 1) * block, int(rounds * block * 1.1))

    accuracy: dict[int, float | None] = {}
    for i in active:  # after timing: scoring the test split must not heat or load the timed loop
        if targets[i].accuracy is not None:
            try:
                accuracy[i] = targets[i].accuracy()
            except Exception as e:  # noqa: BLE001 -- the latency is still worth reporting
                targets[i].meta["accuracy_error"] = _describe(e)
    peak = sysinfo.peak_rss_mb() if memory else None
    gpu_mb = sysinfo.gpu_memory_mb()[0] if memory else None
    results = []
    for i, t in enumerate(targets):
        r = Result(t.model, t.backend, t.device, t.batch, t.threads, np.asarray(lat[i], dtype=np.float64) * 1000.0,
                   converged=stop == "ci" and i in active, stop=stop if i in active else "failed",
                   accuracy=accuracy.get(i), flops=t.flops, peak_rss_mb=peak,
                   gpu_mem_mb=gpu_mb if t.device != "cpu" else None,
                   skipped=failed.get(i), meta=dict(t.meta))
        if r.skipped:
            r.latencies_ms = np.empty(0)
        results.append(r)
    return results
