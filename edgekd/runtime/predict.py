"""Classify one sample from raw files with a bundle, without torch.

Raw inputs go through edgekd.runtime.preprocess with the parameters in the bundle's
preprocess.json (the same functions and numbers training used), then through the chosen model.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgekd.contract import TEACHER_SUFFIX
from edgekd.errors import BundleError, UsageError
from edgekd.runtime import preprocess as pp
from edgekd.runtime.bundle import FIX, load_bundle
from edgekd.runtime.runner import make_runner

# which argument carries each modality kind
_CHANNEL = {"image": "files", "audio": "files", "text": "texts", "vector": "vectors"}


def _and(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def predict(bundle_dir, *, files: dict[str, str] | None = None, texts: dict[str, str] | None = None,
            vectors: dict[str, list[float]] | None = None, model: str | None = None, threads: int = 1,
            backend: str = "onnxruntime") -> dict:
    """{"model", "label", "index", "probabilities": {label: p}} for one sample.

    `files` maps image/audio modality names to a png/jpg or audio file path, `texts` maps text modalities
    to the string, `vectors` maps vector modalities to the numbers."""
    bundle = load_bundle(bundle_dir)
    # TensorRT without --model: the engine search (the pick where it fits this GPU, else a compatible engine)
    key = model if backend == "tensorrt" else bundle.resolve_key(model, backend)
    given = {"files": dict(files or {}), "texts": dict(texts or {}), "vectors": dict(vectors or {})}
    kinds = input_kinds(bundle)
    for channel, values in given.items():
        for name in values:
            if name not in kinds:
                raise UsageError(f"unknown input --{name}: this bundle takes {_and(kinds)}")
            if _CHANNEL.get(kinds[name]) != channel:
                article = "an" if kinds[name][0] in "aeiou" else "a"
                raise UsageError(f"--{name} is {article} {kinds[name]} input: give it as {_describe(kinds[name])}")
    runner = make_runner(bundle, key, backend=backend, threads=threads)
    key = getattr(runner, "key", None) or bundle.resolve_key(key)
    try:
        needed = runner.input_names
        supplied = {n: v for values in given.values() for n, v in values.items()}
        for name in needed:
            if name not in supplied:
                raise UsageError(f"missing --{name}: this bundle's model {key} takes {_and(needed)}")
        for name in supplied:
            if name not in needed:
                raise UsageError(f"--{name} is not used by model {key} (it takes {_and(needed)}): leave it out")
        inputs = {n: _prepare(bundle, n, kinds[n], supplied[n])[None] for n in needed}  # add the batch axis
        out = runner.run(inputs)
    finally:
        runner.close()
    logits = np.asarray(out["logits"] if "logits" in out else out[runner.output_names[0]], np.float64)[0]
    if logits.shape != (len(bundle.labels),):
        raise BundleError(f"model {key} gives {logits.size} logits but labels.json has {len(bundle.labels)} labels; {FIX}")
    probs = softmax(logits)
    index = int(probs.argmax())
    return {"model": key, "label": bundle.labels[index], "index": index,
            "probabilities": {label: float(p) for label, p in zip(bundle.labels, probs)}}


def softmax(logits) -> np.ndarray:
    """Probabilities over the last axis: stable, in float64 so they sum to 1 exactly enough."""
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def input_kinds(bundle) -> dict[str, str]:
    """Modality name -> kind; preprocess.json covers every model's inputs (io_spec only the student's)."""
    kinds = {s["name"]: s.get("kind") for s in bundle.io_spec.get("inputs", [])}
    for name, p in bundle.preprocess.items():
        if isinstance(p, dict) and p.get("kind"):
            kinds[name] = p["kind"]
    bad = [n for n, k in kinds.items() if k not in _CHANNEL]
    if bad:
        raise BundleError(f"bundle input '{bad[0]}' has kind {kinds[bad[0]]!r}, expected image, audio, text "
                          f"or vector; {FIX}")
    return kinds


def _describe(kind: str) -> str:
    return {"image": "a png/jpg file path", "audio": "an audio file path (wav, flac, ogg, mp3)", "text": "a text string",
            "vector": "a list of numbers"}[kind]


def _prepare(bundle, name: str, kind: str, value) -> np.ndarray:
    p = bundle.preprocess.get(name)
    if not isinstance(p, dict):
        raise BundleError(f"bundle preprocess.json has no parameters for input '{name}'; {FIX}")
    if p.get("processor_class"):  # a pretrained teacher's own image processor / feature extractor
        raise UsageError(f"input '{name}' is made by the teacher's own {p['processor_class']} (transformers), which a "
                         "torch-free device install does not run; predict with a student model (--model "
                         "student_int8_cpu), or compare the teacher through `edgekd bench` on the bundle's test set")
    path = None
    if kind in ("image", "audio"):
        if not isinstance(value, (str, os.PathLike)):
            raise UsageError(f"--{name} needs a file path ({_describe(kind)}), got {type(value).__name__} {value!r:.60}")
        path = Path(value)
        if not path.is_file():
            raise UsageError(f"--{name} {path}: no such file")
    try:
        if kind == "text":
            return pp.text_ids(str(value), p, tokenizer=_tokenizer(bundle, name, p))
        if kind == "vector":
            return pp.vector_array(value, p)
        return (pp.image_from_file if kind == "image" else pp.audio_from_file)(path, p)
    except KeyError as e:
        raise BundleError(f"bundle preprocess.json lacks {e} for input '{name}'; {FIX}") from None
    except (OSError, EOFError, ValueError, TypeError) as e:  # PIL's UnidentifiedImageError is an OSError
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        if path is None:
            raise UsageError(f"--{name}: {why}; give {_describe(kind)}") from None
        what = "png or jpg image" if kind == "image" else "audio file"
        raise UsageError(f"--{name} {path} is not a readable {what} ({why}): give a valid file") from None


def _tokenizer(bundle, name: str, p: dict):
    rel = p.get("tokenizer_file")
    if rel not in bundle.manifest["files"]:  # only files the manifest lists were verified
        raise BundleError(f"text input '{name}' names tokenizer {rel!r}, which the bundle does not list; {FIX}")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise BundleError("text inputs need the tokenizers package: pip install tokenizers") from None
    try:
        return Tokenizer.from_file(str(bundle.path / rel))
    except Exception as e:  # tokenizers raises a bare Exception on a bad file
        raise BundleError(f"bundle file {rel} is not a tokenizer ({str(e).splitlines()[0][:120]}); {FIX}") from None


def route(bundle_dir, by_kind: dict[str, str | None], named: list[str] | None = None, model: str | None = None) -> dict:
    """The keyword arguments of `predict` from command-line values: `by_kind` maps a modality kind
    (image, audio, text, vector) to a value for the bundle's one input of that kind; `named` holds
    NAME=VALUE items for any input. Vectors are comma-separated numbers."""
    bundle = load_bundle(bundle_dir)
    kinds = input_kinds(bundle)
    teacher = bundle.models[bundle.resolve_key(model)].get("role") == "teacher"
    values: dict[str, str] = {}
    for kind, value in by_kind.items():
        if value is None:
            continue
        same = [n for n, k in kinds.items() if k == kind]
        if len(same) > 1:  # a student input and the teacher's own (`<m>__teacher`): the chosen model's
            same = [n for n in same if n.endswith(TEACHER_SUFFIX) == teacher] or same
        name = same[0] if len(same) == 1 else (kind if kind in same else None)
        if name is None:
            raise UsageError(f"--{kind}: this bundle has {'no' if not same else 'several'} {kind} inputs "
                             f"({', '.join(f'{n}: {k}' for n, k in kinds.items())}); use --input NAME=VALUE")
        values[name] = value
    for item in named or []:
        if "=" not in item:
            raise UsageError(f"--input {item!r}: expected NAME=VALUE, e.g. --input image=x.png")
        name, value = item.split("=", 1)
        values[name.strip()] = value
    vectors = {}
    for n, v in values.items():
        if kinds.get(n) == "vector":
            try:
                vectors[n] = [float(x) for x in v.strip("[] ").split(",") if x.strip()]
            except ValueError:
                raise UsageError(f"--{n} {v!r}: expected comma-separated numbers, e.g. 0.5,1,2") from None
    files = {n: v for n, v in values.items() if kinds.get(n) in ("image", "audio") or n not in kinds}
    return {"files": files, "texts": {n: v for n, v in values.items() if kinds.get(n) == "text"}, "vectors": vectors}
