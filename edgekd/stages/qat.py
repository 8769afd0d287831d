"""The qat stage: fold BatchNorm, quantize the distilled student to INT8 with ModelOpt, calibrate
(PTQ), then fine-tune with the teacher still teaching (QAD) or on labels only (QAT).

Writes qat/student.pth (ModelOpt state + weights: what the export stage rebuilds), qat/config.json
(how to rebuild the FP32 student it came from), qat/eval.json and qat/budget.json/.md (accuracy
teacher -> FP32 student -> PTQ -> QAT/QAD).
"""
from __future__ import annotations

import time

from edgekd import distributed as dist
from edgekd.data import load_dataset
from edgekd.distill.baselines import beaten_by, budget_rows
from edgekd.distill.cache import SelfTargets, TeacherTargets
from edgekd.distill.evaluate import evaluate
from edgekd.distill.losses import loss_weights
from edgekd.distill.trainer import Job, train
from edgekd.errors import CheckpointError
from edgekd.files import atomic_write_json, atomic_write_text, sha256_file
from edgekd.quant.fold import fold_batchnorm
from edgekd.quant.int8 import (
    calibration_batches,
    check_exclude,
    quantizable_layers,
    quantize,
    quantizers,
    restore_quantized,
    save_quantized,
)
from edgekd.recipe import recipe_hash
from edgekd.rundir import RunDir
from edgekd.stages.common import (
    check_data,
    chosen_recipe,
    load_model,
    pct,
    pruned,
    recorded_baselines,
    student_data,
    teacher_data,
    tensorboard_dir,
    threads,
    val_accuracy,
)


def list_layers(run: RunDir) -> list[str]:
    """The distilled student's quantizable layer names, after BatchNorm folding (for qat.exclude)."""
    model, _ = load_model(run, "student")
    fold_batchnorm(model)
    return quantizable_layers(model, run.recipe.qat.quantize_embeddings)


def _variants(q) -> dict[str, tuple[str, str | None]]:
    """The fine-tunes to run: the recipe's method first; with compare, plain QAT and QAD with both
    kinds of targets too, all from the same PTQ start point."""
    other = "distill" if q.teacher == "student" else "student"
    main = {"qad": ("qad", q.teacher)} if q.method == "qad" else {"qat": ("qat", None)}
    if not q.compare:
        return main
    return {**main, "qat": ("qat", None), "qad": ("qad", q.teacher), f"qad_{other}": ("qad", other)}


def _label(method: str, teacher: str | None) -> str:
    if method == "qat":
        return "student INT8 QAT (labels only)"
    return "student INT8 QAD (" + ("FP32 student as teacher)" if teacher == "student" else "cached teacher outputs)")


def _budget(rows: list[tuple[str, float | None]], base: int = 1) -> list[dict]:
    """Rows teacher, the FP32 student(s) (distilled, then pruned when the prune stage ran), then the
    INT8 students; deltas: each FP32 row against the row before it, every INT8 student against
    rows[base], the FP32 student it was quantized from."""
    table = []
    for i, (label, acc) in enumerate(rows):
        ref = None if i == 0 else rows[i - 1] if i <= base else rows[base]
        delta = None if ref is None else round(acc - ref[1], 4)
        table.append({"stage": label, "accuracy": acc, "delta": delta, "against": ref[0] if ref else None})
    return table


def _markdown(table: list[dict]) -> str:
    lines = ["| stage | accuracy | delta | against |", "|---|---|---|---|"]
    for row in table:
        delta = "" if row["delta"] is None else f"{100 * row['delta']:+.1f} pt"
        lines.append(f"| {row['stage']} | {100 * row['accuracy']:.1f}% | {delta} | {row['against'] or ''} |")
    return "\n".join(lines) + "\n"


