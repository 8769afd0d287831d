"""The qat stage: fold BatchNorm, quantize the distilled student to INT8 with ModelOpt, calibrate
(PTQ), then fine-tune with the teacher still teaching (QAD) or on labels only (QAT).

Writes qat/student.pth (ModelOpt state + weights: what the export stage rebuilds), qat/config.json
(how to rebuild the FP32 student it came from), qat/eval.json and qat/budget.json/.md (accuracy
teacher -> FP32 student -> PTQ -> QAT/QAD).
"""
from __future__ import annotations

import time

from edgekd.data import load_dataset
from edgekd.distill.cache import TeacherTargets
from edgekd.distill.evaluate import evaluate
from edgekd.distill.trainer import Job, train
from edgekd.errors import RunDirError
from edgekd.models.io import load_model
from edgekd.quant.fold import fold_batchnorm
from edgekd.quant.int8 import calibration_batches, check_exclude, quantize, quantizers, restore_quantized, save_quantized
from edgekd.recipe import recipe_hash
from edgekd.rundir import RunDir, atomic_write_json, atomic_write_text, sha256_file
from edgekd.stages import threads


def load_fp32_student(run: RunDir):
    return load_model(run.artifact("distill", "weights"), run.artifact("distill", "config"))


def load_quantized_student(run: RunDir):
    """The QAT/QAD student as the qat stage left it: rebuilt from the distill config, folded,
    restored from ModelOpt's state. Returns (model, config)."""
    model, config = load_fp32_student(run)
    fold_batchnorm(model)
    model = restore_quantized(model, run.artifact("qat", "model"))
    return model.eval(), config


def _budget(rows: list[tuple[str, float | None]]) -> tuple[list[dict], str]:
    table, lines, prev = [], ["| stage | accuracy | vs previous |", "|---|---|---|"], None
    for label, acc in rows:
        if acc is None:
            continue
        delta = None if prev is None else round(acc - prev, 4)
        table.append({"stage": label, "accuracy": acc, "delta": delta})
        lines.append(f"| {label} | {100 * acc:.1f}% | {'' if delta is None else f'{100 * delta:+.1f} pt'} |")
        prev = acc
    return table, "\n".join(lines) + "\n"


def run_qat(run: RunDir, data_root=None, resume: bool = False, progress=None) -> dict:
    r, q = run.recipe, run.recipe.qat
    with threads(r.threads):
        student_w, student_c = run.artifact("distill", "weights"), run.artifact("distill", "config")
        data = load_dataset(r, data_root)
        if run.stage("distill").get("data_fingerprint") not in (None, data.fingerprint()):
            raise RunDirError(f"the student in {run.path} was distilled on other data than --data-root / EDGEKD_DATA "
                              f"gives now; re-run `edgekd distill {run.path}` or point at the same data")
        fp32, config = load_fp32_student(run)
        names = list(fp32.names)
        test = data.split("test")
        fp32_result = evaluate(fp32, test, names, data.classes)
        folded = fold_batchnorm(fp32)
        check_exclude(fp32, q)  # a recipe error before anything in the run directory changes
        started = run.begin("qat")
        out_dir = run.stage_dir("qat")

        calib = calibration_batches(data.split("train", 0), names, q.batch_size, q.calib_batches, r.seed)
        t0 = time.time()
        ptq = quantize(fp32, q, calib)
        calib_seconds = round(time.time() - t0, 2)
        ptq_path = save_quantized(ptq, out_dir / "ptq.pth")
        ptq_result = evaluate(ptq, test, names, data.classes)

        targets = None
        methods = [q.method] + ([m for m in ("qad", "qat") if m != q.method] if q.compare else [])
        # PTQ is deterministic given these, so a resumed run re-calibrates to the same start point
        fingerprint = f"{recipe_hash(r)}:{data.fingerprint()}:{sha256_file(student_w)}"
        results, histories, models = {}, {}, {}
        for method in methods:
            model, _ = load_fp32_student(run)
            fold_batchnorm(model)
            model = restore_quantized(model, ptq_path)
            job = Job(model, names, q, r.seed, out_dir / method / "checkpoint.pt", method, fingerprint=fingerprint)
            if method == "qad":
                targets = targets or _teacher_targets(run, data)
                job.targets = targets
                job.loss = {"alpha": q.alpha, "temperature": q.temperature, "beta": 0.0, "beta_modality": 0.0}
            histories[method] = train(job, data, resume, progress)
            model.eval()
            results[method], models[method] = evaluate(model, test, names, data.classes), model

        final = models[q.method]
        outputs = {"model": save_quantized(final, out_dir / "student.pth"), "ptq": ptq_path}
        outputs["config"] = atomic_write_json(out_dir / "config.json", {
            **config, "quantization": {"folded_batchnorms": folded, "method": q.method, "algorithm": q.algorithm,
                                       "exclude": q.exclude, "quantize_embeddings": q.quantize_embeddings}})
        qtable = quantizers(final)
        teacher_acc = run.stage("teacher")["metrics"]["accuracy"]
        rows = [("teacher (FP32)", teacher_acc), ("student FP32", fp32_result["accuracy"]),
                (f"student INT8 PTQ ({q.algorithm}, {q.calib_batches} batches)", ptq_result["accuracy"])]
        rows += [(f"student INT8 {m.upper()}", results[m]["accuracy"]) for m in methods[::-1]]
        budget, budget_md = _budget(rows)
        outputs["budget"] = atomic_write_json(out_dir / "budget.json", budget)
        outputs["budget_md"] = atomic_write_text(out_dir / "budget.md", "# Accuracy budget (test split)\n\n" + budget_md)
        outputs["eval"] = atomic_write_json(out_dir / "eval.json", {
            "fp32": fp32_result, "ptq": ptq_result,
            **{m: {**results[m], "history": histories[m]} for m in methods},
            "quantizers": qtable})
        enabled = [v for v in qtable.values() if v["enabled"]]
        metrics = {
            "fp32_accuracy": fp32_result["accuracy"],
            "ptq_accuracy": ptq_result["accuracy"],
            "accuracy": results[q.method]["accuracy"],
            "qat_accuracy": results["qat"]["accuracy"] if "qat" in results else None,
            "qad_accuracy": results["qad"]["accuracy"] if "qad" in results else None,
            "method": q.method,
            "accuracy_without": results[q.method]["accuracy_without"],
            "quantizers_enabled": len(enabled),
            "calib_seconds": calib_seconds,
            "epoch_seconds": round(sum(h["seconds"] for h in histories[q.method]) / max(1, len(histories[q.method])), 3),
            "budget": budget,
        }
        run.record("qat", started=started, outputs=outputs, metrics=metrics,
                   inputs={"student_weights": student_w, "student_config": student_c},
                   extra={"data_fingerprint": data.fingerprint()})
    return metrics


def _teacher_targets(run: RunDir, data) -> TeacherTargets:
    """The distill stage's cached teacher outputs (recomputed into the same place if deleted)."""
    teacher, _ = load_model(run.artifact("teacher", "weights"), run.artifact("teacher", "config"))
    rel = run.stage("distill").get("cache")
    targets = TeacherTargets(teacher, list(teacher.names), data, run.path / rel if rel else None)
    return targets
