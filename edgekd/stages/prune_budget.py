"""The prune stage under a latency budget: candidates pruned to several FLOPs bounds, each recovered
briefly, exported as it would deploy, and measured together on the budget's backend (the measuring
and choosing itself is edgekd.benchmark.budget, torch-free)."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from edgekd.benchmark.runners import device_of
from edgekd.errors import UsageError
from edgekd.exporting.deployed import deployed_onnx


@dataclass
class Search:
    """What the prune stage hands the candidates: the distilled student, its inputs, and the stage's
    own steps (`prune(bound)` -> ModelOpt model, `recover(model, epochs, checkpoint, label, what)`,
    `measure(model)` -> flops, params, val_accuracy, accuracy)."""

    student: object
    names: list[str]
    example: dict  # one test sample per input (export tracing)
    calib: list[dict]  # train batches (BatchNorm re-estimation, INT8 calibration)
    test: object  # the test split (its first `batch` rows are the timed inputs)
    divisor: int
    prune: Callable
    recover: Callable
    measure: Callable


def divisor(prune, backend: str | None, build_target: str) -> tuple[int, str]:
    """(channel divisor, where it came from): the recipe's; for a CPU budget the channel block of
    onnxruntime's CPU kernels on this machine (measured on avdigits' fusion_base at batch 32 on an
    AVX-512 CPU: 46.5% of the FLOPs in steps of 16 ran 0.31 ms, 50.0% in steps of 8 ran 0.41 ms);
    else the build target's."""
    if prune.channel_divisor is not None:
        return prune.channel_divisor, "prune.channel_divisor"
    if backend is not None and device_of(backend) == "cpu":
        from edgekd.benchmark.sysinfo import cpu_channel_block

        block = cpu_channel_block()
        return block, f"{backend}: this CPU's kernel block ({'AVX-512' if block == 16 else 'no AVX-512'})"
    from edgekd.trt.targets import load_target

    return load_target(build_target).channel_divisor, f"target {build_target}"


def candidates(run, out, s: Search, before: dict, budget, floor: float):
    """Candidates at each of prune.candidates' FLOPs ratios (plus the unpruned student), each with a
    short recovery, exported in the deploy precision and timed together on the budget's backend.
    Returns (the chosen candidate's ModelOpt model or None for the unpruned student, its measures
    right after pruning, metrics)."""
    from edgekd.benchmark import budget as lat
    from edgekd.benchmark.runners import batch_of
    from edgekd.files import atomic_write_json, atomic_write_text
    from edgekd.plots import HOW_TO_GET, budget_png
    from edgekd.quant.prune import Unreachable

    r, p = run.recipe, run.recipe.prune
    t0 = time.time()
    cdir = out / "candidates"
    cdir.mkdir(exist_ok=True)
    # a previous run's table and models are not this one's (its recovery checkpoints serve --resume)
    for old in [out / "candidates.md", out / "candidates.json", out / "candidates.png", *cdir.glob("*.onnx")]:
        old.unlink(missing_ok=True)
    cands = [lat.Candidate("100%", before["flops"], before["params"], before["val_accuracy"])]
    unreachable: list[str] = []
    models, test_acc, same, right_after = {"100%": s.student}, {"100%": before["accuracy"]}, [], {"100%": before}
    for ratio in p.candidates:
        try:
            pruned = s.prune({"flops": ratio})
        except Unreachable:
            unreachable.append(ratio)
            continue
        m = s.measure(pruned.model)
        right_after[ratio] = m
        twin = next((c for c in cands if c.flops == m["flops"]), None)
        if twin is not None:  # the search landed on an architecture already in the list
            same.append(f"{ratio} = {twin.name}")
            continue
        tag = ratio[:-1]
        s.recover(pruned.model, p.candidate_epochs, cdir / f"{tag}.pt", f"prune {ratio}", ratio)
        after = s.measure(pruned.model)
        cands.append(lat.Candidate(ratio, after["flops"], after["params"], after["val_accuracy"], state=pruned))
        models[ratio], test_acc[ratio] = pruned.model, after["accuracy"]
    for c in cands:
        c.onnx = deployed_onnx(models[c.name], s.names, s.example, budget, s.calib, r.qat, r.export.cpu_calib_method,
                                  cdir / f"{c.name[:-1]}.onnx")
    b = r.bench
    lat.measure(cands, budget, batch_of(s.test.inputs, s.names, budget.batch), b.threads,
                min_seconds=b.min_seconds, max_seconds=b.max_seconds, block=b.block)
    chosen, why = lat.choose(cands, budget)
    rows = [{**c.row(), "test_accuracy": test_acc[c.name]} for c in cands]
    front = lat.pareto(cands)
    title = f"prune candidates on {budget.backend}, batch {budget.batch}, {budget.precision}"
    png = budget_png(rows, front, budget.latency_ms, budget.metric, chosen.name if chosen else None, title,
                     out / "candidates.png")
    lines = [f"# {title}", "", f"Budget: {budget.metric[:-3]} <= {budget.latency_ms:g} ms (upper bound of the 95% "
             f"CI). Empty call on this backend: {floor:.4f} ms.", "", *lat.table(cands, budget, chosen), "",
             f"**{'Chosen' if chosen else 'None meets the budget'}**: {why}.", "",
             "Candidates are chosen on validation accuracy after a short recovery; test accuracy is in "
             "candidates.json, for reporting only.", ""]
    if unreachable:
        lines += [f"Below the smallest this student reaches in steps of {s.divisor} channels: {', '.join(unreachable)}.",
                  ""]
    if same:
        lines += [f"Ratios that landed on an architecture already listed: {', '.join(same)}.", ""]
    lines += ["![candidates](candidates.png)" if png else f"({HOW_TO_GET})", ""]
    atomic_write_text(out / "candidates.md", "\n".join(lines))
    atomic_write_json(out / "candidates.json", {"budget": budget.model_dump(), "empty_call_ms": floor,
                                                "chosen": chosen.name if chosen else None, "reason": why,
                                                "pareto": front, "same_architecture": same, "unreachable": unreachable, "candidates": rows})
    if chosen is None:
        raise UsageError(f"{why} (see {out / 'candidates.md'})")
    summary = {"budget_met": True, "chosen": chosen.name, "reason": why, "empty_call_ms": floor,
               "latency": chosen.latency, "candidates": len(cands), "seconds": round(time.time() - t0, 1)}
    return chosen.state, right_after[chosen.name], summary
