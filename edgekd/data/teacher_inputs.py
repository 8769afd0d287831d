"""The teacher's input path: what a pretrained encoder's own processor makes of the same raw rows.

The student sees edgekd's numpy preprocessing (what the bundle ships); a pretrained teacher sees
what it was trained on. Both come from the same rows of the same dataset, so a sample's teacher and
student inputs always describe the same thing. A modality the teacher reads through its own
processor gets its own input name (`caption__teacher`), so both inputs can live side by side in one
bundle test set and one ONNX graph never receives the other's tensors.

Text: the model directory's own tokenizer (transformers' AutoTokenizer, local files only, no
remote code), run through its fast (Rust) core with truncation at `max_length`, so the same
tokenizer.json reproduces the ids torch-free on a device (edgekd.runtime.preprocess.text_ids).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgekd.contract import TEACHER_SUFFIX
from edgekd.data.base import ModalitySpec, Split
from edgekd.errors import CheckpointError, RecipeError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def text_params(model_dir: Path, where: str, max_length: int | None = None) -> dict:
    """The preprocess parameters of a model directory's own tokenizer (kind text, tokenizer_json,
    max_length, pad_id): what the teacher view encodes with and what a bundle ships."""
    from transformers import AutoTokenizer

    if not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        raise CheckpointError(f"{where}: {model_dir} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save "
                              "the model's tokenizer beside it with tokenizer.save_pretrained(DIR)")
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{where}: cannot load the tokenizer in {model_dir} ({first}); save it with "
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
    return {"kind": "text", "max_length": length, "tokenizer_json": core.to_str(), "pad_id": int(tok.pad_token_id),
            "vocab_size": int(core.get_vocab_size()), "source": "teacher tokenizer"}


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


@dataclass
class TeacherView:
    """A dataset as the teacher sees it (the edgekd.data.base.Dataset protocol): the modalities in
    `params` read through the teacher's processors under `<name>__teacher`, the others as they are."""

    data: object
    params: dict  # modality -> processor parameters (text_params)
    replaced: dict | None = None  # input name -> (spec, per-row array): e.g. cached embeddings
    suffix: str = TEACHER_SUFFIX  # "" for the student's own view (same input names, other tokenizer)

    def __post_init__(self):
        if self.params and not hasattr(self.data, "raw_text"):
            raise RecipeError("recipe.teacher.encoders: a pretrained text encoder needs a folder dataset's text "
                              f"column; {getattr(self.data, 'name', 'this dataset')} has none")
        self.name, self.classes, self.num_pairings = self.data.name, self.data.classes, self.data.num_pairings
        self._rows = {}
        self.modalities, self.preprocess = {}, {}
        replaced = self.replaced or {}
        for m, spec in self.data.modalities.items():
            if m in self.params:
                p = self.params[m]
                name = m + self.suffix
                if name not in replaced:  # with_rows() keeps every other input: no second tokenizer pass
                    self._rows[name] = encode_texts(self.data.raw_text[m], p)
                self.modalities[name] = ModalitySpec(name, "text", (int(p["max_length"]),), "int64", int(p["vocab_size"]))
                self.preprocess[name] = {k: v for k, v in p.items() if k not in ("vocab_size", "source")}
            else:
                self.modalities[m], self.preprocess[m] = spec, self.data.preprocess[m]
        for name, (spec, rows) in replaced.items():
            self.modalities[name], self._rows[name] = spec, rows

    def has_split(self, name: str) -> bool:
        return self.data.has_split(name)

    def split(self, name: str, pairing: int = 0) -> Split:
        base = self.data.split(name, pairing)
        inputs = {m: base.inputs[m] for m in self.modalities if m in base.inputs}
        if self._rows:
            idx = self.data.split_rows(name)
            inputs.update({n: rows[idx] for n, rows in self._rows.items()})
        return Split({m: inputs[m] for m in self.modalities}, base.labels, base.ids)

    def rows(self, name: str) -> np.ndarray:
        """Every row's input `name` (all splits, dataset order)."""
        return self._rows[name]

    def with_rows(self, name: str, spec: ModalitySpec, rows: np.ndarray) -> TeacherView:
        """The same view with input `name` replaced, e.g. by each row's cached embedding; the other
        inputs are carried over as they are."""
        kept = {n: (self.modalities[n], r) for n, r in self._rows.items() if n != name}
        return replace(self, replaced={**kept, name: (spec, rows)})

    def fingerprint(self) -> str:
        if not self.params:
            return self.data.fingerprint()
        h = hashlib.sha256(self.data.fingerprint().encode())
        h.update(json.dumps(self.params, sort_keys=True).encode())
        return h.hexdigest()[:16]


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
