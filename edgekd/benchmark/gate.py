"""`edgekd gate BENCH_JSON --budget FILE [--baseline OLD.json]`: pass, fail, or "too noisy to say".

Every latency decision uses a confidence interval, never the point value: a budget passes when the
whole interval is inside its bound, fails when the whole interval is outside, and is INCONCLUSIVE
when the interval straddles the bound. Inconclusive has its own exit code (3) so CI can re-run the
bench instead of blaming the change. Accuracy is a fixed test split scored once, so it is compared
as a point value. Exit codes: 0 pass, 1 fail (wins over inconclusive), 3 inconclusive.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import Field, ValidationError, model_validator

from edgekd.benchmark.stats import QUANTILES, mean_ci, percentile, quantile_ci, quantile_ratio
from edgekd.errors import UsageError
from edgekd.schema import Strict, suggest

PASS, FAIL, INCONCLUSIVE = 0, 1, 3
LATENCY = ("p50_ms", "p90_ms", "p95_ms", "p99_ms")
METRICS = (*LATENCY, "mean_ms", "throughput", "accuracy", "peak_rss_mb")


class _Budget(Strict):
    name: str = Field(description="What the budget protects, printed in every verdict line.")
    model: str = Field(description="Model key in the bench results, e.g. student_int8_cpu.")
    backend: str = Field(description="Backend name, e.g. onnxruntime-cpu, tensorrt, torch-cpu.")
    batch: int = Field(ge=1, description="Batch size of the result.")
    optional: bool = Field(False, description="Skip (instead of fail) when the bench has no such result.")


class Absolute(_Budget):
    kind: Literal["absolute"] = "absolute"
    metric: Literal[METRICS] = Field(description="Which figure of the result is bounded.")
    max: float | None = Field(None, description="Upper bound (latencies, memory).")
    min: float | None = Field(None, description="Lower bound (accuracy, throughput).")

    @model_validator(mode="after")
    def _one_bound(self):
        if (self.max is None) == (self.min is None):
            raise ValueError("give exactly one of max or min")
        return self


class Speedup(_Budget):
    kind: Literal["speedup"]
    baseline_model: str = Field(description="The slower model, e.g. teacher_fp32.")
    baseline_backend: str | None = Field(None, description="Its backend (default: the same backend).")
    metric: Literal[LATENCY] = Field("p50_ms", description="Latency quantile the speedup is taken at.")
    min: float = Field(gt=0, description="model must be at least this many times faster.")


class Regression(_Budget):
    kind: Literal["regression"]
    metric: Literal[LATENCY] = Field("p50_ms", description="Latency quantile compared with --baseline.")
    max_slowdown: float = Field(ge=0, description="Allowed slowdown vs the baseline bench, 0.10 = 10%.")


class BaselineFloor(_Budget):
    """The student must be at least as accurate as the best linear baseline the run fitted (bundle
    manifest `baselines`, test split): a student a linear model beats is not worth shipping."""

    kind: Literal["baseline_floor"]
    margin: float = Field(0.0, ge=0, le=1, description="Accuracy (fraction) the student must exceed it by.")


class BudgetFile(Strict):
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence of every interval.")
    budgets: list[dict] = Field(min_length=1, description="The budgets; each is checked by its own kind.")


KINDS = {"absolute": Absolute, "speedup": Speedup, "regression": Regression, "baseline_floor": BaselineFloor}


def _problem(err: ValidationError, where: str, cls) -> str:
    errors = err.errors()  # a misspelt key usually also leaves a required one missing: name the typo
    e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc = ".".join(str(x) for x in e["loc"])
    if e["type"] == "extra_forbidden":
        return f"{where}: unknown key '{e['loc'][-1]}'{suggest(e['loc'][-1], cls.model_fields)}"
    if e["type"] == "missing":
        return f"{where}: '{loc}' is required"
    msg = e["msg"].removeprefix("Value error, ")
    return f"{where}{'.' + loc if loc else ''}: {msg} (got {e.get('input')!r})" if e["type"] != "value_error" \
        else f"{where}: {msg}"


def load_budgets(path) -> tuple[float, list[_Budget]]:
    """(confidence, budgets) from a YAML budget file; any unknown key or bad value is a UsageError
    naming the budget and the field, so a typo can never silently disable a gate."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"cannot read budget file {path} ({str(e).splitlines()[0]})") from None
    try:
        top = BudgetFile.model_validate(raw if isinstance(raw, dict) else {"budgets": raw})
    except ValidationError as e:
        raise UsageError(_problem(e, str(path), BudgetFile)) from None
    budgets = []
    for i, item in enumerate(top.budgets):
        where = f"{path}: budgets[{i}]" + (f" ({item['name']})" if isinstance(item.get("name"), str) else "")
        kind = item.get("kind", "absolute")
        if kind not in KINDS:
            raise UsageError(f"{where}: unknown kind '{kind}'{suggest(kind, KINDS)} (choose from {', '.join(KINDS)})")
        try:
            budgets.append(KINDS[kind].model_validate(item))
        except ValidationError as e:
            raise UsageError(_problem(e, where, KINDS[kind])) from None
    return top.confidence, budgets


