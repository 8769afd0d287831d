"""The prune stage (between distill and qat; off unless `prune.enabled`): fewer channels with NVIDIA
ModelOpt's FastNAS, then recovery by distillation against the cached teacher outputs.

FastNAS searches per-layer channel counts under a FLOPs or parameter bound, scoring candidates by
validation accuracy after re-estimating BatchNorm statistics on real train batches; the pruned
architecture and weights are saved through ModelOpt's state (`mto.save`, restored with
`weights_only=True`), so qat and export rebuild exactly this student (`load_model(run, "student")`
returns it once this stage is done). Linear layers keep their width: the embedding every later
stage relies on (export's io_spec, the distill projectors) stays the same size.

Writes prune/search.pth (ModelOpt's search checkpoint: a killed search resumes), prune/student.pth
(the recovered student), prune/eval.json. Manifest metrics: FLOPs and parameters before and after,
validation and test accuracy before, right after pruning and after recovery.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from edgekd.errors import RecipeError, UsageError
from edgekd.stages.common import pct

if TYPE_CHECKING:
    from edgekd.rundir import RunDir


def constraint(p) -> dict:
    """{"flops": ...} or {"params": ...} in ModelOpt's form ("50%" or an absolute number)."""
    key, value = ("flops", p.flops) if p.flops is not None else ("params", p.params)
    return {key: value}


def run(run: RunDir, data_root=None, resume: bool = False, progress=None) -> dict:
    r, p = run.recipe, run.recipe.prune
    if not p.enabled:  # done, with nothing to do: later stages keep the distilled student (and stay up to date)
        started = run.begin("prune")
        m = {"skipped": "prune.enabled is false"}
        run.record("prune", started=started, outputs={}, metrics=m)
        return m
    try:
        import torchprofile  # noqa: F401  -- ModelOpt counts FLOPs with it
    except ImportError:
        raise UsageError("the prune stage needs torchprofile 0.0.4 (ModelOpt's FLOPs counter): pip install "
                         "--no-deps torchprofile==0.0.4 (`make` does)") from None
    import modelopt.torch.prune as mtp
    import numpy as np
    import torch

    from edgekd.data import load_dataset
    from edgekd.distill.cache import TeacherTargets
    from edgekd.distill.evaluate import evaluate
    from edgekd.distill.losses import Projectors, loss_weights
    from edgekd.distill.trainer import Job, train
    from edgekd.files import atomic_path, atomic_write_json
    from edgekd.models import count_flops, count_params
    from edgekd.quant.int8 import modelopt
    from edgekd.quant.prune import fastnas_rules, positional, quiet
    from edgekd.stages.common import (
        check_data,
        distilled_student,
        example_batch,
        load_model,
        student_data,
        teacher_data,
        threads,
    )

    with threads(r.threads):
        data = load_dataset(r, data_root)
        check_data(run, "distill", data)
        sdata = student_data(run, data)
        if not sdata.has_split("val"):
            raise RecipeError("prune scores candidates on the validation split, which this dataset has none of: set "
                              "data.val_fraction above 0")
        student, _ = distilled_student(run)
        names = list(student.names)
        started = run.begin("prune")
        out = run.stage_dir("prune")
        val, test = sdata.split("val"), sdata.split("test")
        example = example_batch(sdata, names)
        vx = tuple(torch.from_numpy(val.inputs[n]) for n in names)

        def score(m) -> float:  # FastNAS's score: validation accuracy of the wrapped candidate
            m.eval()
            with torch.no_grad():
                return float((m(*vx).argmax(1).numpy() == val.labels).mean())

        def measure(m) -> dict:
            return {"flops": count_flops(m, example), "params": count_params(m),
                    "val_accuracy": round(score(positional(m, names)), 4),
                    "accuracy": evaluate(m, test, names, data.classes)["accuracy"]}

        before = measure(student)

        train_split = sdata.split("train", 0)
        order = np.random.default_rng([r.seed, 11]).permutation(len(train_split))
        loader = [tuple(torch.from_numpy(train_split.inputs[n][order[i:i + 64]]) for n in names)
                  for i in range(0, min(len(order), 64 * p.calib_batches), 64)]
        wrapped = positional(student, names)
        t0 = time.time()
        with quiet():  # ModelOpt prints its search tables and a progress bar
            pruned, _ = mtp.prune(wrapped, [("fastnas", fastnas_rules(p.channel_divisor))], constraint(p),
                                  dummy_input=tuple(x[:2] for x in vx),
                                  config={"data_loader": loader, "score_func": score, "collect_func": lambda b: b,
                                          "checkpoint": str(out / "search.pth")})
        search_seconds = round(time.time() - t0, 1)
        model = pruned.model
        after = measure(model)

        # recovery: the distill objective against the cached teacher outputs, own epochs and lr
        teacher, _ = load_model(run, "teacher")
        cache = run.stage("distill").get("cache")
        targets = TeacherTargets(teacher, list(teacher.names), teacher_data(run, data),
                                 run.path / cache if cache else None)
        targets.prepare(data.num_pairings)
        job = Job(model, names, p, r.seed, out / "checkpoint.pt", "prune", fingerprint=f"prune:{data.fingerprint()}")
        job.targets = targets
        job.projectors = Projectors.between(model, names, targets)
        job.loss = loss_weights(r.distill)
        history = train(job, sdata, resume, progress)
        model.eval()
        result = evaluate(model, test, names, data.classes)
        recovered = {"val_accuracy": round(score(positional(model, names)), 4), "accuracy": result["accuracy"]}
        _, mto = modelopt()
        with atomic_path(out / "student.pth") as tmp:
            mto.save(pruned, tmp)
        metrics = {
            "constraint": constraint(p), "flops_before": before["flops"], "flops": after["flops"],
            "params_before": before["params"], "params": after["params"],
            "flops_ratio": round(after["flops"] / before["flops"], 4),
            "val_accuracy_before": before["val_accuracy"], "accuracy_before": before["accuracy"],
            "val_accuracy_pruned": after["val_accuracy"], "accuracy_pruned": after["accuracy"],
            "val_accuracy": recovered["val_accuracy"], "accuracy": recovered["accuracy"],
            "accuracy_without": result["accuracy_without"], "search_seconds": search_seconds,
            "epoch_seconds": round(sum(h["seconds"] for h in history) / max(1, len(history)), 3),
        }
        outputs = {"model": out / "student.pth", "search": out / "search.pth",
                   "eval": atomic_write_json(out / "eval.json", {**result, "history": history, "metrics": metrics})}
        run.record("prune", started=started, outputs=outputs, metrics=metrics,
                   inputs={"student_weights": run.artifact("distill", "weights"),
                           "student_config": run.artifact("distill", "config")},
                   extra={"data_fingerprint": data.fingerprint()})
    return metrics


def summary(m: dict) -> str:
    if m.get("skipped"):
        return f"prune: skipped ({m['skipped']})"
    return (f"prune: FLOPs {m['flops_before']:,} -> {m['flops']:,} ({pct(m['flops_ratio'])}), params "
            f"{m['params_before']:,} -> {m['params']:,}; test {pct(m['accuracy_before'])} -> {pct(m['accuracy_pruned'])} "
            f"pruned -> {pct(m['accuracy'])} recovered (val {pct(m['val_accuracy_before'])} -> "
            f"{pct(m['val_accuracy_pruned'])} -> {pct(m['val_accuracy'])}); search {m['search_seconds']:.0f} s")
