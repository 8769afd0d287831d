"""A pretrained model's own processors, loaded from its directory: what the teacher's inputs are.

text: AutoTokenizer (fast), run through its Rust core with truncation at `max_length`, so the same
tokenizer.json reproduces the ids torch-free on a device (edgekd.runtime.preprocess.text_ids).
image: AutoImageProcessor on its PIL/numpy backend (no torchvision): the model's size, crop,
channels and normalisation. audio: AutoFeatureExtractor at its own sampling rate (Whisper log-mel,
AST filter banks, wav2vec2 waveforms). All local files only, no remote code.

Each yields JSON parameters (stored in the teacher's config.json and in the bundle) from which
`encode` rebuilds the processor -- only classes transformers itself defines -- and turns a
dataset's raw rows (texts, image and audio files) into the model's inputs.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from edgekd.errors import CheckpointError, DataError, RecipeError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
PREPROCESSOR = "preprocessor_config.json"
_WHAT = {"image": ("image processor", "AutoImageProcessor"), "audio": ("feature extractor", "AutoFeatureExtractor")}
_BATCH = 64


@contextlib.contextmanager
def quiet_transformers():
    """transformers warns on stderr about optional backends (torchvision) edgekd does not use."""
    from transformers.utils import logging

    before = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(before)


def _first(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def processor_params(kind: str, model_dir: Path, where: str, max_length: int | None = None,
                     seconds: float = 1.0) -> dict:
    """The parameters of the processor `model_dir` ships for inputs of `kind`."""
    if kind == "text":
        return text_params(model_dir, where, max_length)
    if kind not in _WHAT:
        raise RecipeError(f"{where}: a pretrained encoder reads image, audio or text inputs, not {kind}")
    what, auto = _WHAT[kind]
    if not (model_dir / PREPROCESSOR).is_file():
        raise CheckpointError(f"{where}: {model_dir} has no {PREPROCESSOR} (the model's {what}); save it beside the "
                              f"model with {auto}.from_pretrained(...).save_pretrained(DIR)")
    import transformers

    try:
        with quiet_transformers():
            if kind == "image":  # the PIL backend: numpy and Pillow, no torchvision
                pil = {"backend": "pil"} if int(transformers.__version__.split(".")[0]) >= 5 else {"use_fast": False}
                proc = transformers.AutoImageProcessor.from_pretrained(
                    str(model_dir), local_files_only=True, trust_remote_code=False, **pil)
            else:
                proc = transformers.AutoFeatureExtractor.from_pretrained(
                    str(model_dir), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{where}: cannot load the {what} in {model_dir} ({_first(e)}); save the model's own "
                              f"with {auto}.from_pretrained(...).save_pretrained(DIR)") from None
    p = {"kind": kind, "processor_class": type(proc).__name__, "processor": json.loads(proc.to_json_string()),
         "source": f"teacher {what}"}
    if kind == "image":
        p["alpha"] = "white"  # transparent pixels on white, as the student's images (a processor drops alpha)
    else:
        p.update(sampling_rate=int(proc.sampling_rate), seconds=float(seconds))
    return p


def _rebuild(p: dict):
    """The processor from its stored parameters: a class transformers defines, nothing else."""
    import transformers

    with quiet_transformers():
        cls = getattr(transformers, str(p.get("processor_class")), None)
        base = transformers.ImageProcessingMixin if p["kind"] == "image" else transformers.FeatureExtractionMixin
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise CheckpointError(f"processor class {p.get('processor_class')!r} is not a transformers "
                                  f"{_WHAT[p['kind']][0]}; re-run the teacher stage with this version")
        return cls.from_dict(dict(p["processor"]))


def encode(p: dict, raw: list, label: str = "") -> np.ndarray:
    """The model inputs of every raw row: texts for text, image/audio file paths otherwise."""
    if p["kind"] == "text":
        return encode_texts(raw, p)
    proc = _rebuild(p)
    main = proc.model_input_names[0]  # pixel_values, input_features, input_values
    load = _image if p["kind"] == "image" else _audio
    parts = []
    with quiet_transformers():
        for i in range(0, len(raw), _BATCH):
            items = [load(f, p) for f in raw[i : i + _BATCH]]
            kw = {"images": items} if p["kind"] == "image" else {"raw_speech": items, "sampling_rate": p["sampling_rate"]}
            parts.append(np.asarray(proc(**kw, return_tensors="np")[main], dtype=np.float32))
    return np.concatenate(parts)


def _image(path, p: dict):
    from PIL import Image

    try:
        with Image.open(path) as im:
            if p.get("alpha") == "white" and (im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info):
                im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image for the teacher's processor ({_first(e)}): replace it") from None


def _audio(path, p: dict) -> np.ndarray:
    from edgekd.runtime import preprocess as pp

    try:
        samples, rate = pp.read_audio(path)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable audio file for the teacher's processor ({_first(e)}): replace it") from None
    sr = int(p["sampling_rate"])  # every clip the same length: what the student's features cover too
    return pp.fit_length(pp.resample(samples, rate, sr), int(round(float(p["seconds"]) * sr)))


# --------------------------------------------------------------------------- text


def text_params(model_dir: Path, where: str, max_length: int | None = None) -> dict:
    """The preprocess parameters of a model directory's own tokenizer (kind text, tokenizer_json,
    max_length, pad_id): what the teacher view encodes with and what a bundle ships."""
    from transformers import AutoTokenizer

    if not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        raise CheckpointError(f"{where}: {model_dir} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save "
                              "the model's tokenizer beside it with tokenizer.save_pretrained(DIR)")
    try:
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{where}: cannot load the tokenizer in {model_dir} ({_first(e)}); save it with "
                              "tokenizer.save_pretrained(DIR)") from None
    if not getattr(tok, "is_fast", False):
        raise CheckpointError(f"{where}: the tokenizer in {model_dir} has no tokenizer.json (a slow tokenizer cannot "
                              "run on a device without transformers); save a fast one with "
                              "AutoTokenizer.from_pretrained(..., use_fast=True).save_pretrained(DIR)")
    if tok.pad_token_id is None:
        raise CheckpointError(f"{where}: the tokenizer in {model_dir} defines no padding token; set one "
                              "(tokenizer.pad_token = ...) and save it again")
    limit = tok.model_max_length if 0 < tok.model_max_length < 100_000 else 512
    length = min(limit, max_length or 128)
    core = _core(tok.backend_tokenizer.to_str(), length)
    # CLIP-style tokenizers pad with their end-of-text token: the first one is real (the causal text
    # tower pools there), so padding cannot be told from ids and the mask must come from lengths
    pad_is_eos = tok.eos_token_id is not None and tok.eos_token_id == tok.pad_token_id
    return {"kind": "text", "max_length": length, "tokenizer_json": core.to_str(), "pad_id": int(tok.pad_token_id),
            "vocab_size": int(core.get_vocab_size()), "source": "teacher tokenizer",
            **({"pad_is_eos": True} if pad_is_eos else {})}


def _core(tokenizer_json: str, length: int):
    from tokenizers import Tokenizer

    core = Tokenizer.from_str(tokenizer_json)
    core.no_padding()
    core.enable_truncation(length)  # truncates before the post-processor adds [CLS]/[SEP]: HF's own behaviour
    return core


def encode_texts(texts: list[str], p: dict) -> np.ndarray:
    """(N, max_length) int64 token ids padded with the tokenizer's pad id."""
    core = _core(p["tokenizer_json"], int(p["max_length"]))
    out = np.full((len(texts), int(p["max_length"])), int(p.get("pad_id", 0)), dtype=np.int64)
    for i, enc in enumerate(core.encode_batch(list(texts))):
        ids = enc.ids[: out.shape[1]]
        out[i, : len(ids)] = ids
    return out