def run(run: RunDir, data_root=None, resume: bool = False, progress=None) -> dict:
    r, q = chosen_recipe(run), run.recipe.qat
    with threads(r.threads):
        student_w, student_c = run.artifact("distill", "weights"), run.artifact("distill", "config")
        data = load_dataset(r, data_root)
        check_data(run, "distill", data)
        sdata = student_data(run, data)  # the student's inputs (its text tokenizer); `data` feeds the teacher
        fp32, config = load_model(run, "student")
        names = list(fp32.names)
        test = sdata.split("test")
        fp32_result = evaluate(fp32, test, names, data.classes)
        folded = fold_batchnorm(fp32)
        check_exclude(fp32, q)  # a recipe error before anything in the run directory changes
        started = run.begin("qat")
        out_dir = run.stage_dir("qat")

        calib = calibration_batches(sdata.split("train", 0), names, q.batch_size, q.calib_batches, r.seed)
        t0 = time.time()
        ptq = quantize(fp32, q, calib)
        calib_seconds = round(time.time() - t0, 2)
        ptq_path = save_quantized(ptq, out_dir / "ptq.pth")
        dist.barrier()  # under torchrun every rank restores the file rank 0 wrote
        ptq_result = evaluate(ptq, test, names, data.classes)

        targets = None
        variants = _variants(q)  # key -> (method, QAD teacher); the recipe's choice first
        # PTQ is deterministic given these, so a resumed run re-calibrates to the same start point
        fingerprint = f"{recipe_hash(r)}:{data.fingerprint()}:{sha256_file(student_w)}"
        results, histories, models = {}, {}, {}
        for key, (method, teacher) in variants.items():
            model, _ = load_model(run, "student")
            fold_batchnorm(model)
            model = restore_quantized(model, ptq_path)
            job = Job(model, names, q, r.seed, out_dir / key / "checkpoint.pt", key, fingerprint=fingerprint,
                      tensorboard=tensorboard_dir(run, "qat", key, resume))
            if method == "qad" and teacher == "student":
                reference, _ = load_model(run, "student")
                job.targets = SelfTargets(reference)
                job.loss = loss_weights(r.distill, q, features=False)
            elif method == "qad":
                targets = targets or _teacher_targets(run, data)
                job.targets = targets
                job.projectors, job.loss = _qad_objective(run, r, model, targets)
            histories[key] = train(job, sdata, resume, progress)
            model.eval()
            results[key], models[key] = evaluate(model, test, names, data.classes), model
        main = next(iter(variants))

        final = models[main]
        outputs = {"model": save_quantized(final, out_dir / "student.pth"), "ptq": ptq_path}
        outputs["config"] = atomic_write_json(out_dir / "config.json", {
            **config, "quantization": {"folded_batchnorms": folded, "method": q.method, "algorithm": q.algorithm,
                                       "exclude": q.exclude, "quantize_embeddings": q.quantize_embeddings}})
        qtable = quantizers(final)
        teacher_acc = run.stage("teacher")["metrics"]["accuracy"]
        p = pruned(run)
        rows = [("teacher (FP32)", teacher_acc)]
        if p:
            rows.append(("student FP32, distilled (before pruning)", p["accuracy_before"]))
        rows += [("student FP32" + (f", pruned to {p['flops_ratio']:.0%} FLOPs and recovered" if p else ""),
                  fp32_result["accuracy"]),
                 (f"student INT8 PTQ ({q.algorithm}, {q.calib_batches} batches)", ptq_result["accuracy"])]
        rows += [(_label(*variants[k]), results[k]["accuracy"]) for k in sorted(variants, key=lambda k: k == main)]
        baselines = recorded_baselines(run)
        # what a linear model reaches first, then the FP32 student the INT8 ones come from
        budget = budget_rows(baselines) + _budget(rows, base=2 if p else 1)
        budget_md = _markdown(budget)
        verdict = beaten_by(baselines, results[main]["accuracy"], "the INT8 student")
        if verdict:
            budget_md += f"\n**Note: {verdict}.**\n"
        outputs["budget"] = atomic_write_json(out_dir / "budget.json", budget)
        outputs["budget_md"] = atomic_write_text(out_dir / "budget.md", "# Accuracy budget (test split)\n\n" + budget_md)
        outputs["eval"] = atomic_write_json(out_dir / "eval.json", {
            "fp32": fp32_result, "ptq": ptq_result,
            **{k: {**results[k], "history": histories[k]} for k in variants},
            "quantizers": qtable})
        enabled = [v for v in qtable.values() if v["enabled"]]
        metrics = {
            "fp32_accuracy": fp32_result["accuracy"],
            "ptq_accuracy": ptq_result["accuracy"],
            "accuracy": results[main]["accuracy"],
            # settings are chosen on these, figures reported on test (None without a validation split)
            "val_accuracy": val_accuracy(final, sdata, names),
            "fp32_val_accuracy": val_accuracy(fp32, sdata, names),
            "qat_accuracy": results["qat"]["accuracy"] if "qat" in results else None,
            "qad_accuracy": results["qad"]["accuracy"] if "qad" in results else None,
            **{f"qad_{t}_accuracy": next((results[k]["accuracy"] for k, v in variants.items() if v == ("qad", t)), None)
               for t in ("student", "distill")},
            "method": q.method,
            "qad_teacher": q.teacher,
            "accuracy_without": results[main]["accuracy_without"],
            "quantizers_enabled": len(enabled),
            "calib_seconds": calib_seconds,
            "epoch_seconds": round(sum(h["seconds"] for h in histories[main]) / max(1, len(histories[main])), 3),
            "budget": budget,
            **({"beaten_by_baseline": verdict} if verdict else {}),
        }
        run.record("qat", started=started, outputs=outputs, metrics=metrics,
                   inputs={"student_weights": student_w, "student_config": student_c},
                   extra={"data_fingerprint": data.fingerprint()})
    return metrics


