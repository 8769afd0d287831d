"""`edgekd eval` and `edgekd data info`: read-only views of a run or a dataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.errors import RunDirError, UsageError

_MODELS = {"teacher": ("teacher", "weights", "config"), "student": ("distill", "weights", "config"),
           "baseline": ("distill", "baseline_weights", "baseline_config")}


def evaluate_run(run_dir: Path, which: str, data_root=None) -> dict:
    from edgekd.data import load_dataset
    from edgekd.distill.evaluate import evaluate
    from edgekd.models.io import load_model
    from edgekd.rundir import RunDir
    from edgekd.stages import threads

    if which not in _MODELS:
        raise UsageError(f"--model {which!r}: choose teacher, student or baseline")
    if not Path(run_dir).is_dir():
        raise UsageError(f"{run_dir} is not a run directory; pass the folder `edgekd run` made (runs/<name>)")
    run = RunDir.open(run_dir)
    stage, w, c = _MODELS[which]
    if which == "baseline" and run.is_done("distill") and "baseline_weights" not in run.stage("distill")["outputs"]:
        raise UsageError("this run trained no baseline; set distill.baseline: true in the recipe and re-run distill")
    model, config = load_model(run.artifact(stage, w), run.artifact(stage, c))
    with threads(run.recipe.threads):
        data = load_dataset(run.recipe, data_root)
        if run.stage(stage).get("data_fingerprint") not in (None, data.fingerprint()):
            raise RunDirError(f"this {which} was trained on other data than --data-root / EDGEKD_DATA gives now; "
                              "point at the same data or re-run the pipeline")
        test = data.split("test")
        result = evaluate(model, test, list(config["modalities"]), data.classes)
    return {"model": which, "samples": len(test), **result}


def describe_dataset(target: str, data_root=None, overrides: list[str] | None = None) -> dict:
    from edgekd.data import load_dataset
    from edgekd.data.root import data_root as resolve
    from edgekd.recipe import load_recipe, recipe_from_dict

    if target == "avdigits":
        recipe = recipe_from_dict({"name": "avdigits-info", "data": {"name": "avdigits"}}, overrides)
    else:
        recipe = load_recipe(target, overrides)
    data = load_dataset(recipe, data_root)
    splits = {}
    for name in ("train", "val", "test"):
        if data.has_split(name):
            labels = data.split(name).labels
            counts = np.bincount(labels, minlength=len(data.classes))
            splits[name] = {"total": int(len(labels)), "per_class": dict(zip(data.classes, map(int, counts)))}
    notes = []
    if getattr(data, "pca_components", None):
        notes.append(f"images degraded to {data.pca_components} PCA components "
                     f"({recipe.data.image_pca_variance:.0%} of train-image variance)")
    if data.num_pairings > 1:
        notes.append(f"{data.num_pairings} seeded train pairings of audio clips with images, cycled over epochs")
    return {
        "name": data.name,
        "root": str(resolve(data_root)),
        "fingerprint": data.fingerprint(),
        "classes": data.classes,
        "modalities": {n: {"kind": s.kind, "shape": list(s.shape), "dtype": s.dtype} for n, s in data.modalities.items()},
        "splits": splits,
        "notes": notes,
    }
