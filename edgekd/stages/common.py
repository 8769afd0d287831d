"""What every stage needs from the run directory: its models by role, the data check, threads.

One accessor per artifact kind, so no stage (nor eval, nor the bench's PyTorch backends) rebuilds
a model from manifest paths on its own.
"""
from __future__ import annotations

import contextlib

from edgekd.errors import RunDirError, UsageError

# role -> (stage that records it, weights output, config output)
ROLES = {"teacher": ("teacher", "weights", "config"), "student": ("distill", "weights", "config"),
         "baseline": ("distill", "baseline_weights", "baseline_config"), "qat": ("qat", "model", "config")}


@contextlib.contextmanager
def threads(n: int):
    """Pin PyTorch's intra-op threads: on busy 2-core hosts 2 threads ran 15-20x slower than 1."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_model(run, role: str):
    """(model in eval mode, its config) for `role`: teacher, student (the distilled FP32 student),
    baseline (the same student trained without KD) or qat (the INT8 fake-quant student, rebuilt
    from the distill config, BatchNorm folded, ModelOpt state restored)."""
    from edgekd.models.io import load_model as load_saved

    if role not in ROLES:
        raise UsageError(f"unknown model role {role!r}: choose {', '.join(ROLES)}")
    stage, weights, config = ROLES[role]
    if role == "baseline" and run.is_done("distill") and weights not in run.stage("distill")["outputs"]:
        raise UsageError("this run trained no baseline; set distill.baseline: true in the recipe and re-run distill")
    if role == "student" and pruned(run) is not None:  # the pruned, recovered student replaces the distilled one
        from edgekd.quant.prune import restore_pruned

        model, cfg = distilled_student(run)
        return restore_pruned(model, list(model.names), run.artifact("prune", "model")), {**cfg, "pruned": True}
    if role == "qat":
        from edgekd.quant.fold import fold_batchnorm
        from edgekd.quant.int8 import restore_quantized

        model, cfg = load_model(run, "student")
        fold_batchnorm(model)
        return restore_quantized(model, run.artifact("qat", "model")).eval(), cfg
    return load_saved(run.artifact(stage, weights), run.artifact(stage, config))


def pruned(run) -> dict | None:
    """The prune stage's metrics when its pruned student replaced the distilled one, else None
    (not run, skipped, or the unpruned student won a latency budget)."""
    entry = run.stage("prune") if run.is_done("prune") else None
    return entry["metrics"] if entry and "model" in entry["outputs"] else None


def distilled_student(run):
    """(model, config) of the distill stage's student, pruned or not later."""
    from edgekd.models.io import load_model as load_saved

    return load_saved(run.artifact("distill", "weights"), run.artifact("distill", "config"))


def recorded_baselines(run) -> dict | None:
    """The teacher stage's linear baselines, {name: {val_accuracy, accuracy}} (None when not fitted)."""
    return ((run.stage("teacher") or {}).get("metrics") or {}).get("baselines")


def check_data(run, stage: str, data) -> None:
    """Refuse to continue from stage `stage`'s models when the data now differs from theirs."""
    recorded = (run.stage(stage) or {}).get("data_fingerprint")
    if recorded not in (None, data.fingerprint()):
        raise RunDirError(f"the {stage} stage of {run.path} used other data than --data-root / EDGEKD_DATA gives "
                          f"now; point at the same data or re-run `edgekd {stage} {run.path}`")