def _qad_objective(run: RunDir, r, student, targets) -> tuple:
    """The distill stage's loss, continued under fake quantization: changing the objective at this
    point (e.g. dropping the feature term) moves the weights away from where distillation left
    them, which cost 0.5-0.9 point of accuracy in the measured runs."""
    from safetensors.torch import load_file

    from edgekd.distill.losses import Projectors

    if "projectors" not in run.stage("distill")["outputs"]:  # a run distilled before projectors were kept
        return None, loss_weights(r.distill, r.qat, features=False)
    loss = loss_weights(r.distill, r.qat)
    proj = Projectors.between(student, student.names, targets)
    try:
        proj.load_state_dict(load_file(str(run.artifact("distill", "projectors"))))
    except (RuntimeError, OSError, ValueError) as e:
        raise CheckpointError(f"the distill stage's projectors do not fit this student ({e}); re-run "
                              f"`edgekd distill {run.path}`") from e
    return proj, loss


def _teacher_targets(run: RunDir, data) -> TeacherTargets:
    """The distill stage's cached teacher outputs (recomputed into the same place if deleted)."""
    teacher, _ = load_model(run, "teacher")
    rel = run.stage("distill").get("cache")
    targets = TeacherTargets(teacher, list(teacher.names), teacher_data(run, data), run.path / rel if rel else None)
    return targets


def summary(m: dict) -> str:
    names = {"qat_accuracy": "QAT", "qad_student_accuracy": "QAD/FP32-student teacher",
             "qad_distill_accuracy": "QAD/cached teacher"}
    side = ", ".join(f"{v} {pct(m[k])}" for k, v in names.items() if m.get(k) is not None)
    lines = [f"qat: INT8 {m['method'].upper()} accuracy {pct(m['accuracy'])} (FP32 {pct(m['fp32_accuracy'])}, "
             f"PTQ {pct(m['ptq_accuracy'])}; {side}); {m['quantizers_enabled']} quantizers"
             + (f"; val {pct(m['val_accuracy'])} (FP32 {pct(m['fp32_val_accuracy'])})"
                if m.get("val_accuracy") is not None else ""),
             "  accuracy budget (test split):"]
    for row in m.get("budget", []):
        delta = "" if row["delta"] is None else f"  {100 * row['delta']:+.1f} pt vs {row['against']}"
        lines.append(f"    {row['stage']:<46} {pct(row['accuracy']):>6}{delta}")
    if m.get("beaten_by_baseline"):
        lines.append(f"  note: {m['beaten_by_baseline']}")
    return "\n".join(lines)