# --------------------------------------------------------------------------- evaluation


def _find(bench: dict, model: str, backend: str, batch: int) -> dict | None:
    return next((r for r in bench["results"] if (r["model"], r["backend"], r["batch"]) == (model, backend, batch)
                 and not r.get("skipped") and r.get("samples")), None)


def interval(rec: dict, metric: str, confidence: float) -> tuple[float, float | None, float | None]:
    """(value, lo, hi) of a result's metric: recomputed from the raw latencies when the JSON has
    them, else the stored interval; figures without sampling noise have lo = hi = value."""
    lat = np.asarray(rec.get("latencies_ms") or [], dtype=np.float64)
    stored = (rec.get("ci") or {}).get(metric.removesuffix("_ms")) or [None, None]
    if metric in LATENCY:
        p = QUANTILES[metric.removesuffix("_ms")]
        return (percentile(lat, 100 * p), *quantile_ci(lat, p, confidence)) if lat.size else (rec[metric], *stored)
    if metric == "mean_ms":
        return (float(lat.mean()), *mean_ci(lat, confidence)) if lat.size else (rec[metric], *stored)
    if metric == "throughput":
        _, lo, hi = interval(rec, "mean_ms", confidence)
        to_rate = lambda ms: rec["batch"] * 1000.0 / ms if ms else None  # noqa: E731
        return rec["throughput"], to_rate(hi), to_rate(lo)
    value = rec.get(metric)
    return value, value, value


def decide(lo, hi, *, max=None, min=None) -> str:  # noqa: A002 -- the budget file's own words
    if max is not None:
        if lo is not None and lo > max:
            return "FAIL"
        return "PASS" if hi is not None and hi <= max else "INCONCLUSIVE"
    if hi is not None and hi < min:
        return "FAIL"
    return "PASS" if lo is not None and lo >= min else "INCONCLUSIVE"


def _latencies(rec: dict, where: str) -> list:
    if not rec.get("latencies_ms"):
        raise UsageError(f"the {where} result {rec['model']} on {rec['backend']} has no latencies_ms; "
                         "re-run `edgekd bench` (ratio budgets need every call's latency)")
    return rec["latencies_ms"]


def _ratio(num: dict, den: dict, p: float, conf: float, same_run: bool) -> tuple[float, float | None, float | None, str]:
    """The ratio of two results' p-quantiles, paired where they shared rounds (one run, one backend)."""
    a, b = _latencies(num, "bench"), _latencies(den, "baseline" if not same_run else "bench")
    return quantile_ratio(a, b, p, conf, same_run and num["backend"] == den["backend"])


