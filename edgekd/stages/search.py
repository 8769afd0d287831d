"""The search stage (`student.name: auto`, or `edgekd search`): the most accurate student on
validation that meets `student.budget`, searched with Optuna against the cached teacher outputs.

Each trial samples a student and its distillation settings (edgekd.search.space), is refused before
training when it breaks a size bound or its deployable form (CPU INT8 or FP32, as the export would
ship it) misses the latency budget, and otherwise is distilled on the fit rows while Hyperband stops
the hopeless ones early. The winner's settings are recorded in the manifest; the distill stage then
trains it on every train row and the pipeline goes on as for a student written in the recipe.
Skipped (done, nothing to do) when the recipe names its student.
"""
from __future__ import annotations

import time

from edgekd.data import load_dataset
from edgekd.data.holdout import HeldOut, holdout
from edgekd.distill.cache import TeacherTargets
from edgekd.distill.embedding_init import init_text_embeddings
from edgekd.distill.losses import Projectors, loss_weights
from edgekd.distill.student_setup import build_student, distill_seed, student_modalities
from edgekd.distill.trainer import Job, train
from edgekd.errors import TrainingError, UsageError
from edgekd.files import atomic_write_text, sha256_file
from edgekd.models import count_params
from edgekd.recipe import StudentBudget
from edgekd.rundir import RunDir
from edgekd.search import study as st
from edgekd.search.space import Space, architecture
from edgekd.search.trial import HeldOutTargets, deployed_size_and_latency
from edgekd.stages.common import (
    check_data,
    distill_inputs,
    example_batch,
    load_model,
    pct,
    recorded_baselines,
    tensorboard_dir,
    threads,
    val_accuracy,
    with_point,
)


def params_cap(budget: StudentBudget, teacher_params: int) -> int | None:
    """student.budget.params as a number: a share of the teacher's, or 2% of it when no size bound is given."""
    if budget.params is None:
        return None if budget.size_kb is not None else int(0.02 * teacher_params)
    if isinstance(budget.params, str):
        return int(float(budget.params[:-1]) / 100 * teacher_params)
    return int(budget.params)


def _skip(run: RunDir) -> dict:
    started = run.begin("search")
    m = {"skipped": f"student.name is {run.recipe.student.name}, not auto"}
    run.record("search", started=started, outputs={}, metrics=m)
    return m


