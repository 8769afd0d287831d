"""A request's fields -> one sample's model inputs, through the bundle's own preprocessing.

The same edgekd.runtime.preprocess functions and preprocess.json numbers as `predict` and training,
so the server answers what `edgekd predict` answers. Every way a field can be wrong is a
`RequestError` (status + one line naming the field and the fix), never an exception that reaches
the client as a 500; limits are checked before decoding, so a small body cannot decode into a huge
array.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass

import numpy as np

from edgekd.contract import TEACHER_SUFFIX
from edgekd.errors import UsageError
from edgekd.runtime import preprocess as pp
from edgekd.runtime.predict import _tokenizer as bundle_tokenizer
from edgekd.runtime.predict import input_kinds


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Limits:
    max_pixels: int = 4096 * 4096
    max_audio_seconds: float = 60.0
    max_text_chars: int = 20_000
    # the decoders a stranger's bytes may reach (no TIFF/PSD/EPS...: less attack surface)
    image_formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP")
    # libsndfile reads 20-odd containers (MAT5, PAF, HTK, ...); a stranger's bytes reach only these
    audio_formats: tuple[str, ...] = ("WAV", "WAVEX", "FLAC", "OGG", "MP3", "AIFF")


WHAT = {"image": "a png/jpg file", "audio": "an audio file (wav, flac, ogg, mp3)", "text": "a text string",
        "vector": "a list of numbers"}


class Decoder:
    """Turns {field: bytes | str | list} into {input name: array without the batch axis} for one model."""

    def __init__(self, bundle, input_names: list[str], limits: Limits | None = None):
        self.limits = limits or Limits()
        kinds = input_kinds(bundle)
        self.kinds = {n: kinds[n] for n in input_names}
        self.params = {n: bundle.preprocess[n] for n in input_names}
        for name, p in self.params.items():
            if p.get("processor_class"):  # transformers code: not on a torch-free device
                raise UsageError(f"input '{name}' is made by the teacher's own {p['processor_class']} (transformers), "
                                 "which the torch-free server does not run; serve a student model (--model)")
        self.aliases = {n[: -len(TEACHER_SUFFIX)]: n for n in input_names
                        if n.endswith(TEACHER_SUFFIX) and n[: -len(TEACHER_SUFFIX)] not in input_names}
        self.tokenizers = {}
        for name, kind in self.kinds.items():
            if kind == "text":
                self.tokenizers[name] = bundle_tokenizer(bundle, name, self.params[name])

    def fields(self) -> dict[str, str]:
        return {n: WHAT[k] for n, k in self.kinds.items()}

    @property
    def field_kinds(self) -> dict[str, str]:
        """Kind of every accepted field name, aliases included."""
        return {**self.kinds, **{a: self.kinds[n] for a, n in self.aliases.items()}}

    def rename(self, given: dict) -> dict:
        """A teacher's own input (`text__teacher`) may be sent under its modality's name (`text`)."""
        both = [a for a, n in self.aliases.items() if a in given and n in given]
        if both:
            raise RequestError(422, f"field '{both[0]}' and '{self.aliases[both[0]]}' are the same input: send one")
        return {self.aliases.get(k, k): v for k, v in given.items()}

    def check_names(self, given) -> None:
        missing = [n for n in self.kinds if n not in given]
        extra = [n for n in given if n not in self.kinds]
        if extra:
            raise RequestError(422, f"unexpected field(s) {', '.join(map(repr, extra))}: this model takes "
                                    f"{self._takes()}")
        if missing:
            raise RequestError(422, f"missing field(s) {', '.join(map(repr, missing))}: this model takes {self._takes()}")

    def _takes(self) -> str:
        return ", ".join(f"{n} ({w})" for n, w in self.fields().items())

    def sample(self, given: dict) -> dict[str, np.ndarray]:
        """`given`: field -> bytes (image/audio), str (text), list/str of numbers (vector)."""
        given = self.rename(given)
        self.check_names(given)
        return {n: self._one(n, self.kinds[n], given[n]) for n in self.kinds}

    def _one(self, name: str, kind: str, value) -> np.ndarray:
        p = self.params[name]
        try:
            if kind == "text":
                if not isinstance(value, str):
                    raise RequestError(422, f"field '{name}' must be a text string, got {type(value).__name__}")
                if len(value) > self.limits.max_text_chars:
                    raise RequestError(413, f"field '{name}' is {len(value)} characters long (at most "
                                            f"{self.limits.max_text_chars})")
                return pp.text_ids(value, p, tokenizer=self.tokenizers[name])
            if kind == "vector":
                return pp.vector_array(_numbers(name, value), p)
            if not isinstance(value, (bytes, bytearray)) or not value:
                raise RequestError(422, f"field '{name}' must be {WHAT[kind]} (a file part, or base64 in JSON), "
                                        f"got {'nothing' if not value else type(value).__name__}")
            if kind == "image":
                return pp.image_from_file(io.BytesIO(value), p, max_pixels=self.limits.max_pixels,
                                          formats=self.limits.image_formats)
            return pp.audio_from_file(io.BytesIO(value), p, max_seconds=self.limits.max_audio_seconds,
                                      formats=self.limits.audio_formats)
        except RequestError:
            raise
        except Exception as e:  # noqa: BLE001 -- a stranger's bytes: any decoder failure (Pillow raises SyntaxError) is a 422
            why = pp.decoder_reason(e)
            status = 413 if "too large" in why or "long (at most" in why else 422
            raise RequestError(status, f"field '{name}' is not a readable {WHAT[kind]} ({why[:200]})") from None


def _numbers(name: str, value) -> list[float]:
    if isinstance(value, str):  # a form field: "0.5,1,2" or "[0.5, 1, 2]"
        try:
            value = [float(x) for x in value.strip().strip("[]").split(",") if x.strip()]
        except (ValueError, OverflowError):
            raise RequestError(422, f"field '{name}' must be comma-separated numbers, e.g. 0.5,1,2") from None
    if not isinstance(value, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        raise RequestError(422, f"field '{name}' must be a list of numbers")
    try:
        return [float(x) for x in value]
    except OverflowError:  # a 400-digit integer in JSON
        raise RequestError(422, f"field '{name}' holds a number too large for float32") from None


def _unique_keys(pairs: list) -> dict:
    """A JSON object whose keys are all different: `{"image": a, "image": b}` is refused, not read as b."""
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise RequestError(422, f"JSON key '{key[:80]}' is given twice: send one value per key")
        seen[key] = value
    return seen


def from_json(body: bytes, kinds: dict[str, str]) -> dict:
    """{"inputs": {"image": "<base64>", "text": "...", "vec": [1, 2]}} -> fields (files decoded)."""
    try:
        doc = json.loads(body, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise RequestError(400, "JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"body is not valid JSON ({str(e)[:120]}): send {{\"inputs\": {{...}}}}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), dict):
        raise RequestError(422, 'JSON body must be an object {"inputs": {field: value}}; files as base64 strings')
    out = {}
    for name, value in doc["inputs"].items():
        if kinds.get(name) in ("image", "audio"):
            if not isinstance(value, str):
                raise RequestError(422, f"field '{name}' must be a base64 string in JSON")
            try:  # MIME-style line breaks are allowed, anything else outside the alphabet is not
                value = base64.b64decode(value.replace("\r", "").replace("\n", ""), validate=True)
            except (binascii.Error, ValueError):
                raise RequestError(422, f"field '{name}' is not valid base64") from None
        out[name] = value
    return out


async def from_form(request, kinds: dict[str, str], max_fields: int = 64, max_part_size: int = 16 * 2**20) -> dict:
    """A multipart (or urlencoded) form: files per image/audio field, text and vector as fields."""
    try:
        form = await request.form(max_files=max_fields, max_fields=max_fields, max_part_size=max_part_size)
    except Exception as e:  # noqa: BLE001 -- python-multipart and starlette raise several types for a bad body
        raise RequestError(400, f"malformed form body ({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})"
                                "; send multipart/form-data with one part per input") from None
    out = {}
    try:
        for name, value in form.multi_items():
            if name in out:
                raise RequestError(422, f"field '{name}' is given twice: send one value per input")
            if hasattr(value, "read"):  # an uploaded file part
                out[name] = await value.read()
            elif kinds.get(name) in ("image", "audio"):
                raise RequestError(422, f"field '{name}' must be a file part ({WHAT[kinds[name]]})")
            else:
                out[name] = value
    finally:
        await form.close()
    return out
