"""The distill stage: train the fused student against the teacher, and the same student without
it (the baseline that `kd_gain` is measured against)."""
from __future__ import annotations

import time

from edgekd.data import load_dataset
from edgekd.distill.cache import TeacherTargets
from edgekd.distill.embedding_init import init_text_embeddings
from edgekd.distill.evaluate import evaluate
from edgekd.distill.losses import Projectors, loss_weights
from edgekd.distill.student_setup import build_student, distill_seed, student_modalities
from edgekd.distill.trainer import Job, train
from edgekd.files import atomic_path, atomic_write_json, sha256_file
from edgekd.models import count_flops, count_params
from edgekd.plots import confusion_png
from edgekd.recipe import recipe_hash
from edgekd.rundir import RunDir
from edgekd.stages.common import (
    check_data,
    chosen_recipe,
    distill_inputs,
    example_batch,
    load_model,
    pct,
    tensorboard_dir,
    threads,
    val_accuracy,
)


def _fit_student(run, recipe, data, names, label, targets, resume, progress, kd: bool, fingerprint: str,
                 teacher_processors: dict | None = None):
    from edgekd.models.io import save_model

    student, options, specs = build_student(recipe, data, names)
    d = recipe.distill
    own = getattr(data, "params", None)  # the teacher's tokens: start from its own (PCA-projected) embeddings
    text_init = init_text_embeddings(student, targets.teacher, own, teacher_processors or {}) if kd and own else {}
    job = Job(student, names, d, distill_seed(recipe), run.stage_dir("distill") / label / "checkpoint.pt", label,
              fingerprint=fingerprint, tensorboard=tensorboard_dir(run, "distill", label, resume))
    if kd:
        job.targets = targets
        job.projectors = Projectors.between(student, names, targets)
        job.loss = loss_weights(d)
    history = train(job, data, resume, progress)
    files = save_model(student, run.stage_dir("distill") / label, role="student", name=recipe.student.name,
                       options=options, modalities=specs, classes=data.classes,
                       data_fingerprint=data.fingerprint(), processors=getattr(data, "params", None))
    if job.projectors is not None:  # QAD continues the same objective, feature terms included
        from safetensors.torch import save_file

        with atomic_path(run.stage_dir("distill") / label / "projectors.safetensors") as tmp:
            save_file(job.projectors.state_dict(), str(tmp))
        files["projectors"] = run.stage_dir("distill") / label / "projectors.safetensors"
    return student, history, files, text_init


def run(run: RunDir, data_root=None, resume: bool = False, progress=None) -> dict:
    r = chosen_recipe(run)
    with threads(r.threads):
        teacher_w, teacher_c = run.artifact("teacher", "weights"), run.artifact("teacher", "config")
        teacher, teacher_config = load_model(run, "teacher")
        teacher_processors = teacher_config.get("processors") or {}
        data = load_dataset(r, data_root)
        check_data(run, "teacher", data)
        teacher_names = list(teacher.names)
        names = student_modalities(r, data)
        d = r.distill
        sdata, tdata, spec, processors = distill_inputs(run, r, data, names, teacher_processors)
        started = run.begin("distill")
        teacher_sha = sha256_file(teacher_w)
        fingerprint = f"{recipe_hash(r)}:{data.fingerprint()}:{teacher_sha}"

        cache_dir = None
        if r.distill.cache:
            cache_dir = run.path / "cache" / f"teacher-{teacher_sha[:12]}-{spec.fingerprint(data.fingerprint())}"
        targets = TeacherTargets(teacher, teacher_names, tdata, cache_dir)
        t0 = time.time()
        targets.prepare(tdata.num_pairings)
        cache_seconds = round(time.time() - t0, 2)

        student, history, files, text_init = _fit_student(
            run, r, sdata, names, "student", targets, resume, progress, kd=True, fingerprint=fingerprint,
            teacher_processors=teacher_processors)
        test = sdata.split("test")
        result = evaluate(student, test, names, data.classes)
        teacher_acc = run.stage("teacher")["metrics"]["accuracy"]
        metrics = {
            "accuracy": result["accuracy"],
            "val_accuracy": val_accuracy(student, sdata, names),
            "params": count_params(student),
            "flops": count_flops(student, example_batch(sdata, names)),
            "accuracy_without": result["accuracy_without"],
            "teacher_accuracy": teacher_acc,
            "teacher_params_ratio": round(count_params(teacher) / count_params(student), 2),
            "modalities": names,
            "cache_seconds": cache_seconds if cache_dir else None,
            **({"views": d.views, "word_dropout": d.word_dropout} if d.views > 1 else {}),
            "epoch_seconds": round(sum(h["seconds"] for h in history) / max(1, len(history)), 3),
            **({"text_init": text_init} if text_init else {}),
        }
        outputs = {"weights": files["weights"], "config": files["config"], "projectors": files["projectors"]}
        report = {"student": {**result, "history": history}}
        if r.distill.baseline:
            base, base_hist, base_files, _ = _fit_student(run, r, sdata, names, "baseline", None, resume, progress,
                                                       kd=False, fingerprint=fingerprint)
            base_result = evaluate(base, test, names, data.classes)
            metrics["baseline_accuracy"] = base_result["accuracy"]
            metrics["baseline_val_accuracy"] = val_accuracy(base, sdata, names)
            metrics["kd_gain"] = round(result["accuracy"] - base_result["accuracy"], 4)
            outputs.update({"baseline_weights": base_files["weights"], "baseline_config": base_files["config"]})
            report["baseline"] = {**base_result, "history": base_hist}
        else:
            metrics["baseline_accuracy"] = None
            metrics["kd_gain"] = None
        outputs["eval"] = atomic_write_json(run.stage_dir("distill") / "eval.json", report)
        png = confusion_png(result["confusion"], data.classes, f"student, test accuracy {result['accuracy']:.3f}",
                            run.stage_dir("distill") / "confusion.png")
        if png is not None:  # None where matplotlib is not installed
            outputs["confusion"] = png
        run.record("distill", started=started, outputs=outputs,
                   inputs={"teacher_weights": teacher_w, "teacher_config": teacher_c}, metrics=metrics,
                   extra={"cache": str(cache_dir.relative_to(run.path)) if cache_dir else None,
                          "data_fingerprint": data.fingerprint()})
    return metrics


def summary(m: dict) -> str:
    gain = ("" if m.get("kd_gain") is None
            else f", no-KD baseline {pct(m['baseline_accuracy'])}, KD gain {100 * m['kd_gain']:+.1f} pt")
    if m.get("val_accuracy") is not None:
        gain += f"; val {pct(m['val_accuracy'])}" + (f" vs baseline {pct(m['baseline_val_accuracy'])}"
                                                      if m.get("baseline_val_accuracy") is not None else "")
    return (f"distill: student accuracy {pct(m['accuracy'])} (teacher {pct(m['teacher_accuracy'])}){gain}; "
            f"{m['params']:,} params (1/{m['teacher_params_ratio']:.0f} of the teacher)")
