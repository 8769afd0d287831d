"""The prune stage (between distill and qat; off unless `prune.enabled`): fewer channels with NVIDIA
ModelOpt's FastNAS, then recovery by distillation against the cached teacher outputs.

FastNAS searches per-layer channel counts under a FLOPs or parameter bound, scoring candidates by
validation accuracy after re-estimating BatchNorm statistics on real train batches; the pruned
architecture and weights are saved through ModelOpt's state (`mto.save`, restored with
`weights_only=True`), so qat and export rebuild exactly this student (`load_model(run, "student")`
returns it once this stage is done). Linear layers keep their width: the embedding every later
stage relies on (export's io_spec, the distill projectors) stays the same size.

Under a latency budget (`prune.constraint`) the stage prunes to each of `prune.candidates`' FLOPs
bounds, gives each a short recovery, exports each in the deploy precision and times them together
with the bench's harness (edgekd.stages.prune_budget, edgekd.benchmark.budget); the most accurate on validation whose latency upper
bound meets the budget gets the full recovery. The unpruned student is a candidate too: when it wins,
nothing is pruned and later stages keep the distilled student. When none meets the budget the stage
fails with the fastest candidate's figure, leaving the candidate table for the user.

Writes prune/search.pth (ModelOpt's search checkpoint, its per-layer sensitivity map: a killed
search resumes with --resume), prune/student.pth (the recovered student), prune/eval.json, and under
a budget prune/candidates.{json,md,png} and prune/candidates/ (each candidate's ONNX). Manifest
metrics: FLOPs and parameters before and after, validation and test accuracy before, right after
pruning and after recovery, and under a budget the choice, its latency and the reason.
"""
from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING

from edgekd.errors import RecipeError, UsageError
from edgekd.files import atomic_write_text
from edgekd.stages.common import chosen_recipe, pct, tensorboard_dir

if TYPE_CHECKING:
    from edgekd.rundir import RunDir


def constraint(p) -> dict:
    """{"flops": ...}, {"params": ...} (ModelOpt's form: "50%" or an absolute number) or the latency budget."""
    if p.constraint is not None:
        return p.constraint.model_dump()
    key, value = ("flops", p.flops) if p.flops is not None else ("params", p.params)
    return {key: value}


def _search_checkpoint(out, key: str, resume: bool):
    """ModelOpt's search checkpoint (its per-layer sensitivity map, shared by every candidate), kept
    only on --resume and only for the same student, divisor and data; a stale map would steer the
    search by another model's scores."""
    ck, stamp = out / "search.pth", out / "search.key"
    if not (resume and ck.is_file() and stamp.is_file() and stamp.read_text() == key):
        ck.unlink(missing_ok=True)
        atomic_write_text(stamp, key)
    return ck