def _g(v) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _check(b: _Budget, bench: dict, baseline: dict | None, conf: float) -> tuple[str, str]:
    head = f"{b.name}: {b.model} on {b.backend}, batch {b.batch}"
    rec = _find(bench, b.model, b.backend, b.batch)
    if rec is None:
        return ("SKIP" if b.optional else "FAIL"), f"{head}: not measured in this bench"
    ci = f"{conf:.0%} CI"
    if isinstance(b, Absolute):
        if rec.get(b.metric) is None:
            return ("SKIP" if b.optional else "FAIL"), f"{head}: the bench has no {b.metric}"
        value, lo, hi = interval(rec, b.metric, conf)
        op, bound = ("<=", b.max) if b.max is not None else (">=", b.min)
        spread = f"[{_g(lo)}, {_g(hi)}] ({ci})" if b.metric in (*LATENCY, "mean_ms", "throughput") else "(no sampling noise)"
        return decide(lo, hi, max=b.max, min=b.min), f"{head}: {b.metric} = {_g(value)} {spread}; budget {op} {bound:g}"
    if isinstance(b, BaselineFloor):
        return baseline_floor(b, rec, bench.get("baselines"), head)
    p = QUANTILES[b.metric.removesuffix("_ms")]
    if isinstance(b, Speedup):
        other = _find(bench, b.baseline_model, b.baseline_backend or b.backend, b.batch)
        if other is None:
            missing = f"{head}: {b.baseline_model} not measured on {b.baseline_backend or b.backend}"
            return ("SKIP" if b.optional else "FAIL"), missing
        value, lo, hi, how = _ratio(other, rec, p, conf, same_run=True)
        return decide(lo, hi, min=b.min), (f"{head}: speedup {b.metric}({b.baseline_model}) / {b.metric}({b.model}) = "
                                           f"{_g(value)}x [{_g(lo)}, {_g(hi)}] ({ci}, {how}); budget >= {b.min:g}x")
    same_run = _find(bench, "baseline/" + b.model, b.backend, b.batch)  # `edgekd bench --baseline BUNDLE`
    if same_run is not None:
        baseline, model_key = bench, "baseline/" + b.model
    elif baseline is None:
        raise UsageError(f"budget '{b.name}' compares against a baseline: bench with --baseline OLD_BUNDLE "
                         "(interleaved, preferred) or pass --baseline OLD_BENCH.json to the gate")
    else:
        model_key = b.model
    old = _find(baseline, model_key, b.backend, b.batch)
    if old is None:
        return ("SKIP" if b.optional else "FAIL"), f"{head}: not measured in the baseline bench"
    value, lo, hi, how = _ratio(rec, old, p, conf, same_run=same_run is not None)
    where = "same run, interleaved" if same_run is not None else "separate baseline bench"
    return decide(lo, hi, max=1 + b.max_slowdown), (
        f"{head}: {b.metric} now / baseline ({where}) = {_g(value)}x [{_g(lo)}, {_g(hi)}] ({ci}, {how}); "
        f"budget <= {1 + b.max_slowdown:g}x (at most {100 * b.max_slowdown:g}% slower)")


def baseline_floor(b: BaselineFloor, rec: dict, baselines: dict | None, head: str) -> tuple[str, str]:
    if not baselines:
        return ("SKIP" if b.optional else "FAIL"), (f"{head}: the bundle records no baselines (teacher.baselines: "
                                                    "true, then re-export)")
    if rec.get("accuracy") is None:
        return ("SKIP" if b.optional else "FAIL"), f"{head}: the bench has no accuracy (a bundle with testset.npz)"
    name, best = max(baselines.items(), key=lambda kv: kv[1]["accuracy"])
    floor = best["accuracy"] + b.margin
    verdict = "PASS" if rec["accuracy"] >= floor else "FAIL"
    return verdict, (f"{head}: accuracy {100 * rec['accuracy']:.1f}% vs the best baseline ({name}, linear) "
                     f"{100 * best['accuracy']:.1f}%" + (f" + {100 * b.margin:g} pt" if b.margin else "")
                     + ("" if verdict == "PASS" else "; a linear model beats this student"))


def evaluate(bench: dict, budgets, baseline: dict | None = None, confidence: float | None = None) -> tuple[int, list[str]]:
    """(exit code, one line per budget + a summary line). `budgets` is a list of budget models or
    the (confidence, budgets) pair load_budgets returns."""
    if isinstance(budgets, tuple):
        confidence, budgets = confidence or budgets[0], budgets[1]
    conf = confidence or 0.95
    lines, verdicts = [], []
    for b in budgets:
        verdict, text = _check(b, bench, baseline, conf)
        verdicts.append(verdict)
        lines.append(f"{verdict:<12} {text}")
    failed, unsure = verdicts.count("FAIL"), verdicts.count("INCONCLUSIVE")
    if failed:
        code, summary = FAIL, f"gate FAILED: {failed} of {len(budgets)} budgets failed"
    elif unsure:
        code, summary = INCONCLUSIVE, (f"gate INCONCLUSIVE: {unsure} of {len(budgets)} budgets too noisy to decide; "
                                      "re-run the bench (longer --max-seconds, a quieter machine)")
    else:
        code, summary = PASS, f"gate passed: {verdicts.count('PASS')} of {len(budgets)} budgets passed" + (
            f", {verdicts.count('SKIP')} skipped" if "SKIP" in verdicts else "")
    return code, lines + [summary]


def gate(bench_json, budget_file, baseline_json=None) -> tuple[int, list[str]]:
    """The CLI's one call: load the bench (and baseline) JSON and the budget file, then evaluate."""
    from edgekd.benchmark.results import load_bench

    confidence, budgets = load_budgets(budget_file)
    baseline = load_bench(baseline_json) if baseline_json else None
    return evaluate(load_bench(bench_json), budgets, baseline, confidence)
