"""The teacher stage: fit the multimodal teacher on the train split, or adopt an existing one."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import partial
from hashlib import sha256
from pathlib import Path

import numpy as np
import torch

from edgekd.contract import TEACHER_SUFFIX, modality_of
from edgekd.data import load_dataset
from edgekd.data.base import ModalitySpec
from edgekd.data.columns import chunks
from edgekd.data.processors import processor_params, quiet_transformers
from edgekd.data.teacher_inputs import TeacherView
from edgekd.distill.embeddings import cached_embeddings, embed_rows
from edgekd.distill.evaluate import evaluate
from edgekd.distill.trainer import Job, train
from edgekd.errors import CheckpointError, RecipeError
from edgekd.files import atomic_copy, atomic_write_json
from edgekd.models import count_flops, count_params, create_model
from edgekd.models.hf_classifier import classifier_kind, match_labels
from edgekd.models.io import CONFIG, WEIGHTS, load_model_dir, save_model
from edgekd.models.pretrained import resolve_dir, weights_sha256
from edgekd.models.teacher import TOWERS
from edgekd.plots import confusion_png
from edgekd.recipe import recipe_hash
from edgekd.rundir import RunDir
from edgekd.schema import suggest
from edgekd.stages.common import example_batch, pct, tensorboard_dir, threads, val_accuracy


@dataclass
class Plan:
    """What the recipe's teacher is: its registered model, each modality's encoder source and each
    pretrained modality's processor parameters (its own input path)."""

    name: str
    sources: dict = field(default_factory=dict)  # modality -> HFEncoder source
    processors: dict = field(default_factory=dict)  # modality -> edgekd.data.processors parameters
    options: dict = field(default_factory=dict)  # extra constructor options (a classifier's columns)


def plan(recipe, data) -> Plan:
    """Resolve teacher.pretrained / teacher.encoders against the data: loads configs and processors
    (not weights), so a wrong directory fails before anything is written."""
    t = recipe.teacher
    seconds = float(getattr(getattr(recipe.data, "audio", None), "seconds", 1.0))
    out = Plan(t.name, {m: s.model_dump() for m, s in t.encoders.items() if m in data.modalities})
    if t.pretrained:
        _whole_model(t, data, out)
    for m, source in out.sources.items():
        if not source.get("pretrained"):
            continue
        whole = "tower" in source or "auto_class" in source
        kind, where = data.modalities[m].kind, f"recipe.teacher.{'pretrained' if whole else f'encoders.{m}.pretrained'}"
        # resolved and its pins checked once, here: later loads read the directory without re-hashing it
        path = resolve_dir(source["pretrained"], where, source.pop("sha256", None))
        source["pretrained"] = str(path)
        p = processor_params(kind, path, where, source.get("max_length"), seconds)
        out.processors[m] = p
        source.update({"pad_id": p["pad_id"], "pad_is_eos": p.get("pad_is_eos", False)} if kind == "text"
                      else {"native": True})
    return out


def _whole_model(t, data, out: Plan) -> None:
    """teacher.pretrained: a fine-tuned classifier used as is, or a dual encoder's towers."""
    import torch
    from transformers import AutoConfig, AutoModel

    where = "recipe.teacher.pretrained"
    path = resolve_dir(t.pretrained, where, t.sha256)
    try:
        with quiet_transformers():  # its notes on the user's config are not edgekd's one-line error
            config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{where}: cannot read {path / 'config.json'} ({str(e).splitlines()[0][:160]})") from None
    source = {"pretrained": str(path)}  # its pins were checked just above
    found = classifier_kind(config)
    if found:
        kind, auto = found
        mine = [m for m, s in data.modalities.items() if s.kind == kind]
        if len(mine) != 1:
            raise RecipeError(f"{where}: {path.name} classifies {kind} inputs and the data has {len(mine)} {kind} "
                              f"modalities; a classifier teacher needs exactly one")
        out.name, out.sources = "hf_classifier", {mine[0]: {**source, "auto_class": auto}}
        out.options = {"columns": match_labels(config.id2label, data.classes, where)}
        return
    # SigLIP's text tower was trained on texts padded to its full position table, unmasked, and pools the
    # last position: its texts keep that fixed length (not cut to the batch's longest) and no attention mask
    fixed = config.text_config.max_position_embeddings if config.model_type.startswith("siglip") else None
    with torch.device("meta"), quiet_transformers():  # which towers it has, without allocating its weights
        model = AutoModel.from_config(config)
    for m, spec in data.modalities.items():
        method, parts = TOWERS.get(spec.kind, ("", ()))
        if hasattr(model, method) and any(getattr(model, x, None) is not None for x in parts):
            if m in out.sources:
                raise RecipeError(f"recipe.teacher: '{m}' has both teacher.pretrained's {spec.kind} tower and "
                                  f"teacher.encoders.{m}; drop one")
            out.sources[m] = {**source, "tower": spec.kind}
            if fixed and spec.kind == "text":
                out.sources[m].update({"fixed_length": True, "max_length": fixed})
    if not any("tower" in s for s in out.sources.values()):
        raise CheckpointError(f"{where}: {path.name} ({config.model_type}, {', '.join(config.architectures or [])}) is "
                              "neither a dual encoder with a tower for the data's modalities (get_image_features, "
                              "get_text_features, get_audio_features) nor a *For{Sequence,Image,Audio}Classification "
                              "model; give a single encoder as teacher.encoders.<modality>.pretrained instead")