def run(run: RunDir, data_root=None, resume: bool = False, progress=None) -> dict:
    from edgekd import distributed as dist

    r = run.recipe
    if dist.active() and not dist.is_main():
        return None  # under torchrun one process searches; the pipeline's barrier holds the others
    if r.student.name != "auto":
        return _skip(run)
    import optuna

    from edgekd.benchmark.budget import check_budget
    from edgekd.benchmark.runners import batch_of

    with threads(r.threads):
        teacher, teacher_config = load_model(run, "teacher")
        teacher_processors = teacher_config.get("processors") or {}
        data = load_dataset(r, data_root)
        check_data(run, "teacher", data)
        names = student_modalities(r, data)
        budget = r.student.budget or StudentBudget()
        cap = params_cap(budget, count_params(teacher))
        floor = check_budget(budget, r.bench.threads, "student.budget") if budget.latency_ms else None
        started = run.begin("search")
        out = run.stage_dir("search")
        t0 = time.time()
        labels = data.split("train").labels
        fit, val = (None, None) if data.has_split("val") else holdout(labels, r.search.val_fraction, r.seed)
        teacher_sha = sha256_file(run.artifact("teacher", "weights"))
        inputs: dict = {}  # (tokenizer, views, word dropout) -> (student data, targets): one teacher pass per view

        def inputs_for(rt):
            key = (rt.student.text_tokenizer, rt.distill.views, rt.distill.word_dropout)
            if key not in inputs:
                sdata, tdata, spec, _ = distill_inputs(run, rt, data, names, teacher_processors)
                cache = run.path / "cache" / f"teacher-{teacher_sha[:12]}-{spec.fingerprint(data.fingerprint())}"
                targets = TeacherTargets(teacher, list(teacher.names), tdata, cache)  # the distill stage's cache
                targets.prepare(tdata.num_pairings)
                if fit is not None:
                    sdata, targets = HeldOut(sdata, fit, val), HeldOutTargets(targets, fit)
                inputs[key] = (sdata, targets)
            return inputs[key]

        def shapes_for(rt):  # the student's inputs without views: what its shapes and vocabulary depend on
            return inputs_for(rt.model_copy(update={"distill": rt.distill.model_copy(update={"views": 1})}))[0]

        kinds = {n: data.modalities[n].kind for n in names}
        tokenizer = any(data.modalities[n].kind == "text" and n in teacher_processors for n in names)
        space = Space(kinds, tokenizer, r.search.max_epochs)
        sdata0, _ = inputs_for(r)
        example = example_batch(sdata0, names)
        test = sdata0.split("test")
        feeds = batch_of(test.inputs, names, budget.batch)
        train0 = sdata0.split("train")
        calib = [{n: train0.inputs[n][i: i + 64] for n in names} for i in range(0, min(len(train0), 128), 64)]
        measured: dict[str, tuple[float, dict]] = {}

        def objective(trial) -> float:
            point = space.sample(trial)
            trial.set_user_attr("point", point)
            rt = with_point(r, point)
            student, _, _ = build_student(rt, shapes_for(rt), names)  # before any teacher pass its views need
            params = count_params(student)
            trial.set_user_attr("params", params)
            arch = architecture(point)
            if arch not in measured and (cap is None or params <= cap):
                measured[arch] = deployed_size_and_latency(student, names, example, feeds, calib, budget, rt,
                                                           r.search.latency_seconds)
            size_kb, latency = measured.get(arch, (None, {}))
            trial.set_user_attr("size_kb", size_kb)
            trial.set_user_attr("latency", latency)
            why, constraint = _over(budget, cap, params, size_kb, latency)
            trial.set_user_attr("constraint", list(constraint.values()) or [0.0])
            for name, value in constraint.items():  # the sampler learns where the budget's edge lies
                trial.set_constraint(name, value)
            if why:
                trial.set_user_attr("why", why)
                return 0.0
            sdata, targets = inputs_for(rt)
            own = getattr(sdata, "params", None)
            if own:
                init_text_embeddings(student, targets.teacher, own, teacher_processors)
            job = Job(student, names, rt.distill, distill_seed(rt), out / "trials" / f"{trial.number}.pt",
                      f"trial {trial.number}", fingerprint=f"search:{trial.number}",
                      tensorboard=tensorboard_dir(run, "search", f"trial-{trial.number}", False))
            job.targets, job.projectors, job.loss = targets, Projectors.between(student, names, targets), \
                loss_weights(rt.distill)

            def after_epoch(epoch: int, row: dict) -> dict:
                acc = val_accuracy(student, sdata, names)
                trial.report(acc, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"validation {acc:.2%} after {epoch} epochs")
                return {"val_accuracy": acc}

            job.after_epoch = after_epoch
            try:
                history = train(job, sdata, False, progress)
            finally:
                job.checkpoint.unlink(missing_ok=True)
            return history[-1]["val_accuracy"]

        seed = r.seed if r.search.seed is None else r.search.seed
        study = st.open_study(out, seed, r.search.max_epochs, resume, space.first())
        st.optimize(study, objective, r.search.trials, r.search.minutes, catch=(TrainingError,))
        return _record(run, study, budget, cap, floor, fit, started, t0)


def _over(budget, cap, params: int, size_kb, latency: dict) -> tuple[str, dict[str, float]]:
    """(why the student breaks the budget or "", Optuna constraint values: <= 0 each when met)."""
    why, values = [], {}
    if cap is not None:
        values["params"] = float(params - cap)
        if params > cap:
            why.append(f"{params:,} params > {cap:,}")
    if budget.size_kb is not None and size_kb is not None:
        values["size_kb"] = float(size_kb - budget.size_kb)
        if size_kb > budget.size_kb:
            why.append(f"{size_kb:g} KB > {budget.size_kb:g} KB")
    hi = latency.get("hi")
    if budget.latency_ms is not None:  # unmeasured (over the parameter bound, or too noisy to bound) is not met
        values["latency_ms"] = float(hi - budget.latency_ms) if hi is not None else 1.0
        if hi is not None and hi > budget.latency_ms:
            why.append(f"{budget.metric[:-3]} upper bound {hi:.4f} ms > {budget.latency_ms:g} ms")
        elif hi is None and not why:
            why.append(f"latency not bounded ({latency.get('skipped', 'too noisy')})")
    return "; ".join(why), values


