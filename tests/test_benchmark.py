"""The benchmark: statistics by hand, the interleaved harness on a fake clock, the bench JSON,
gates (pass / fail / inconclusive), the report. No test asserts a real timing."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BLOCK_TRAINING

from edgekd.benchmark import stats
from edgekd.benchmark.bench import write_outputs
from edgekd.benchmark.gate import FAIL, INCONCLUSIVE, PASS, evaluate, gate, load_budgets
from edgekd.benchmark.harness import Target, measure
from edgekd.benchmark.results import COLUMNS, build_bench, load_bench, pareto_front, to_markdown
from edgekd.errors import UsageError
from edgekd.report import render_report

ROOT = Path(__file__).resolve().parents[1]
FAST = {"warmup_count": 2, "warmup_seconds": 0.0, "min_samples": 50, "memory": False}


class FakeClock:
    """time.perf_counter stand-in: only the fake runners move it, so timings are exact and instant."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def advance(self, seconds):
        self.t += seconds


def sleeper(clock, ms, *, jitter=0.0, rng=None, log=None, name=None):
    """A fake runner's call: "takes" ms (times a random factor when jitter > 0)."""
    def call():
        if log is not None:
            log.append(name)
        factor = 1.0 if not jitter else float(np.exp(rng.normal(0.0, jitter)))
        clock.advance(ms * factor / 1000)
    return call


# --------------------------------------------------------------------------- statistics


def test_summary_matches_hand_computed_percentiles():
    s = stats.summarize(list(range(1, 11)), batch=2)
    # numpy "linear": position (n-1)q between the sorted values
    assert s["p50_ms"] == pytest.approx(5.5)
    assert s["p90_ms"] == pytest.approx(9.1)   # 8.1 -> 9 + 0.1 * (10 - 9)
    assert s["p95_ms"] == pytest.approx(9.55)  # 8.55
    assert s["p99_ms"] == pytest.approx(9.91)  # 8.91
    assert s["mean_ms"] == pytest.approx(5.5)
    assert s["std_ms"] == pytest.approx(math.sqrt(82.5 / 9))  # sample std, ddof=1
    assert s["throughput"] == pytest.approx(2 * 1000 / 5.5)
    assert s["samples"] == 10


def _cdf(n, p, k):
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1)) if k >= 0 else 0.0


@pytest.mark.parametrize("n,p,conf", [(10, 0.5, 0.90), (20, 0.9, 0.95), (50, 0.9, 0.95), (400, 0.99, 0.95)])
def test_order_statistic_indices_match_exact_binomial(n, p, conf):
    tail = (1 - conf) / 2
    # by the definition: the largest l with P(K <= l-1) <= tail, the smallest u with P(K <= u-1) >= 1 - tail
    l_hand = max([k for k in range(1, n + 1) if _cdf(n, p, k - 1) <= tail], default=None)
    u_hand = min([k for k in range(1, n + 1) if _cdf(n, p, k - 1) >= 1 - tail], default=None)
    assert stats.quantile_ci_indices(n, p, conf) == (l_hand, u_hand)
    if l_hand and u_hand:
        assert _cdf(n, p, u_hand - 1) - _cdf(n, p, l_hand - 1) >= conf  # the coverage it promises


def test_small_case_by_hand_and_missing_upper_bound():
    # n=10, p=0.5: F(1) = 11/1024 <= 0.05 < F(2) = 56/1024, F(7) = 968/1024 < 0.95 <= F(8) = 1013/1024
    assert stats.quantile_ci_indices(10, 0.5, 0.90) == (2, 9)
    assert stats.quantile_ci(np.arange(10, 0, -1), 0.5, 0.90) == (2.0, 9.0)  # unsorted input is sorted
    # p99 at 95%: the maximum bounds q_0.99 only once 0.99^n <= 0.025, i.e. n >= 368 (MLPerf's early-stopping idea)
    assert stats.quantile_ci_indices(367, 0.99)[1] is None
    assert stats.quantile_ci_indices(368, 0.99)[1] == 368
    assert not stats.ci_tight(np.ones(367), 0.99, 0.5)  # constant, but too few samples for p99
    assert stats.ci_tight(np.ones(368), 0.99, 0.01)
    assert not stats.ci_tight(np.linspace(1, 2, 100), 0.99, 10.0)  # no upper bound yet


def test_ratio_interval_by_hand():
    b = np.arange(1, 101, dtype=float)
    a = 2 * b
    value, lo, hi = stats.ratio_ci(a, b, 0.5, 0.95)
    lo_i, hi_i = stats.quantile_ci_indices(100, 0.5, 0.975)  # each marginal at 1 - alpha/2
    assert value == pytest.approx(2.0)
    assert (lo, hi) == (pytest.approx(2 * lo_i / hi_i), pytest.approx(2 * hi_i / lo_i))
    assert lo < 2 < hi


