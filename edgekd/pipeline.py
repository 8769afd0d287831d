"""Resolving what a command works on (a recipe file or a run directory) and chaining stages."""
from __future__ import annotations

from pathlib import Path

from edgekd import distributed as dist
from edgekd.errors import UsageError
from edgekd.recipe import STAGES, load_recipe
from edgekd.rundir import MANIFEST, RunDir


def open_run(target: str | Path, run_dir: str | Path | None = None, overrides: list[str] | None = None,
             force: bool = False) -> RunDir:
    """A recipe YAML starts (or reopens) runs/<name>; a run directory is reopened as it is."""
    target = Path(target)
    if target.is_dir() and run_dir and Path(run_dir).resolve() != target.resolve():
        raise UsageError("--run-dir applies to a recipe file; the run directory given as target is used as it is")
    if target.is_dir():
        if (target / MANIFEST).is_file():
            if overrides:
                raise UsageError("--set applies to a recipe file, not to an existing run directory; "
                                 "pass the recipe YAML with --run-dir NEW_DIR")
            return RunDir.open(target)
        raise UsageError(f"{target} is a directory but not a run directory (no {MANIFEST}); "
                         "pass a recipe YAML or a directory made by `edgekd run`")
    recipe = load_recipe(target, overrides)
    path = Path(run_dir) if run_dir else Path("runs") / recipe.name
    if dist.active() and not dist.is_main():  # rank 0 creates the directory; the others open it
        dist.barrier()
        return RunDir.open(path)
    run = RunDir.create(path, recipe, force=force)
    dist.barrier()
    return run


# Stages that train run on every torchrun rank; the others (ONNX export, engine build, benchmark)
# are single-process work that rank 0 does while the other ranks finish.
DISTRIBUTED_STAGES = ("teacher", "distill", "qat")


def run_stage(run: RunDir, stage: str, **kwargs) -> dict | None:
    """Run one stage; under torchrun, None on the ranks that sit a single-process stage out."""
    if stage not in DISTRIBUTED_STAGES and not dist.is_main():
        return None
    metrics = stage_functions()[stage](run, **kwargs)
    if stage in DISTRIBUTED_STAGES and dist.active():
        dist.barrier()  # rank 0 has recorded the stage: every rank reads the same manifest next
        run.reload()
    return metrics


def stage_functions():
    from edgekd.stages.bench import run_bench_stage
    from edgekd.stages.build import run_build
    from edgekd.stages.distill import run_distill
    from edgekd.stages.export import run_export
    from edgekd.stages.qat import run_qat
    from edgekd.stages.teacher import run_teacher

    return {"teacher": run_teacher, "distill": run_distill, "qat": run_qat, "export": run_export,
            "build": run_build, "bench": run_bench_stage}


def check_until(until: str) -> None:
    if until not in STAGES:
        raise UsageError(f"--until {until!r}: choose one of {', '.join(STAGES)}")


def run_pipeline(run: RunDir, until: str = STAGES[-1], data_root=None, resume: bool = False, force: bool = False,
                 progress=None, echo=print) -> dict:
    """Run every stage up to `until`; stages already done (and not stale) are kept unless `force`."""
    check_until(until)
    results = {}
    for stage in STAGES[: STAGES.index(until) + 1]:
        if run.is_done(stage) and not force:
            echo(f"{stage}: up to date (use --force to re-run)")
            results[stage] = run.stage(stage)["metrics"]
            continue
        results[stage] = run_stage(run, stage, data_root=data_root, resume=resume, progress=progress)
        if results[stage] is not None:
            echo(summary_line(stage, results[stage]))
    return results


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def summary_line(stage: str, m: dict) -> str:
    if stage == "teacher":
        alone = ", ".join(f"without {k} {_pct(v)}" for k, v in m.get("accuracy_without", {}).items())
        return f"teacher: accuracy {_pct(m['accuracy'])} ({alone}); {m['params']:,} params"
    if stage == "distill":
        gain = "" if m.get("kd_gain") is None else f", no-KD baseline {_pct(m['baseline_accuracy'])}, KD gain {100 * m['kd_gain']:+.1f} pt"
        return (f"distill: student accuracy {_pct(m['accuracy'])} (teacher {_pct(m['teacher_accuracy'])}){gain}; "
                f"{m['params']:,} params (1/{m['teacher_params_ratio']:.0f} of the teacher)")
    if stage == "qat":
        names = {"qat_accuracy": "QAT", "qad_student_accuracy": "QAD/FP32-student teacher",
                 "qad_distill_accuracy": "QAD/cached teacher"}
        side = ", ".join(f"{v} {_pct(m[k])}" for k, v in names.items() if m.get(k) is not None)
        lines = [f"qat: INT8 {m['method'].upper()} accuracy {_pct(m['accuracy'])} (FP32 {_pct(m['fp32_accuracy'])}, "
                 f"PTQ {_pct(m['ptq_accuracy'])}; {side}); {m['quantizers_enabled']} quantizers",
                 "  accuracy budget (test split):"]
        for row in m.get("budget", []):
            delta = "" if row["delta"] is None else f"  {100 * row['delta']:+.1f} pt vs {row['against']}"
            lines.append(f"    {row['stage']:<46} {_pct(row['accuracy']):>6}{delta}")
        return "\n".join(lines)
    if stage == "build":
        if m.get("skipped"):
            return f"build ({m['target']}): skipped: {m['skipped']}; the equivalent command is in {m['trtexec']}"
        same = "" if m.get("identical") is None else f"; two builds {'identical' if m['identical'] else 'differ'}"
        return (f"build ({m['target']}): {m['engine']} with TensorRT {m['tensorrt_version']} on {m['device']}, "
                f"INT8 layers {100 * m['int8_layer_fraction']:.0f}%, {m['build_seconds']:.0f} s{same}")
    if stage == "bench":
        return f"bench: {m.get('bench_json')} (table: bench.md beside it)"
    if stage == "export":
        lines = ["export: parity ladder passed; accuracy through onnxruntime (test split):"]
        for key, v in m.items():
            if isinstance(v, dict):
                lines.append(f"    {key:<18} {_pct(v['accuracy']):>6}  max |diff| {v['max_abs_diff']:.2g}  "
                             f"top-1 agreement {v['top1_agreement']:.3f}  {v['bytes'] / 1024:,.0f} KiB")
        return "\n".join(lines)
    return f"{stage}: done"