def build_teacher(recipe, data, how: Plan):
    """A fresh teacher as the plan describes it (initial weights follow the recipe's seed)."""
    t = recipe.teacher
    torch.manual_seed(recipe.seed)
    encoders = {n: how.sources[modality_of(n)] for n in data.modalities if modality_of(n) in how.sources}
    if how.name == "hf_classifier":
        options = dict(how.options)
    else:
        options = {"hidden": t.hidden, "layers": t.layers, "heads": t.heads, "fusion": t.fusion,
                   "audio_encoder": t.audio_encoder, "image_patch": t.image_patch, "dropout": t.dropout,
                   "image_encoder": t.image_encoder}
    model = create_model(how.name, "teacher", modalities=data.modalities, num_classes=len(data.classes),
                         encoders=encoders, **options)
    _check_fit(model, data)
    return model, options


def _check_fit(model, view) -> None:
    """One batch through the model: a processor that disagrees with its model (image size, mel bins,
    token ids beyond the embedding table) fails here, in one line, before anything is written."""
    names = [n for n in model.names if n.endswith(TEACHER_SUFFIX) or n in model.pretrained()]
    if not names:
        return
    split = view.split("train")
    rows = {0, 1 % len(split.labels)}
    for n in names:  # the row with the largest token id, where an embedding table may be too short
        if split.inputs[n].dtype.kind in "iu":
            top = max((int(r.max()), -(i + int(r.argmax()))) for i, x in chunks(split.inputs[n]) if len(r := x.max(axis=1)))
            rows.add(-top[1])  # the first such row, as argmax over the whole split would give
    batch = {n: torch.from_numpy(np.ascontiguousarray(split.inputs[n][sorted(rows)])) for n in model.names}
    try:
        with torch.no_grad():
            model.eval()(batch)
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        shapes = ", ".join(f"{n} {tuple(batch[n].shape[1:])}" for n in names)
        raise CheckpointError(f"recipe.teacher: the pretrained model rejects its processor's inputs ({shapes}: "
                              f"{str(e).strip().splitlines()[0][:160]}); save the model's own processor beside it "
                              "(AutoProcessor.from_pretrained(...).save_pretrained(DIR))") from None


def train_mode(t, model) -> str:
    if getattr(model, "columns", None) is not None:  # a classifier teacher: used as is unless fine-tuned
        if t.train == "head":
            raise RecipeError("recipe.teacher.train: head -- a classifier teacher has no separate head to fit; "
                              "use none (as is) or all (fine-tune it)")
        return t.train or "none"
    if t.train == "none":
        raise RecipeError("recipe.teacher.train: none needs teacher.pretrained to be a fine-tuned classifier; an "
                          "encoder teacher's fusion head must be fitted: use head or all")
    return t.train or ("head" if model.pretrained() else "all")


def _embed(encoder, rows, progress, label: str, threads: int = 1, sink=None):
    """embed_rows, with its achieved GFLOP/s set against the machine's float32 matmul peak measured
    right after the pass, under the same load."""
    from edgekd.benchmark.sysinfo import machine_peak_gflops

    rows, stats = embed_rows(encoder, rows, progress=progress, label=label, threads=threads, sink=sink)
    peak = machine_peak_gflops()
    return rows, {**stats, "peak_gflops_per_s": round(peak, 1),
                  "fraction_of_peak": round(stats["gflops_per_s"] / peak, 3) if peak else None}


