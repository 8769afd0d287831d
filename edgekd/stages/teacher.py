"""The teacher stage: fit the multimodal teacher on the train split, or adopt an existing one."""
from __future__ import annotations

from dataclasses import asdict
from functools import partial
from hashlib import sha256
from pathlib import Path

import torch

from edgekd.contract import modality_of
from edgekd.data import load_dataset
from edgekd.data.base import ModalitySpec
from edgekd.data.teacher_inputs import TeacherView, text_params
from edgekd.distill.embeddings import cached_embeddings, embed_rows
from edgekd.distill.evaluate import evaluate
from edgekd.distill.trainer import Job, train
from edgekd.errors import CheckpointError, RecipeError
from edgekd.files import atomic_copy, atomic_write_json
from edgekd.models import count_flops, count_params, create_model
from edgekd.models.io import CONFIG, WEIGHTS, load_model_dir, save_model
from edgekd.models.pretrained import resolve_dir, weights_sha256
from edgekd.plots import confusion_png
from edgekd.recipe import recipe_hash
from edgekd.rundir import RunDir
from edgekd.schema import suggest
from edgekd.stages.common import example_batch, pct, threads, val_accuracy


def build_teacher(recipe, data):
    """A fresh teacher as the recipe describes it (initial weights follow the recipe's seed)."""
    t = recipe.teacher
    options = {"hidden": t.hidden, "layers": t.layers, "heads": t.heads, "fusion": t.fusion,
               "audio_encoder": t.audio_encoder, "image_patch": t.image_patch, "dropout": t.dropout,
               "image_encoder": t.image_encoder}
    torch.manual_seed(recipe.seed)
    encoders = {n: t.encoders[modality_of(n)].model_dump() for n in data.modalities if modality_of(n) in t.encoders}
    model = create_model(t.name, "teacher", modalities=data.modalities, num_classes=len(data.classes),
                         encoders=encoders, **options)
    return model, options


def processors(recipe, data) -> dict:
    """modality -> the parameters of its pretrained encoder's own processor (text: its tokenizer)."""
    out = {}
    for m, source in recipe.teacher.encoders.items():
        if source.pretrained and data.modalities[m].kind == "text":
            where = f"recipe.teacher.encoders.{m}.pretrained"
            out[m] = text_params(resolve_dir(source.pretrained, where, source.sha256), where, source.max_length)
    return out


def train_mode(t, model) -> str:
    return t.train or ("head" if model.pretrained() else "all")


def _embed(encoder, ids, pad_id: int, progress, label: str):
    """embed_rows, with its achieved GFLOP/s set against the machine's float32 matmul peak measured
    right after the pass, under the same load."""
    from edgekd.benchmark.sysinfo import machine_peak_gflops

    rows, stats = embed_rows(encoder, ids, pad_id, progress=progress, label=label)
    peak = machine_peak_gflops()
    return rows, {**stats, "peak_gflops_per_s": round(peak, 1),
                  "fraction_of_peak": round(stats["gflops_per_s"] / peak, 3) if peak else None}


def _frozen_embeddings(run: RunDir, model, view, progress) -> tuple[object, dict]:
    """teacher.train: head -- every row's embedding from each frozen pretrained text encoder, once,
    into cache/embeddings-<key>/; the returned view feeds those instead of token ids."""
    stats = {}
    for name in model.pretrained():
        enc = model.encoders[name]
        if not enc.pooled:
            continue
        p = view.params[modality_of(name)]
        source = run.recipe.teacher.encoders[modality_of(name)]
        src = resolve_dir(source.pretrained, "recipe.teacher.encoders", source.sha256)
        key = sha256(f"{weights_sha256(src)}:{p['tokenizer_json']}:{p['max_length']}:{view.fingerprint()}".encode())
        cache = run.path / "cache" / f"embeddings-{key.hexdigest()[:16]}"
        rows, st = cached_embeddings(cache, name, partial(_embed, enc, view.rows(name), int(p["pad_id"]), progress,
                                                          f"embedding {name}"))
        spec = ModalitySpec(name, "text", (rows.shape[1],), "float32")
        view = view.with_rows(name, spec, rows)
        stats[name] = {**st, "cache": str(cache.relative_to(run.path))}
    return view, stats


def _check_adoptable(run: RunDir, data):
    """Load the teacher directory the recipe names and check it was trained for this dataset."""
    src = Path(run.recipe.teacher.checkpoint).expanduser()
    model, config = load_model_dir(src)
    view = TeacherView(data, config.get("processors") or {})  # the inputs it was trained on
    if config["role"] != "teacher":
        raise CheckpointError(f"recipe.teacher.checkpoint: {src} holds a {config['role']}, not a teacher")
    ours = {n: asdict(s) for n, s in view.modalities.items()}
    theirs = {n: {**s, "shape": tuple(s["shape"])} for n, s in config["modalities"].items()}
    if theirs != {n: {**s, "shape": tuple(s["shape"])} for n, s in ours.items()} or config["classes"] != data.classes:
        raise CheckpointError(f"recipe.teacher.checkpoint: {src} was trained on other inputs or classes "
                              f"({theirs} / {config['classes']}) than this dataset's; retrain with teacher.checkpoint: null")
    if config.get("data_fingerprint") not in (None, data.fingerprint()):
        raise CheckpointError(f"recipe.teacher.checkpoint: {src} was trained on other data (another split, "
                              "degradation or files), so its test scores would not be honest; retrain with "
                              "teacher.checkpoint: null or use the same data settings")
    return src, model, view


