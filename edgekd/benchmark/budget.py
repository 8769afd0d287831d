"""Latency-budgeted pruning: "the most accurate student that answers in X ms on this backend".

FLOPs are a poor proxy for latency on real kernels (a 17-channel convolution can be slower than an
18-channel one, and small models are dominated by per-op overheads), so candidates are exported in
the deploy precision and timed with the bench's own harness on the named backend: interleaved, so a
busy machine slows every candidate alike, and judged by the upper confidence bound of the chosen
statistic, the same bound `edgekd gate` uses. The choice is the most accurate candidate on the
validation split whose upper bound meets the budget; when none does, the caller says so with the
fastest candidate's figure.

This module measures and chooses on ONNX files alone (no torch, no recipe: the budget is any object
with latency_ms, backend, batch, metric), which is what lets the tests time fake runners with known
latencies; the prune stage (edgekd.stages.prune_budget) makes and exports the candidates.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekd.benchmark import harness
from edgekd.benchmark.gate import interval
from edgekd.benchmark.runners import ORT_PROVIDERS, fast_call, open_onnx
from edgekd.benchmark.stats import percentile
from edgekd.errors import BundleError, UsageError

CONFIDENCE = 0.95  # the gate's default


@dataclass
class Candidate:
    name: str  # "100%" (the unpruned student) or the FLOPs bound asked of FastNAS (it may land below it)
    flops: int
    params: int
    val_accuracy: float
    onnx: Path | None = None
    latency: dict = field(default_factory=dict)  # value, lo, hi (ms), samples, converged, or skipped
    state: object = None  # the ModelOpt-wrapped model (None for the unpruned student), not serialised

    def row(self) -> dict:
        return {"name": self.name, "flops": self.flops, "params": self.params, "val_accuracy": self.val_accuracy,
                "onnx": self.onnx.name if self.onnx else None, **self.latency}


def _identity_model(batch: int, path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty_call", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def empty_call_ms(backend: str, batch: int, threads: int) -> float:
    """p50 of a call that does nothing (one Identity): no model on this backend can answer faster."""
    with tempfile.TemporaryDirectory() as tmp:
        runner = open_onnx(_identity_model(batch, Path(tmp) / "empty.onnx"), backend, threads)
        call = fast_call(runner, {"x": np.zeros((batch, 1), np.float32)})
        [res] = harness.measure([harness.Target("empty", backend, batch, call, threads=threads)],
                                min_seconds=0.5, max_seconds=2.0, warmup_seconds=0.2, block=10, memory=False)
    return percentile(res.latencies_ms, 50)


def check_budget(budget, threads: int, where: str = "prune.constraint") -> float:
    """One-line errors before any work: the backend must run here and the budget must exceed the
    backend's empty-call time. Returns that time (ms)."""
    import onnxruntime as ort

    missing = [p for p in ORT_PROVIDERS[budget.backend][:1] if p not in ort.get_available_providers()]
    if missing:
        raise UsageError(f"{where}.backend {budget.backend} needs onnxruntime's {missing[0]}, which this "
                         f"install lacks (available: {', '.join(ort.get_available_providers())}); run the "
                         "stage on the device itself, or budget onnxruntime-cpu")
    floor = empty_call_ms(budget.backend, budget.batch, threads)
    if budget.latency_ms <= floor:
        raise UsageError(f"{where}.latency_ms {budget.latency_ms:g} ms is below {budget.backend}'s "
                         f"empty-call time here ({floor:.4f} ms at batch {budget.batch}): no model can meet it; "
                         "raise the budget")
    return floor