def _frozen_embeddings(run: RunDir, model, view, sources: dict, progress) -> tuple[object, dict]:
    """teacher.train: head -- every row's embedding from each frozen pretrained encoder, once, into
    cache/embeddings-<key>/; the returned view feeds those instead of the encoders' inputs."""
    stats = {}
    for name in model.pretrained():
        enc = model.encoders[name]
        if not enc.pooled:
            continue
        p = view.params[modality_of(name)]
        source = sources[modality_of(name)]
        src = Path(source["pretrained"])  # resolved and pin-checked by plan()
        what = json.dumps({k: v for k, v in p.items() if k != "source"}, sort_keys=True)
        key = sha256(f"{weights_sha256(src)}:{source.get('tower')}:{what}:{view.fingerprint()}".encode())
        cache = run.path / "cache" / f"embeddings-{key.hexdigest()[:16]}"
        rows, st = cached_embeddings(cache, name, partial(_embed, enc, view.rows(name), progress, f"embedding {name}",
                                                          run.recipe.threads))
        spec = ModalitySpec(name, enc.kind, (rows.shape[1],), "float32")
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


def check_encoders(recipe, data, how: Plan | None = None) -> None:
    for name in recipe.teacher.encoders:
        if name not in data.modalities or data.modalities[name].kind == "vector":
            options = [n for n, s in data.modalities.items() if s.kind != "vector"]
            raise RecipeError(f"recipe.teacher.encoders: '{name}' is not an image/audio/text modality of the data"
                              f"{suggest(name, options) or f' (choose from {options})'}")
    own = {m for m, src in (how.sources if how else {}).items() if src.get("pretrained")}
    for m, s in data.modalities.items():
        if s.kind == "image" and m not in own and s.shape[1] % recipe.teacher.image_patch:
            divisors = [d for d in range(2, s.shape[1] + 1) if s.shape[1] % d == 0]
            raise RecipeError(f"recipe.teacher.image_patch: {recipe.teacher.image_patch} does not divide the image size "
                              f"{s.shape[1]}; choose one of {divisors}")


def run(run: RunDir, data_root=None, resume: bool = False, progress=None) -> dict:
    r = run.recipe
    with threads(r.threads):
        data = load_dataset(r, data_root, progress=progress)  # the first stage builds the data store: show it
        adopted = _check_adoptable(run, data) if r.teacher.checkpoint else None  # before anything changes
        # the teacher's own input path (its processors' view of the same rows); the processors and the
        # pretrained encoders load here, so their errors come before anything is written
        how = None if adopted else plan(r, data)
        check_encoders(r, data, how)
        view = adopted[2] if adopted else TeacherView(data, how.processors)
        fresh = None if adopted else build_teacher(r, view, how)
        names = list((adopted[1] if adopted else fresh[0]).names)
        mode = None if adopted else train_mode(r.teacher, fresh[0])
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
            extra["train"] = mode
            if mode in ("head", "none"):
                model.freeze(model.pretrained())
            if mode == "head":
                fast, extra["embeddings"] = _frozen_embeddings(run, model, view, how.sources, progress)
            else:
                model.encoder_lr_scale = t.encoder_lr_scale
            job = Job(model, names, t, r.seed, out_dir / "checkpoint.pt", "teacher",
                      fingerprint=f"{recipe_hash(r)}:{view.fingerprint()}",
                      tensorboard=tensorboard_dir(run, "teacher", None, resume))
            history = [] if mode == "none" else train(job, fast, resume, progress)
            files = save_model(model, out_dir, role="teacher", name=how.name, options=options,
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
        if r.teacher.baselines:  # what a student has to beat to be worth shipping
            from edgekd.distill.baselines import fit_baselines

            found = fit_baselines(data, list(data.modalities), seed=r.seed)
            outputs["baselines"] = atomic_write_json(out_dir / "baselines.json", found)
            metrics["baselines"] = {b["name"]: {"val_accuracy": b["val_accuracy"], "accuracy": b["accuracy"]}
                                    for b in found["models"]}
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
    base = "".join(f"\n  baseline {k}: {pct(b['accuracy'])} (val {pct(b['val_accuracy'])})"
                   for k, b in (m.get("baselines") or {}).items())
    return f"teacher: accuracy {pct(m['accuracy'])} ({alone}{val}); {m['params']:,} params{base}"