def test_paired_ratio_interval_by_hand():
    rng = np.random.default_rng(0)
    drift = np.exp(rng.normal(0, 0.5, 200))  # one factor per round, shared by both calls of the round
    value, lo, hi = stats.paired_ratio_ci(1.2 * drift, drift)
    assert (value, lo, hi) == (pytest.approx(1.2), pytest.approx(1.2), pytest.approx(1.2))
    _, ulo, uhi = stats.ratio_ci(1.2 * drift, drift)  # unpaired, the drift stays in both marginals
    assert ulo < 1.1 and uhi > 1.3
    r = rng.permutation(np.arange(1, 101, dtype=float))
    value, lo, hi = stats.paired_ratio_ci(r, np.ones(100))
    lo_i, hi_i = stats.quantile_ci_indices(100, 0.5, 0.95)
    assert (value, lo, hi) == (50.5, lo_i, hi_i)  # the order statistics of the ratios themselves
    with pytest.raises(ValueError, match="same non-zero length"):
        stats.paired_ratio_ci([1.0, 2.0], [1.0])


# --------------------------------------------------------------------------- harness


def test_blocks_rewarm_each_target_once_per_round_and_keep_rounds_aligned():
    clock, log = FakeClock(), []
    targets = [Target(n, "onnxruntime-cpu", 1, sleeper(clock, 1.0, log=log, name=n)) for n in "AB"]
    warm = FAST["warmup_count"]  # warm-up rounds: one call per target each
    results = measure(targets, clock=clock, min_seconds=0.05, max_seconds=0.2, block=3, **FAST)
    timed_rounds = (len(log) - 2 * warm) // 8
    assert log[2 * warm:] == (["A"] * 4 + ["B"] * 4) * timed_rounds  # 1 untimed + 3 timed each
    assert [len(r.latencies_ms) for r in results] == [3 * timed_rounds] * 2  # the untimed call is not kept
    with pytest.raises(ValueError, match="block"):
        measure(targets, clock=clock, block=0, **FAST)