def _record(run: RunDir, study, budget, cap, floor, fit, started, t0) -> dict:
    from edgekd.plots import HOW_TO_GET, budget_png

    r, out = run.recipe, run.stage_dir("search")
    trials = st.rows(study)
    chosen = st.winner(trials)
    what = " and ".join(x for x in (
        f"{budget.metric[:-3]} <= {budget.latency_ms:g} ms on {budget.backend} at batch {budget.batch} ({budget.precision})"
        if budget.latency_ms else "", f"<= {cap:,} params" if cap is not None else "",
        f"<= {budget.size_kb:g} KB" if budget.size_kb else "") if x)
    where = "the val split" if fit is None else f"{r.search.val_fraction:.0%} of each class's train rows held out"
    baselines = recorded_baselines(run) or {}
    best_base = max(baselines.items(), key=lambda kv: kv[1]["val_accuracy"], default=None)
    front = st.pareto(trials)
    png = budget_png(st.plot_rows(trials), [str(n) for n in front], budget.latency_ms, budget.metric,
                     str(chosen["trial"]) if chosen else None,
                     f"student search: validation accuracy against measured latency ({budget.backend}, batch "
                     f"{budget.batch}, {budget.precision})", out / "trials.png") if budget.latency_ms else None
    counts = {s: sum(t["state"] == s and t["feasible"] for t in trials) for s in ("complete", "pruned", "fail")}
    counts["over_budget"] = sum(not t["feasible"] for t in trials)
    lines = [f"# Student search: {len(trials)} trials", "",
             f"Budget: {what}. Chosen on validation ({where}); test is never looked at here.",
             *([f"Empty call on {budget.backend}: {floor:.4f} ms."] if floor is not None else []),
             *([f"Best baseline on validation: {best_base[0]} {pct(best_base[1]['val_accuracy'])} "
                "(teacher stage, baselines.json)."] if best_base else []), "",
             f"Trials: {counts['complete']} trained to the end, {counts['pruned']} stopped early by Hyperband, "
             f"{counts['over_budget']} over budget (not trained), {counts['fail']} failed.", "",
             *st.table(trials, chosen), "",
             f"**Chosen**: trial {chosen['trial']}, {chosen['student']}, validation {pct(chosen['val_accuracy'])}."
             if chosen else "**None meets the budget.**", "",
             "![trials](trials.png)" if png else f"({HOW_TO_GET})" if budget.latency_ms else "", ""]
    atomic_write_text(out / "trials.md", "\n".join(lines))
    atomic_write_text(out / "trials.json", st.dump(trials))
    if chosen is None:
        fast = st.fastest(trials)
        hint = (f"the fastest, {fast['student']}, measured {fast['latency']['value']:.4f} ms (upper bound "
                f"{fast['latency'].get('hi')} ms, {fast['params']:,} params)" if fast else "no student could be measured")
        raise UsageError(f"no searched student meets {what}: {hint}; raise student.budget, or allow more "
                         f"search.trials / search.minutes (see {out / 'trials.md'})")
    outputs = {"trials": out / "trials.json", "table": out / "trials.md", "study": out / "study.db"}
    if png is not None:
        outputs["plot"] = png
    metrics = {"choice": chosen["point"], "student": chosen["student"], "val_accuracy": chosen["val_accuracy"],
               "trial": chosen["trial"], "params": chosen["params"], "size_kb": chosen["size_kb"],
               "latency": chosen["latency"], "budget": {**budget.model_dump(), "params": cap},
               "trials": len(trials), **{f"trials_{k}": v for k, v in counts.items()},
               "pareto": front, "seconds": round(time.time() - t0, 1)}
    run.record("search", started=started, outputs=outputs, metrics=metrics)
    return metrics


def summary(m: dict) -> str:
    if m.get("skipped"):
        return f"search: skipped ({m['skipped']})"
    lat = m.get("latency") or {}
    timing = f", {lat['value']:.4f} ms (upper bound {lat['hi']:.4f})" if lat.get("hi") is not None else ""
    return (f"search: {m['student']} (trial {m['trial']} of {m['trials']}: {m['trials_pruned']} pruned, "
            f"{m['trials_over_budget']} over budget), validation {pct(m['val_accuracy'])}, {m['params']:,} params"
            f"{timing}; {m['seconds']:.0f} s")
