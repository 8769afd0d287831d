"""`edgekd eval` and `edgekd data info`: read-only views of a run or a dataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.errors import UsageError

_MODELS = {"teacher": "teacher", "student": "distill", "baseline": "distill"}  # role -> the stage that trained it


def evaluate_run(run_dir: Path, which: str, data_root=None) -> dict:
    from edgekd.data import load_dataset
    from edgekd.distill.evaluate import evaluate
    from edgekd.rundir import RunDir
    from edgekd.stages.common import check_data, load_model, student_data, teacher_data, threads

    if which not in _MODELS:
        raise UsageError(f"--model {which!r}: choose teacher, student or baseline")
    if not Path(run_dir).is_dir():
        raise UsageError(f"{run_dir} is not a run directory; pass the folder `edgekd run` made (runs/<name>)")
    run = RunDir.open(run_dir)
    model, config = load_model(run, which)
    with threads(run.recipe.threads):
        data = load_dataset(run.recipe, data_root)
        check_data(run, _MODELS[which], data)
        test = (teacher_data(run, data) if which == "teacher" else student_data(run, data)).split("test")
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
    store = getattr(data, "store", None)
    if store is not None:
        i = store.index
        notes.append(f"data store {store.path}: {store.rows:,} rows in {store.shards} shards; "
                     f"built by {i.get('workers', 1)} worker(s) in {i.get('scan_seconds', 0) + i.get('decode_seconds', 0):.1f} s")
    return {
        "name": data.name,
        "root": str(resolve(data_root)),
        "fingerprint": data.fingerprint(),
        "classes": data.classes,
        "modalities": {n: {"kind": s.kind, "shape": list(s.shape), "dtype": s.dtype} for n, s in data.modalities.items()},
        "splits": splits,
        "notes": notes,
    }


def eval_lines(result: dict) -> list[str]:
    """`edgekd eval`'s text: accuracy, ablations, per-class scores and the confusion matrix."""
    lines = [f"{result['model']}: accuracy {100 * result['accuracy']:.2f}% on {result['samples']} test samples"]
    lines += [f"  without {m}: {100 * acc:.2f}%" for m, acc in result["accuracy_without"].items()]
    lines.append("  class  precision  recall  f1     support")
    lines += [f"  {c:<6} {r['precision']:.3f}      {r['recall']:.3f}   {r['f1']:.3f}  {r['support']}"
              for c, r in result["per_class"].items()]
    lines.append("  confusion (rows: true class, columns: predicted)")
    lines += [f"  {c:<6} " + " ".join(f"{v:4d}" for v in row) for c, row in zip(result["per_class"], result["confusion"])]
    return lines


def dataset_lines(info: dict) -> list[str]:
    """`edgekd data info`'s text."""
    lines = [f"dataset {info['name']} at {info['root']} (fingerprint {info['fingerprint']})"]
    lines += [f"  modality {m}: {s['kind']} {tuple(s['shape'])} {s['dtype']}" for m, s in info["modalities"].items()]
    for split, counts in info["splits"].items():
        per = " ".join(f"{c}:{n}" for c, n in counts["per_class"].items())
        lines.append(f"  {split}: {counts['total']} samples ({per})")
    return lines + [f"  {line}" for line in info.get("notes", [])]
