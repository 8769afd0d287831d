"""The teacher stage: fit the multimodal teacher on the train split, or adopt an existing one."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from edgekd.data import load_dataset
from edgekd.distill.evaluate import evaluate
from edgekd.distill.trainer import Job, train
from edgekd.errors import CheckpointError
from edgekd.models import count_flops, count_params, create_model
from edgekd.models.io import CONFIG, WEIGHTS, load_model_dir, save_model
from edgekd.rundir import RunDir, atomic_write_json
from edgekd.stages import threads


def example_batch(data, names: list[str]) -> dict:
    import torch

    split = data.split("test")
    return {n: torch.from_numpy(split.inputs[n][:1]) for n in names}


def _adopt(run: RunDir, data, out_dir: Path):
    """Use the teacher directory the recipe names, after checking it fits this dataset."""
    src = Path(run.recipe.teacher.checkpoint).expanduser()
    model, config = load_model_dir(src)
    if config["role"] != "teacher":
        raise CheckpointError(f"recipe.teacher.checkpoint: {src} holds a {config['role']}, not a teacher")
    if set(config["modalities"]) != set(data.modalities) or config["classes"] != data.classes:
        raise CheckpointError(f"recipe.teacher.checkpoint: {src} was trained on modalities {sorted(config['modalities'])} "
                              f"and classes {config['classes']}, not this dataset's; retrain with teacher.checkpoint: null")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS, CONFIG):
        shutil.copyfile(src / name, out_dir / f".{name}.tmp")
        (out_dir / f".{name}.tmp").replace(out_dir / name)
    return model, []


def run_teacher(run: RunDir, data_root=None, resume: bool = False, progress=None) -> dict:
    started = time.time()
    r = run.recipe
    with threads(r.threads):
        data = load_dataset(r, data_root)
        names = list(data.modalities)
        out_dir = run.stage_dir("teacher")
        if r.teacher.checkpoint:
            model, history = _adopt(run, data, out_dir)
            files = {"weights": out_dir / WEIGHTS, "config": out_dir / CONFIG}
        else:
            t = r.teacher
            options = {"hidden": t.hidden, "layers": t.layers, "heads": t.heads, "fusion": t.fusion,
                       "audio_encoder": t.audio_encoder, "image_patch": t.image_patch}
            model = create_model(t.name, "teacher", modalities=data.modalities, num_classes=len(data.classes),
                                 encoders={n: e.model_dump() for n, e in t.encoders.items()}, **options)
            history = train(Job(model, names, t, r.seed, out_dir / "checkpoint.pt", "teacher"), data, resume, progress)
            files = save_model(model, out_dir, role="teacher", name=t.name, options=options,
                               modalities=data.modalities, classes=data.classes)
        result = evaluate(model, data.split("test"), names, data.classes)
        metrics = {
            "accuracy": result["accuracy"],
            "params": count_params(model),
            "flops": count_flops(model, example_batch(data, names)),
            "accuracy_without": result["accuracy_without"],
        }
        report = atomic_write_json(out_dir / "eval.json", {**result, "history": history})
        run.record("teacher", started=started, outputs={**files, "eval": report}, metrics=metrics)
    return metrics