def measure(cands: list[Candidate], budget, feeds: dict, threads: int, *,
            open_runner: Callable = open_onnx, **measure_kw) -> None:
    """Time every candidate's ONNX model interleaved on the budget's backend; fills `latency`."""
    targets, timed = [], []
    for c in cands:
        try:
            runner = open_runner(c.onnx, budget.backend, threads)
            call = fast_call(runner, {n: feeds[n] for n in runner.input_names})
        except (BundleError, OSError, RuntimeError, ValueError) as e:
            c.latency = {"skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
            continue
        targets.append(harness.Target(c.name, budget.backend, budget.batch, call, threads=threads))
        timed.append(c)
    for c, res in zip(timed, harness.measure(targets, memory=False, confidence=CONFIDENCE, **measure_kw)):
        if res.skipped:
            c.latency = {"skipped": res.skipped}
            continue
        bounds = interval({"latencies_ms": res.latencies_ms.tolist()}, budget.metric, CONFIDENCE)  # exactly the gate's
        c.latency = dict(zip(("value", "lo", "hi"), (None if v is None else round(float(v), 4) for v in bounds)),
                         samples=int(res.latencies_ms.size), converged=bool(res.converged))


def meets(c: Candidate, budget) -> bool:
    """Only a measured upper bound counts: a candidate too noisy to bound does not meet a budget."""
    return c.latency.get("hi") is not None and c.latency["hi"] <= budget.latency_ms


def choose(cands: list[Candidate], budget) -> tuple[Candidate | None, str]:
    """The most accurate candidate (validation) that meets the budget (fewer FLOPs on a tie), and
    one sentence saying why, or (None, why none does with the fastest candidate's figure)."""
    what = f"{budget.metric[:-3]} <= {budget.latency_ms:g} ms on {budget.backend} at batch {budget.batch}"
    ok = [c for c in cands if meets(c, budget)]
    if ok:
        best = max(ok, key=lambda c: (c.val_accuracy, -c.flops))
        lat = best.latency
        return best, (f"{best.name} FLOPs: the most accurate of {len(ok)} of {len(cands)} candidates meeting "
                      f"{what} (validation {best.val_accuracy:.2%}, {lat['value']:.4f} ms, upper bound "
                      f"{lat['hi']:.4f} ms)")
    timed = [c for c in cands if c.latency.get("value") is not None]
    if not timed:
        return None, f"no candidate could be measured on {budget.backend}, so none is known to meet {what}"
    fast = min(timed, key=lambda c: c.latency["value"])
    return None, (f"no candidate meets {what}: the fastest, {fast.name} FLOPs, measured {fast.latency['value']:.4f} ms "
                  f"(upper bound {fast.latency['hi'] if fast.latency['hi'] is not None else '?'} ms, validation "
                  f"{fast.val_accuracy:.2%}); raise the budget, add smaller prune.candidates, or start from a "
                  "smaller student")


def pareto(cands: list[Candidate]) -> list[str]:
    """Names of the candidates no other is both faster and at least as accurate as (validation)."""
    timed = sorted((c for c in cands if c.latency.get("value") is not None),
                   key=lambda c: (c.latency["value"], -c.val_accuracy))
    front, best = [], -1.0
    for c in timed:
        if c.val_accuracy > best:
            front.append(c.name)
            best = c.val_accuracy
    return front


def table(cands: list[Candidate], budget, chosen: Candidate | None) -> list[str]:
    """Markdown rows of every candidate: FLOPs, parameters, validation accuracy, latency and bounds."""
    front, base = set(pareto(cands)), max(c.flops for c in cands)
    lines = [f"| candidate (asked) | FLOPs | of unpruned | params | val acc | {budget.metric[:-3]} ms | 95% CI | meets | Pareto |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(cands, key=lambda c: -c.flops):
        lat = c.latency
        if lat.get("value") is None:
            timing = f"not measured ({lat.get('skipped', '?')}) | – "
        else:
            ci = "–" if lat["lo"] is None or lat["hi"] is None else f"[{lat['lo']:.4f}, {lat['hi']:.4f}]"
            timing = f"{lat['value']:.4f} | {ci}"
        mark = " **chosen**" if chosen is c else ""
        lines.append(f"| {c.name}{mark} | {c.flops:,} | {c.flops / base:.1%} | {c.params:,} | {c.val_accuracy:.2%} | {timing} | "
                     f"{'yes' if meets(c, budget) else 'no'} | {'yes' if c.name in front else ''} |")
    return lines