def example_batch(data, names: list[str]) -> dict:
    """One test sample per input, as torch tensors (FLOP counting, export tracing)."""
    import torch

    split = data.split("test")
    return {n: torch.from_numpy(split.inputs[n][:1]) for n in names}


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def teacher_data(run, data, embeddings: bool = True, view=None):
    """The dataset as the run's teacher sees it: its own processors' inputs (from the teacher's
    config.json) for the same rows, and -- with `embeddings` -- the frozen encoders' cached
    embeddings in place of their token ids where the teacher stage left them (same outputs, no
    second pass through a large encoder). `view`: an ids view already built for this run, reused."""
    import json

    import numpy as np

    from edgekd.data.base import ModalitySpec
    from edgekd.data.teacher_inputs import TeacherView

    if view is None:
        config = json.loads(run.artifact("teacher", "config").read_text(encoding="utf-8"))
        view = TeacherView(data, config.get("processors") or {})
    for name, rel in ((run.stage("teacher") or {}).get("embeddings") or {}).items() if embeddings else ():
        path = run.path / rel / f"{name}.npy"
        if (run.path / rel / f"{name}.meta.json").is_file() and path.is_file():
            rows = np.load(path, mmap_mode="r", allow_pickle=False)
            if rows.shape[0] == len(view.rows(name)):
                kind = view.modalities[name].kind
                view = view.with_rows(name, ModalitySpec(name, kind, (rows.shape[1],), "float32"), rows)
    return view


def val_accuracy(model, data, names: list[str]) -> float | None:
    """Accuracy on the validation split (None without one): what settings are chosen on."""
    if not data.has_split("val"):
        return None
    from edgekd.distill.evaluate import predict

    val = data.split("val")
    return round(float((predict(model, val, names).argmax(1) == val.labels).mean()), 4)


def student_data(run, data):
    """The dataset as the run's student sees it: its text modalities through the tokenizer the
    distill stage chose (student.text_tokenizer: teacher -- the teacher's, vocabulary pruned), as
    recorded in the student's config.json; the dataset itself otherwise."""
    import json

    from edgekd.data.teacher_inputs import TeacherView

    config = json.loads(run.artifact("distill", "config").read_text(encoding="utf-8"))
    return TeacherView(data, config["processors"], suffix="") if config.get("processors") else data


def tensorboard_dir(run, stage: str, label: str | None, resume: bool):
    """runs/<name>/tb/<stage>[/<label>]: emptied when the stage starts afresh (a re-run's curves are
    not mixed with the last run's), kept on --resume, which appends to them."""
    import re
    import shutil

    folder = run.path / "tb" / stage / (re.sub(r"[^A-Za-z0-9_.-]+", "_", label) if label else "")
    if not resume:
        shutil.rmtree(folder, ignore_errors=True)
    return folder


def distill_inputs(run, recipe, data, names: list[str], teacher_processors: dict):
    """(student data, teacher data, ViewSpec, student processors) for distilling with `recipe`'s
    student and distill sections: distill.views augmented copies of the train split, each read
    through both input paths (a frozen encoder's cached embeddings are for the rows as written, so
    views 1.. feed it token ids). Seeded by distill_seed: the seed study (bench/kd_seeds.py) varies
    the views too."""
    from edgekd.data.teacher_inputs import TeacherView
    from edgekd.data.views import ViewSpec, text_views, with_views
    from edgekd.distill.student_setup import distill_seed, student_processors

    processors = student_processors(recipe, data, names, teacher_processors)
    d = recipe.distill
    spec = ViewSpec(d.views, d.word_dropout, distill_seed(recipe))
    views = text_views(data, names, spec)
    sdata = with_views([TeacherView(v, processors, suffix="") if processors else v for v in views], spec)
    tdata = with_views([teacher_data(run, v, embeddings=k == 0) for k, v in enumerate(views)], spec)
    return sdata, tdata, spec, processors


def with_point(recipe, point: dict):
    """`recipe` with its student and distill sections set to a searched point (edgekd.search.space)."""
    student = recipe.student.model_copy(update={"text_ngrams": 1, "text_kernel": None, **point["student"],
                                                "budget": None})
    return recipe.model_copy(update={"student": student, "distill": recipe.distill.model_copy(update=point["distill"])})


def chosen_recipe(run):
    """The run's recipe as the stages after the search read it: with `student: auto`, its student and
    distill sections are the search's choice (recorded in the manifest), else the recipe as written."""
    r = run.recipe
    if r.student.name != "auto":
        return r
    entry = run.stage("search") if run.is_done("search") else None
    if not entry or not (entry.get("metrics") or {}).get("choice"):
        raise UsageError(f"student.name: auto needs the search stage's choice first: run `edgekd search {run.path}` "
                         "(or `edgekd run`)")
    return with_point(r, entry["metrics"]["choice"])