def pruned_text_params(p: dict, texts: list[str]) -> dict:
    """A tokenizer's parameters with its vocabulary cut to the tokens `texts` use ([PAD] = 0,
    [UNK] = 1, then the seen ids in order): a 30k-row embedding table becomes a few thousand rows
    on the device. Words of other splits that the kept pieces cannot spell become [UNK]."""
    spec = json.loads(p["tokenizer_json"])
    model = spec.get("model") or {}
    if model.get("type") != "WordPiece":
        raise RecipeError(f"recipe.student.text_tokenizer: teacher needs a WordPiece (BERT-style) tokenizer; the "
                          f"teacher's is {model.get('type')}: use text_tokenizer: own")
    seen = {i for enc in _core(p["tokenizer_json"], int(p["max_length"])).encode_batch(list(texts)) for i in enc.ids}
    by_id = {i: t for t, i in model["vocab"].items()}
    pad, unk = int(p["pad_id"]), model["vocab"][model.get("unk_token", "[UNK]")]
    keep = [pad, unk] + sorted(seen - {pad, unk})
    new = {old: i for i, old in enumerate(keep)}
    model["vocab"] = {by_id[old]: i for old, i in new.items()}
    for entry in (spec.get("post_processor") or {}).get("special_tokens", {}).values():
        entry["ids"] = [new.get(i, 1) for i in entry["ids"]]
    spec["added_tokens"] = [{**t, "id": new[t["id"]]} for t in spec.get("added_tokens") or [] if t["id"] in new]
    spec["padding"] = None
    pruned = json.dumps(spec)
    _core(pruned, int(p["max_length"]))  # it must still load
    return {"kind": "text", "max_length": int(p["max_length"]), "tokenizer_json": pruned, "pad_id": 0,
            "vocab_size": len(keep), "source": "teacher tokenizer, vocabulary pruned to the train split"}