def run(run: RunDir, data_root=None, resume: bool = False, progress=None) -> dict:
    r, p = chosen_recipe(run), run.recipe.prune
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
    import numpy as np
    import torch

    from edgekd.benchmark.budget import check_budget
    from edgekd.data import load_dataset
    from edgekd.data.loader import batches, sequential
    from edgekd.distill.cache import TeacherTargets
    from edgekd.distill.evaluate import evaluate
    from edgekd.distill.losses import Projectors, loss_weights
    from edgekd.distill.trainer import Job, train
    from edgekd.files import atomic_path, atomic_write_json
    from edgekd.models import count_flops, count_params
    from edgekd.quant.int8 import modelopt
    from edgekd.quant.prune import positional, prune_to
    from edgekd.stages import prune_budget
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
        budget = p.constraint
        divisor, divisor_from = prune_budget.divisor(p, budget.backend if budget else None, r.build.target)
        floor = check_budget(budget, r.bench.threads) if budget else None  # before any work; timed as the bench times
        student, _ = distilled_student(run)
        names = list(student.names)
        started = run.begin("prune")
        out = run.stage_dir("prune")
        val, test = sdata.split("val"), sdata.split("test")
        example = example_batch(sdata, names)
        def score(m) -> float:  # FastNAS's score: validation accuracy of the wrapped candidate, batch by batch
            m.eval()
            right = 0
            with torch.no_grad():
                for idx, x in batches({n: val.inputs[n] for n in names}, sequential(len(val), 512)):
                    right += int((m(*(torch.from_numpy(x[n]) for n in names)).argmax(1).numpy() == val.labels[idx]).sum())
            return right / max(1, len(val))

        def measure(m) -> dict:
            return {"flops": count_flops(m, example), "params": count_params(m),
                    "val_accuracy": round(score(positional(m, names)), 4),
                    "accuracy": evaluate(m, test, names, data.classes)["accuracy"]}

        before = measure(student)
        train_split = sdata.split("train", 0)
        order = np.random.default_rng([r.seed, 11]).permutation(len(train_split))
        calib = [{n: train_split.inputs[n][order[i:i + 64]] for n in names}
                 for i in range(0, min(len(order), 64 * p.calib_batches), 64)]
        loader = [tuple(torch.from_numpy(b[n]) for n in names) for b in calib]
        weights = run.stage("distill")["outputs"]["weights"]["sha256"]  # verified by distilled_student
        key = f"{weights}:{divisor}:{p.calib_batches}:{data.fingerprint()}"
        search = _search_checkpoint(out, key, resume)

        def prune(bound: dict):
            return prune_to(positional(copy.deepcopy(student), names), bound, divisor, loader, score,
                            tuple(torch.from_numpy(val.inputs[n][:2]) for n in names), search)

        # recovery: the distill objective against the cached teacher outputs, own epochs and lr
        teacher, _ = load_model(run, "teacher")
        cache = run.stage("distill").get("cache")
        targets = TeacherTargets(teacher, list(teacher.names), teacher_data(run, data),
                                 run.path / cache if cache else None)
        targets.prepare(data.num_pairings)

        def recover(model, epochs: int, checkpoint, label: str, what: str) -> list[dict]:
            # --resume continues a checkpoint only for the same student, divisor, data and architecture
            job = Job(model, names, p.model_copy(update={"epochs": epochs}), r.seed, checkpoint, label,
                      fingerprint=f"{label}:{key}:{what}", tensorboard=tensorboard_dir(run, "prune", what, resume))
            job.targets, job.loss = targets, loss_weights(r.distill)
            job.projectors = Projectors.between(model, names, targets)
            history = train(job, sdata, resume, progress)
            model.eval()
            return history

        t0 = time.time()
        extra_metrics: dict = {}
        if budget is None:
            pruned = prune(constraint(p))
            search_seconds, after = round(time.time() - t0, 1), measure(pruned.model)
        else:
            search_steps = prune_budget.Search(student, names, example, calib, test, divisor, prune, recover, measure)
            pruned, after, extra_metrics = prune_budget.candidates(run, out, search_steps, before, budget, floor)
            search_seconds = extra_metrics.pop("seconds")
        if pruned is None:  # the unpruned student is the most accurate one within the budget
            history, recovered, result = [], before, evaluate(student, test, names, data.classes)
        else:
            model = pruned.model  # under a budget: after its short recovery, which this continues
            chosen = extra_metrics.get("chosen")  # under a budget: one final checkpoint per candidate, for --resume
            checkpoint = out / "candidates" / f"{chosen[:-1]}.final.pt" if chosen else out / "checkpoint.pt"
            history = recover(model, p.epochs, checkpoint, "prune", chosen or str(constraint(p)))
            result = evaluate(model, test, names, data.classes)
            recovered = {"val_accuracy": round(score(positional(model, names)), 4), "accuracy": result["accuracy"]}
        metrics = {
            "constraint": constraint(p), "channel_divisor": divisor, "channel_divisor_from": divisor_from,
            "flops_before": before["flops"], "flops": after["flops"],
            "params_before": before["params"], "params": after["params"],
            "flops_ratio": round(after["flops"] / before["flops"], 4),
            "val_accuracy_before": before["val_accuracy"], "accuracy_before": before["accuracy"],
            "val_accuracy_pruned": after["val_accuracy"], "accuracy_pruned": after["accuracy"],
            "val_accuracy": recovered["val_accuracy"], "accuracy": recovered["accuracy"],
            "accuracy_without": result["accuracy_without"], "search_seconds": search_seconds,
            "epoch_seconds": round(sum(h["seconds"] for h in history) / max(1, len(history)), 3),
            **extra_metrics,
        }
        outputs = {"search": search}
        if pruned is not None:
            _, mto = modelopt()
            with atomic_path(out / "student.pth") as tmp:
                mto.save(pruned, tmp)
            outputs["model"] = out / "student.pth"
        for name in ("candidates.json", "candidates.md", "candidates.png"):
            if (out / name).is_file() and budget is not None:
                outputs[name.replace(".", "_")] = out / name
        outputs["eval"] = atomic_write_json(out / "eval.json", {**result, "history": history, "metrics": metrics})
        run.record("prune", started=started, outputs=outputs, metrics=metrics,
                   inputs={"student_weights": run.artifact("distill", "weights"),
                           "student_config": run.artifact("distill", "config")},
                   extra={"data_fingerprint": data.fingerprint()})
    return metrics


def summary(m: dict) -> str:
    if m.get("skipped"):
        return f"prune: skipped ({m['skipped']})"
    budget = ""
    if "latency_ms" in m["constraint"]:
        c, lat = m["constraint"], m["latency"]
        budget = (f"; {m['chosen']} chosen of {m['candidates']} candidates under {c['metric'][:-3]} <= "
                  f"{c['latency_ms']:g} ms on {c['backend']} b{c['batch']} ({lat['value']:.4f} ms, upper bound "
                  f"{lat['hi']:.4f})")
    return (f"prune: FLOPs {m['flops_before']:,} -> {m['flops']:,} ({pct(m['flops_ratio'])}), params "
            f"{m['params_before']:,} -> {m['params']:,}; test {pct(m['accuracy_before'])} -> {pct(m['accuracy_pruned'])} "
            f"pruned -> {pct(m['accuracy'])} recovered (val {pct(m['val_accuracy_before'])} -> "
            f"{pct(m['val_accuracy_pruned'])} -> {pct(m['val_accuracy'])}); search {m['search_seconds']:.0f} s{budget}")