def test_targets_are_interleaved_and_synchronised_before_the_clock():
    clock, log = FakeClock(), []
    targets = [Target(n, "onnxruntime-cpu", 1, sleeper(clock, 1.0, log=log, name=n)) for n in "ABC"]
    results = measure(targets, clock=clock, min_seconds=0.05, max_seconds=0.2, **FAST)
    assert log == ["A", "B", "C"] * (len(log) // 3) and len(log) % 3 == 0
    assert len({len(r.latencies_ms) for r in results}) == 1  # one call per target per round

    events = []

    def clock_read():
        events.append("clock")
        return clock()

    def call():
        events.append("call")
        clock.advance(0.001)

    measure([Target("A", "torch-cuda", 1, call, device="cuda", sync=lambda: events.append("sync"))],
            clock=clock_read, min_seconds=0.0, max_seconds=0.01, warmup_count=0, warmup_seconds=0.0, min_samples=1,
            memory=False)
    calls = [i for i, e in enumerate(events) if e == "call"]
    assert calls
    for i in calls:  # every timed call: read the clock, run, wait for the device, read the clock
        assert events[i - 1 : i + 3] == ["clock", "call", "sync", "clock"]


def test_stops_once_min_seconds_passed_and_intervals_are_tight():
    clock = FakeClock()
    (r,) = measure([Target("A", "onnxruntime-cpu", 1, sleeper(clock, 1.0))], clock=clock,
                   min_seconds=1.0, max_seconds=10.0, ci_rel_width=0.05, **{**FAST, "min_samples": 400})
    assert r.stop == "ci" and r.converged
    assert 1.0 <= r.latencies_ms.sum() / 1000 <= 1.2  # stops soon after min_seconds (checks every ~10% rounds)
    assert len(r.latencies_ms) >= 400 and np.allclose(r.latencies_ms, 1.0)


def test_stops_at_max_seconds_when_too_noisy():
    clock, rng = FakeClock(), np.random.default_rng(0)
    (r,) = measure([Target("A", "onnxruntime-cpu", 1, sleeper(clock, 1.0, jitter=1.0, rng=rng))], clock=clock,
                   min_seconds=0.1, max_seconds=0.5, ci_rel_width=0.01, **FAST)
    assert r.stop == "max_seconds" and not r.converged
    assert 0.5 <= r.latencies_ms.sum() / 1000 < 0.6


def test_a_failing_target_is_skipped_and_the_others_go_on():
    clock = FakeClock()
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("engine lost")
        clock.advance(0.001)

    ok, bad = measure([Target("A", "onnxruntime-cpu", 1, sleeper(clock, 1.0)), Target("B", "tensorrt", 1, flaky)],
                      clock=clock, min_seconds=0.05, max_seconds=0.1, **FAST)
    assert ok.skipped is None and len(ok.latencies_ms) > 0
    assert bad.skipped == "failed: RuntimeError: engine lost" and bad.latencies_ms.size == 0


# --------------------------------------------------------------------------- bench JSON, Markdown, plots


def fake_bench(student_ms=1.0, teacher_ms=10.0, *, jitter=0.02, seed=0, max_seconds=6.0, accuracy=0.95):
    clock, rng = FakeClock(), np.random.default_rng(seed)
    targets = [Target("student_int8_cpu", "onnxruntime-cpu", 1, sleeper(clock, student_ms, jitter=jitter, rng=rng),
                      flops=1e6, accuracy=lambda: accuracy, meta={"role": "student"}),
               Target("student_fp32", "onnxruntime-cpu", 1, sleeper(clock, 1.5 * student_ms, jitter=jitter, rng=rng),
                      flops=1e6, accuracy=lambda: accuracy + 0.01),
               Target("teacher_fp32", "onnxruntime-cpu", 1, sleeper(clock, teacher_ms, jitter=jitter, rng=rng),
                      flops=4e7, accuracy=lambda: 0.91)]
    results = measure(targets, clock=clock, min_seconds=0.5, max_seconds=max_seconds, ci_rel_width=0.05,
                      **{**FAST, "min_samples": 100})
    for r in results:
        r.peak_rss_mb = 123.4
    return build_bench(results, env={"cpu_model": "fake", "threads": 1}, peak={"cpu": 50.0},
                       source={"kind": "bundle", "path": "x", "name": "fake"}, settings={})


def test_bench_json_markdown_and_plots(tmp_path):
    bench = fake_bench()
    r = bench["results"][0]
    for key in ("model", "backend", "device", "batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput",
                "accuracy", "peak_rss_mb", "p95_ms", "std_ms", "samples", "ci", "flops", "gflops_per_s", "latencies_ms"):
        assert key in r, key
    assert r["ci"]["p99"][0] <= r["p99_ms"] <= r["ci"]["p99"][1]
    assert r["gflops_per_s"] == pytest.approx(1e6 / (r["mean_ms"] / 1000) / 1e9)
    speed = next(q for q in bench["ratios"] if q["name"] == "student_int8_cpu vs teacher_fp32 (onnxruntime-cpu, batch 1)")
    assert speed["ci"][0] < speed["value"] < speed["ci"][1] and 9 < speed["value"] < 11
    assert any(q["kind"] == "int8_vs_fp32" and 1.4 < q["value"] < 1.6 for q in bench["ratios"])

    md = to_markdown(bench)
    assert "| student_int8_cpu vs teacher_fp32 (onnxruntime-cpu, batch 1) |" in md and "paired rounds |" in md
    assert "- student_int8_cpu on onnxruntime-cpu, batch 1: INT8 pays, 1.5" in md  # the fake INT8 is 1.5x faster
    header = next(line for line in md.splitlines() if line.startswith("| model"))
    assert all(c in header for c in COLUMNS)
    files = write_outputs(bench, tmp_path / "out")
    for key in ("latency_accuracy", "latency_distribution"):
        assert files[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_bench(files["json"])["results"][0]["latencies_ms"] == r["latencies_ms"]
    (tmp_path / "bad.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(UsageError, match="not an edgekd bench JSON"):
        load_bench(tmp_path / "bad.json")


def test_int8_verdicts_say_plainly_whether_int8_pays():
    from edgekd.benchmark.results import int8_verdicts

    q = {"kind": "int8_vs_fp32", "model": "student_int8_cpu", "backend": "onnxruntime-cpu", "batch": 1}
    got = int8_verdicts([{**q, "value": 0.5, "ci": [0.45, 0.55]}, {**q, "batch": 32, "value": 1.02, "ci": [0.97, 1.08]},
                         {"kind": "student_vs_teacher", "value": 9.0, "ci": [8, 10]}])
    assert got == ["student_int8_cpu on onnxruntime-cpu, batch 1: INT8 does not pay, FP32 is 2.00x faster (CI 1.82-2.22)",
                   "student_int8_cpu on onnxruntime-cpu, batch 32: no difference the interval can tell (1.02x, CI 0.97-1.08)"]


def test_bench_plots_label_every_point_without_overlapping_texts(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from edgekd.benchmark import plots
    from edgekd.plots import text_overlaps

    bench = fake_bench()
    for r in bench["results"]:  # two students a hair apart, as on avdigits: their labels used to collide
        if r["model"] == "student_fp32":
            r["p50_ms"], r["accuracy"] = 1.01, 0.95
    bench["defaults"] = {"onnxruntime-cpu": {"model": "student_int8_cpu"}}
    seen = {}
    real_save = plots.save

    def checking_save(fig, path):
        seen[path.name] = text_overlaps(fig)
        return real_save(fig, path)

    monkeypatch.setattr(plots, "save", checking_save)
    plots.bench_plots(bench, tmp_path)
    assert set(seen) == {"latency_accuracy.png", "latency_distribution.png"}
    assert seen == {name: [] for name in seen}, seen


def test_pareto_front():
    pts = [(1.0, 0.90), (2.0, 0.95), (3.0, 0.93), (0.5, 0.80), (2.5, 0.97)]
    assert pareto_front(pts) == [(0.5, 0.80), (1.0, 0.90), (2.0, 0.95), (2.5, 0.97)]


# --------------------------------------------------------------------------- gates


def budgets(tmp_path, text):
    path = tmp_path / "budget.yaml"
    path.write_text(text)
    return load_budgets(path)


REGRESSION = """budgets:
  - {name: no regression, kind: regression, model: student_int8_cpu, backend: onnxruntime-cpu, batch: 1,
     metric: p50_ms, max_slowdown: 0.10}
"""


def test_gate_passes_unchanged_and_fails_a_slower_student(tmp_path):
    rules = budgets(tmp_path, REGRESSION)
    baseline = fake_bench(seed=1)
    code, lines = evaluate(fake_bench(seed=2), rules, baseline)
    assert code == PASS, lines
    code, lines = evaluate(fake_bench(student_ms=1.2, seed=3), rules, baseline)  # 20% slower
    assert code == FAIL, lines
    assert lines[0].startswith("FAIL") and "no regression" in lines[0] and "<= 1.1x" in lines[0] and "95% CI" in lines[0]


FLOOR = """budgets:
  - {name: beats a linear model, kind: baseline_floor, model: student_int8_cpu, backend: onnxruntime-cpu, batch: 1}
"""


def test_the_baseline_floor_fails_a_student_a_linear_model_beats(tmp_path):
    rules = budgets(tmp_path, FLOOR)
    bench = fake_bench(accuracy=0.92)
    bench["baselines"] = {"text": {"val_accuracy": 0.90, "accuracy": 0.935}, "image": {"val_accuracy": 0.4, "accuracy": 0.45}}
    code, lines = evaluate(bench, rules)
    assert code == FAIL and "best baseline (text, linear) 93.5%" in lines[0] and "a linear model beats" in lines[0]
    bench["baselines"]["text"]["accuracy"] = 0.91
    assert evaluate(bench, rules)[0] == PASS
    del bench["baselines"]  # a bundle exported without baselines: fails, naming the fix
    code, lines = evaluate(bench, rules)
    assert code == FAIL and "records no baselines" in lines[0]


def drifting_bench(new_ms: float, old_ms: float = 1.0, seed: int = 0):
    """`edgekd bench NEW --baseline OLD` on a machine whose speed swings round to round."""
    clock, rng = FakeClock(), np.random.default_rng(seed)
    state = {"drift": 1.0}

    def call(ms, first=False):
        def run():
            if first:
                state["drift"] = float(np.exp(rng.normal(0.0, 0.6)))
            clock.advance(ms * state["drift"] * float(np.exp(rng.normal(0.0, 0.01))) / 1000)
        return run

    targets = [Target("student_int8_cpu", "onnxruntime-cpu", 1, call(new_ms, first=True)),
               Target("baseline/student_int8_cpu", "onnxruntime-cpu", 1, call(old_ms))]
    results = measure(targets, clock=clock, min_seconds=0.3, max_seconds=0.6, ci_rel_width=0.05, **FAST)
    return build_bench(results, env={"cpu_model": "fake", "threads": 1}, peak={"cpu": 50.0},
                       source={"kind": "bundle", "path": "x", "name": "fake"}, settings={})


def test_gate_pairs_the_rounds_of_a_same_run_baseline(tmp_path):
    """Drift shared by a round cancels in the per-round ratios: a decision where the unpaired
    interval (each model's spread on its own) could only say inconclusive."""
    rules = budgets(tmp_path, REGRESSION)
    code, lines = evaluate(drifting_bench(1.0, seed=1), rules)
    assert code == PASS and "median of per-round ratios" in lines[0], lines
    code, lines = evaluate(drifting_bench(1.2, seed=2), rules)
    assert code == FAIL, lines
    bench = drifting_bench(1.0, seed=1)
    recs = {r["model"]: r["latencies_ms"] for r in bench["results"]}
    _, lo, hi = stats.ratio_ci(recs["student_int8_cpu"], recs["baseline/student_int8_cpu"])
    assert hi > 1.1  # unpaired, the same data would have been inconclusive


def test_gate_is_inconclusive_when_the_spread_is_wide(tmp_path):
    rules = budgets(tmp_path, REGRESSION)
    noisy = fake_bench(student_ms=1.1, jitter=1.0, seed=4, max_seconds=0.6)  # random delays: a wide interval
    code, lines = evaluate(noisy, rules, fake_bench(seed=1))
    assert code == INCONCLUSIVE, lines
    assert lines[0].startswith("INCONCLUSIVE") and "re-run" in lines[-1]


def test_absolute_and_speedup_budgets(tmp_path):
    bench = fake_bench()
    rules = budgets(tmp_path, """confidence: 0.99
budgets:
  - {name: latency, model: student_int8_cpu, backend: onnxruntime-cpu, batch: 1, metric: p95_ms, max: 2.0}
  - {name: accuracy, model: student_int8_cpu, backend: onnxruntime-cpu, batch: 1, metric: accuracy, min: 0.93}
  - {name: throughput, model: student_int8_cpu, backend: onnxruntime-cpu, batch: 1, metric: throughput, min: 500}
  - {name: vs teacher, kind: speedup, model: student_int8_cpu, baseline_model: teacher_fp32,
     backend: onnxruntime-cpu, batch: 1, min: 5}
  - {name: engine, model: student_int8_qdq, backend: tensorrt, batch: 1, metric: p50_ms, max: 1, optional: true}
""")
    code, lines = evaluate(bench, rules)
    assert code == PASS, lines
    assert "99% CI" in lines[0] and lines[4].startswith("SKIP") and "1 skipped" in lines[-1]

    p50 = next(r["p50_ms"] for r in bench["results"] if r["model"] == "student_int8_cpu")
    failing = budgets(tmp_path, f"""budgets:
  - {{name: latency, model: student_int8_cpu, backend: onnxruntime-cpu, batch: 1, metric: p95_ms, max: 0.5}}
  - {{name: accuracy, model: student_int8_cpu, backend: onnxruntime-cpu, batch: 1, metric: accuracy, min: 0.99}}
  - {{name: vs teacher, kind: speedup, model: student_int8_cpu, baseline_model: teacher_fp32,
     backend: onnxruntime-cpu, batch: 1, min: 20}}
  - {{name: missing, model: student_int8_cpu, backend: onnxruntime-cpu, batch: 8, metric: p50_ms, max: 1}}
  - {{name: on the edge, model: student_int8_cpu, backend: onnxruntime-cpu, batch: 1, metric: p50_ms, max: {p50}}}
""")
    code, lines = evaluate(bench, failing)
    assert code == FAIL  # fail wins over the inconclusive last budget
    assert [ln.split()[0] for ln in lines[:-1]] == ["FAIL", "FAIL", "FAIL", "FAIL", "INCONCLUSIVE"]
    assert "not measured" in lines[3]


def test_budget_file_errors_name_the_key(tmp_path):
    with pytest.raises(UsageError, match=r"budgets\[0\] \(lat\): unknown key 'maxx'; did you mean 'max'\?"):
        budgets(tmp_path, "budgets:\n  - {name: lat, model: m, backend: b, batch: 1, metric: p95_ms, maxx: 2}\n")
    with pytest.raises(UsageError, match="unknown kind 'speedupp'; did you mean 'speedup'"):
        budgets(tmp_path, "budgets:\n  - {name: s, kind: speedupp, model: m, backend: b, batch: 1, min: 2}\n")
    with pytest.raises(UsageError, match="exactly one of max or min"):
        budgets(tmp_path, "budgets:\n  - {name: s, model: m, backend: b, batch: 1, metric: p50_ms}\n")
    with pytest.raises(UsageError, match="unknown key 'budget'"):
        budgets(tmp_path, "budget: []\n")
    with pytest.raises(UsageError, match="--baseline"):
        evaluate(fake_bench(max_seconds=0.6), budgets(tmp_path, REGRESSION))


def test_shipped_budget_files_and_gate_from_files(tmp_path):
    _, rules = load_budgets(ROOT / "bench" / "budgets" / "avdigits-cpu.yaml")
    _, regression = load_budgets(ROOT / "bench" / "budgets" / "avdigits-cpu-regression.yaml")
    assert {b.kind for b in rules} == {"absolute", "speedup"} and {b.kind for b in regression} == {"regression"}
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(fake_bench(student_ms=0.3, seed=1)))
    new.write_text(json.dumps(fake_bench(student_ms=0.3, seed=2)))
    code, lines = gate(new, ROOT / "bench" / "budgets" / "avdigits-cpu.yaml")  # CI's gate needs no baseline
    assert code == PASS, lines
    assert len(lines) == len(rules) + 1
    code, lines = gate(new, ROOT / "bench" / "budgets" / "avdigits-cpu-regression.yaml", old)
    assert code == PASS, lines


# --------------------------------------------------------------------------- report


def recorded_run(tmp_path, stages=("teacher", "distill", "qat", "export", "build", "bench")):
    from edgekd.recipe import recipe_from_dict
    from edgekd.rundir import RunDir, atomic_write_json, atomic_write_text

    run = RunDir.create(tmp_path / "run", recipe_from_dict({"name": "r", "data": {"name": "avdigits"}}))

    def put(stage, name, text="x"):
        return atomic_write_text(run.stage_dir(stage) / name, text)

    if "teacher" in stages:
        run.record("teacher", started=0.0, outputs={"weights": put("teacher", "model.safetensors", "t" * 5000)},
                   metrics={"accuracy": 0.909, "params": 873492, "flops": 43852800})
    if "distill" in stages:
        run.record("distill", started=0.0, outputs={"weights": put("distill", "model.safetensors")},
                   metrics={"accuracy": 0.949, "params": 34908, "flops": 1312528, "baseline_accuracy": 0.93})
    if "qat" in stages:
        budget = [{"stage": "teacher (FP32)", "accuracy": 0.909, "delta": None},
                  {"stage": "student FP32", "accuracy": 0.949, "delta": 0.04},
                  {"stage": "student INT8 PTQ (max, 2 batches)", "accuracy": 0.94, "delta": -0.009},
                  {"stage": "student INT8 QAD", "accuracy": 0.946, "delta": 0.006}]
        run.record("qat", started=0.0, outputs={"model": put("qat", "student.pth")},
                   metrics={"fp32_accuracy": 0.949, "ptq_accuracy": 0.94, "accuracy": 0.946, "method": "qad",
                            "budget": budget})
    if "export" in stages:
        parity = {"student_fp32": {"reference": "pytorch fp32", "tolerance": 1e-4, "batches": {"1": {}, "32": {}},
                                   "max_abs_diff": 2e-6, "top1_agreement": 1.0, "test_top1_agreement": 1.0,
                                   "accuracy": 0.949},
                  "student_int8_cpu": {"reference": "pytorch fp32", "tolerance": float("inf"), "batches": {"1": {}},
                                       "max_abs_diff": 0.2, "top1_agreement": 1.0, "test_top1_agreement": 0.98,
                                       "accuracy": 0.945}}
        outputs = {"student_fp32": put("export", "student_fp32.onnx"), "student_int8_cpu": put("export", "s.onnx"),
                   "parity": atomic_write_json(run.stage_dir("export") / "parity.json", parity)}
        run.record("export", started=0.0, outputs=outputs, metrics={
            k: {"max_abs_diff": v["max_abs_diff"], "top1_agreement": 1.0, "accuracy": v["accuracy"], "bytes": 1}
            for k, v in parity.items()} | {"opset": 17})
    if "build" in stages:
        run.record("build", started=0.0, outputs={"trtexec": put("build", "trtexec.sh")}, status="skipped",
                   metrics={"target": "orin", "skipped": "the tensorrt Python package is not installed"})
    if "bench" in stages:
        files = write_outputs(fake_bench(max_seconds=0.6), run.path / "bench" / "20250101-000000")
        run.record("bench", started=0.0, outputs=files, metrics={"bench_json": "bench/20250101-000000/bench.json"})
    return run


def test_report_renders_from_a_recorded_run_directory(tmp_path):
    run = recorded_run(tmp_path)
    text = render_report(run.path).read_text()
    assert (run.path / "report" / "report.md").is_file()
    for needle in ("# edgekd report: r", "## Recipe", "## Accuracy budget", "student INT8 QAD", "94.6%",
                   "ONNX student_int8_cpu (onnxruntime)", "not built: the tensorrt Python package",
                   "## Parity ladder", "pytorch fp32", "## Latency", "p50_ms", "peak_rss_mb",
                   "student_int8_cpu vs teacher_fp32", "](../bench/20250101-000000/latency_accuracy.png)",
                   "## Artifacts", "4.9 KiB"):
        assert needle in text, needle
    assert "-0.4 pt" in text  # ONNX CPU INT8 (94.5%) vs the FP32 student (94.9%)


def test_report_shows_the_absolute_bound_a_relative_rung_was_held_to(tmp_path):
    """Measured on main: `max abs diff 0.242 | tolerance 0.03` for a QDQ rung that passed (its
    tolerance is relative to the largest logit). The table now shows the bound in logit units."""
    run = recorded_run(tmp_path)
    parity = json.loads((run.path / "export" / "parity.json").read_text())
    parity["student_int8_qdq"] = {"reference": "pytorch fake-quant", "tolerance": 0.03, "relative": True,
                                  "batches": {"1": {"max_abs_diff": {"logits": 0.1}, "bound": 0.3},
                                              "32": {"max_abs_diff": {"logits": 0.242}, "bound": 0.45}},
                                  "max_abs_diff": 0.242, "bound": 0.45, "top1_agreement": 1.0, "accuracy": 0.94}
    old = {k: v for k, v in parity["student_int8_qdq"].items() if k != "bound"}  # written before bounds were
    old["batches"] = {"32": {"max_abs_diff": {"logits": 0.242}, "scale": {"logits": 15.0}}}
    parity["old_qdq"] = old
    (run.path / "export" / "parity.json").write_text(json.dumps(parity))
    lines = render_report(run.path).read_text().split("## Parity ladder", 1)[1].splitlines()
    row = next(x for x in lines if x.startswith("| student_int8_qdq |"))
    assert "| 0.242 | 0.45 (0.03 × max abs logit) |" in row
    assert "| 0.242 | 0.45 (0.03 × max abs logit) |" in next(x for x in lines if x.startswith("| old_qdq |"))
    assert "| 0.0001 |" in next(x for x in lines if x.startswith("| student_fp32 |"))


def test_report_recomputes_speedups_from_the_recorded_calls(tmp_path):
    run = recorded_run(tmp_path)
    path = run.path / "bench" / "20250101-000000" / "bench.json"
    bench = json.loads(path.read_text())
    for q in bench["ratios"]:  # as a bench written before the paired ratios (or tampered with) has them
        q.update(value=1.0, ci=[0.9, 1.1], metric="p50 speedup (baseline p50 / model p50)")
    path.write_text(json.dumps(bench))
    line = next(x for x in render_report(run.path).read_text().splitlines()
                if x.startswith("| student_int8_cpu vs teacher_fp32 (onnxruntime-cpu, batch 1) |"))
    assert line.endswith("| paired rounds |") and "| 1.00x |" not in line


def test_report_says_not_run_for_missing_stages(tmp_path):
    run = recorded_run(tmp_path, stages=("teacher",))
    text = render_report(run.path).read_text()
    assert text.count("not run") >= 4  # PTQ/QAT, ONNX, engine, parity, bench
    assert "Bench not run" in text and "Export not run" in text


def test_gpu_memory_from_nvml_or_tegrastats(monkeypatch):
    from types import SimpleNamespace

    from edgekd.benchmark import sysinfo

    fake = SimpleNamespace(nvmlInit=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: i,
                           nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(used=512 * 2**20, total=2**34),
                           nvmlDeviceGetName=lambda h: b"NVIDIA Fake", nvmlSystemGetDriverVersion=lambda: "550.1")
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert sysinfo.gpu_memory_mb() == (512.0, "nvml (device-wide)")
    assert sysinfo.gpu() == {"name": "NVIDIA Fake", "driver": "550.1", "memory_mb": 16384}
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no NVML: a Jetson's tegrastats line instead
    line = "RAM 2034/7620MB (lfb 4x4MB) SWAP 0/3810MB CPU [1%@1190,0%@1190] GR3D_FREQ 0%"
    monkeypatch.setattr(sysinfo, "_tegrastats_line", lambda timeout=3.0: line)
    assert sysinfo.gpu_memory_mb() == (2034.0, "tegrastats RAM (shared CPU/GPU)")
    monkeypatch.setattr(sysinfo, "_tegrastats_line", lambda timeout=3.0: None)
    assert sysinfo.gpu_memory_mb() == (None, None)


# --------------------------------------------------------------------------- a real bundle, without torch


def test_bench_a_bundle_without_torch(tmp_path):
    """run_bench on a bundle with a test set: real onnxruntime, torch unimportable; structure only."""
    from test_bundle import make_bundle

    dest, student, _ = make_bundle(tmp_path)
    rng = np.random.default_rng(0)
    x = {"input.image": rng.normal(size=(10, 1, 4, 4)).astype(np.float32),
         "input.audio": rng.normal(size=(10, 3, 2)).astype(np.float32)}
    labels = student({k[6:]: v for k, v in x.items()}).argmax(1)
    np.savez(dest / "testset.npz", labels=labels, **x)
    from edgekd.runtime.bundle import add_model

    (tmp_path / "fake.engine").write_bytes(b"not an engine")
    add_model(dest, "student_fp32_orin", tmp_path / "fake.engine",
              {"role": "student", "precision": "fp32", "target": "tensorrt", "backend": "tensorrt",
               "source": "student_fp32"})
    script = (
        BLOCK_TRAINING + "import json\n"
        "from edgekd.benchmark.bench import run_bench\n"
        f"bench, files = run_bench({str(dest)!r}, batches=[1, 4], out={str(tmp_path / 'out')!r}, "
        "warmup_count=2, warmup_seconds=0, min_seconds=0.05, max_seconds=0.3, min_samples=5, "
        "backends=['onnxruntime-cpu', 'onnxruntime-cuda', 'tensorrt'])\n"
        "print(json.dumps({'path': str(files['json']), 'torch': 'torch' in sys.modules and sys.modules['torch'] is not None}))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["torch"]
    bench = load_bench(out["path"])
    measured = {(r["model"], r["batch"]) for r in bench["results"] if not r["skipped"]}
    assert measured == {(m, b) for m in ("student_fp32", "teacher_fp32") for b in (1, 4)}
    student_acc = next(r["accuracy"] for r in bench["results"] if r["model"] == "student_fp32" and r["batch"] == 1)
    assert student_acc == 1.0  # the labels are the student's own answers, through the same backend
    cuda = [r for r in bench["results"] if r["backend"] == "onnxruntime-cuda"]
    if "CUDAExecutionProvider" not in bench["env"]["onnxruntime_providers"]:
        assert cuda and all("CUDAExecutionProvider" in r["skipped"] for r in cuda)
    engine = [r for r in bench["results"] if r["backend"] == "tensorrt"]
    assert engine and all(r["model"] == "student_fp32_orin" for r in engine)
    if "tensorrt" in bench["settings"]["unavailable_backends"] or not bench["env"]["gpu"]:
        assert all(r["skipped"].startswith("backend unavailable") for r in engine)  # BundleError -> a skipped row
    assert bench["settings"]["test_data"] == "bundle/testset.npz"
    assert bench["machine_peak_gflops"]["cpu"] > 0
    # matplotlib is blocked like on a core install: no figures, and the table says how to get them
    assert not (tmp_path / "out" / "latency_accuracy.png").exists()
    assert "pip install 'edgekd[plots]'" in (tmp_path / "out" / "bench.md").read_text()


def test_bench_ratios_pair_rounds_on_one_backend_so_shared_drift_cancels():
    from edgekd.benchmark.results import ratios

    # every third round the whole machine is 3x slower: both models see it in the same round
    slow = np.array([3.0 if i % 3 == 0 else 1.0 for i in range(300)])
    student, teacher = 0.05 * slow, 1.0 * slow
    teacher[1::3] *= 1.0 + 1e-3 * np.arange(100)  # and the teacher drifts apart from it
    recs = [{"model": "student_int8_cpu", "backend": "onnxruntime-cpu", "batch": 1, "samples": 300,
             "latencies_ms": list(student), "meta": {}},
            {"model": "teacher_fp32", "backend": "onnxruntime-cpu", "batch": 1, "samples": 300,
             "latencies_ms": list(teacher), "meta": {}},
            {"model": "teacher_fp32", "backend": "torch-cpu", "batch": 1, "samples": 300,
             "latencies_ms": list(teacher * 4), "meta": {}}]
    out = {q["name"]: q for q in ratios(recs)}
    paired = out["student_int8_cpu vs teacher_fp32 (onnxruntime-cpu, batch 1)"]
    assert "per-round" in paired["metric"]
    per_round = np.sort(teacher / student)
    assert paired["value"] == pytest.approx(np.median(per_round))
    assert paired["ci"][0] <= paired["value"] <= paired["ci"][1] and paired["ci"][1] - paired["ci"][0] < 1.0
    across = out["teacher_fp32 vs teacher_fp32 (torch-cpu vs onnxruntime-cpu, batch 1)"]
    assert "baseline p50 / model p50" in across["metric"]  # other backends: not paired


def _row(model, backend, batch, p50, accuracy, n=20):
    lat = [p50] * n
    return {"model": model, "backend": backend, "batch": batch, "p50_ms": p50, "accuracy": accuracy, "samples": n,
            "skipped": None, "latencies_ms": lat}


def test_default_model_is_the_fastest_student_within_the_accuracy_budget():
    from edgekd.benchmark.defaults import pick_defaults

    models = {"student_fp32": {"role": "student", "target": "any"},
              "student_int8_cpu": {"role": "student", "target": "cpu"},
              "student_int8_qdq": {"role": "student", "target": "tensorrt"},
              "teacher_fp32": {"role": "teacher", "target": "any"},
              "student_int8_qdq_x86-gpu": {"role": "student", "target": "tensorrt", "backend": "tensorrt"}}
    rows = [_row("student_fp32", "onnxruntime-cpu", 1, 0.10, 0.921), _row("student_int8_cpu", "onnxruntime-cpu", 1, 0.19, 0.921),
            _row("student_int8_qdq", "onnxruntime-cpu", 1, 0.05, 0.921),  # TensorRT's model: never the CPU default
            _row("teacher_fp32", "onnxruntime-cpu", 1, 0.01, 0.99),  # not a student
            _row("student_fp32", "onnxruntime-cpu", 32, 0.5, 0.921), _row("student_int8_cpu", "onnxruntime-cpu", 32, 0.2, 0.921),
            _row("student_int8_qdq_x86-gpu", "tensorrt", 1, 0.02, 0.92)]
    d = pick_defaults({"results": rows}, models, budget=0.01)
    assert d["onnxruntime-cpu"]["model"] == "student_fp32" and d["onnxruntime-cpu"]["batch"] == 1  # batch 1 decides
    assert "1.90x faster" in d["onnxruntime-cpu"]["why"]
    assert d["tensorrt"]["model"] == "student_int8_qdq_x86-gpu"
    rows[0]["accuracy"] = 0.90  # FP32 faster but 2.1 points worse: outside the budget, INT8 ships
    d = pick_defaults({"results": rows}, models, budget=0.01)
    assert d["onnxruntime-cpu"]["model"] == "student_int8_cpu" and "below the best student" in d["onnxruntime-cpu"]["why"]
    assert pick_defaults({"results": rows}, models, budget=0.05)["onnxruntime-cpu"]["model"] == "student_fp32"