def _copy_teacher(src: Path, out_dir: Path) -> None:
    for name in (WEIGHTS, CONFIG):
        atomic_copy(src / name, out_dir / name)


def check_encoders(recipe, data) -> None:
    for name in recipe.teacher.encoders:
        if name not in data.modalities or data.modalities[name].kind == "vector":
            options = [n for n, s in data.modalities.items() if s.kind != "vector"]
            raise RecipeError(f"recipe.teacher.encoders: '{name}' is not an image/audio/text modality of the data"
                              f"{suggest(name, options) or f' (choose from {options})'}")
    for s in data.modalities.values():
        if s.kind == "image" and s.shape[1] % recipe.teacher.image_patch:
            divisors = [d for d in range(2, s.shape[1] + 1) if s.shape[1] % d == 0]
            raise RecipeError(f"recipe.teacher.image_patch: {recipe.teacher.image_patch} does not divide the image size "
                              f"{s.shape[1]}; choose one of {divisors}")


def run(run: RunDir, data_root=None, resume: bool = False, progress=None) -> dict:
    r = run.recipe
    with threads(r.threads):
        data = load_dataset(r, data_root)
        check_encoders(r, data)
        adopted = _check_adoptable(run, data) if r.teacher.checkpoint else None  # before anything changes
        # the teacher's own input path (its processors' view of the same rows); the tokenizer and the
        # pretrained encoders load here, so their errors come before anything is written
        view = adopted[2] if adopted else TeacherView(data, processors(r, data))
        fresh = None if adopted else build_teacher(r, view)
        names = list(view.modalities)
        started = run.begin("teacher")
        out_dir = run.stage_dir("teacher")
        inputs, extra, fast = {}, {}, view
        if adopted:
            src, model, _ = adopted
            _copy_teacher(src, out_dir)
            history, inputs = [], {"source_weights": src / WEIGHTS}
            files = {"weights": out_dir / WEIGHTS, "config": out_dir / CONFIG}
        else:
            t = r.teacher
            model, options = fresh
            extra["train"] = mode = train_mode(t, model)
            if mode == "head":
                model.freeze(model.pretrained())
                fast, extra["embeddings"] = _frozen_embeddings(run, model, view, progress)
            else:
                model.encoder_lr_scale = t.encoder_lr_scale
            job = Job(model, names, t, r.seed, out_dir / "checkpoint.pt", "teacher",
                      fingerprint=f"{recipe_hash(r)}:{view.fingerprint()}")
            history = train(job, fast, resume, progress)
            files = save_model(model, out_dir, role="teacher", name=t.name, options=options,
                               modalities=view.modalities, classes=data.classes,
                               data_fingerprint=data.fingerprint(), processors=view.params)
        result = evaluate(model, fast.split("test"), names, data.classes)
        metrics = {
            "accuracy": result["accuracy"],
            "val_accuracy": val_accuracy(model, fast, names),
            "params": count_params(model),
            "flops": count_flops(model, example_batch(view, names)),
            "accuracy_without": {modality_of(k): v for k, v in result["accuracy_without"].items()},
            **({"train": extra["train"]} if "train" in extra and model.pretrained() else {}),
            **({"embeddings": extra["embeddings"]} if extra.get("embeddings") else {}),
        }
        report = atomic_write_json(out_dir / "eval.json", {**result, "history": history})
        outputs = {**files, "eval": report}
        png = confusion_png(result["confusion"], data.classes, f"teacher, test accuracy {result['accuracy']:.3f}",
                            out_dir / "confusion.png")
        if png is not None:  # None where matplotlib is not installed
            outputs["confusion"] = png
        run.record("teacher", started=started, outputs=outputs, metrics=metrics, inputs=inputs,
                   extra={"data_fingerprint": data.fingerprint(),
                          "embeddings": {n: e["cache"] for n, e in (extra.get("embeddings") or {}).items()}})
    return metrics


def summary(m: dict) -> str:
    alone = ", ".join(f"without {k} {pct(v)}" for k, v in m.get("accuracy_without", {}).items())
    val = f", val {pct(m['val_accuracy'])}" if m.get("val_accuracy") is not None else ""
    return f"teacher: accuracy {pct(m['accuracy'])} ({alone}{val}); {m['params']:,} params"
