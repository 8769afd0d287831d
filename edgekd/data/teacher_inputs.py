"""The teacher's input path: what a pretrained encoder's own processor makes of the same raw rows.

The student sees edgekd's numpy preprocessing (what the bundle ships); a pretrained teacher sees
what it was trained on. Both come from the same rows of the same dataset, so a sample's teacher and
student inputs always describe the same thing. A modality the teacher reads through its own
processor gets its own input name (`caption__teacher`), so both inputs can live side by side in one
bundle test set and one ONNX graph never receives the other's tensors.

The processors themselves (tokenizer, image processor, feature extractor) live in
edgekd.data.processors; this module only lays their outputs beside the dataset's own inputs.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

import numpy as np

from edgekd.contract import TEACHER_SUFFIX
from edgekd.data.base import ModalitySpec, Split
from edgekd.data.processors import encode
from edgekd.errors import RecipeError


@dataclass
class TeacherView:
    """A dataset as the teacher sees it (the edgekd.data.base.Dataset protocol): the modalities in
    `params` read through the teacher's processors under `<name>__teacher`, the others as they are."""

    data: object
    params: dict  # modality -> processor parameters (edgekd.data.processors)
    replaced: dict | None = None  # input name -> (spec, per-row array): e.g. cached embeddings
    suffix: str = TEACHER_SUFFIX  # "" for the student's own view (same input names, other tokenizer)

    def __post_init__(self):
        for m, p in self.params.items():
            raw = self.data_raw(m, p["kind"])
            if raw is None:
                raise RecipeError(f"recipe.teacher: a pretrained {p['kind']} encoder reads the raw {p['kind']} rows of "
                                  f"a folder dataset; {getattr(self.data, 'name', 'this dataset')} has none for '{m}': "
                                  "use a folder dataset (docs/datasets.md) or a teacher trained here")
        self.name, self.classes, self.num_pairings = self.data.name, self.data.classes, self.data.num_pairings
        self._rows = {}
        self.modalities, self.preprocess = {}, {}
        replaced = self.replaced or {}
        for m, spec in self.data.modalities.items():
            if m in self.params:
                p = self.params[m]
                name = m + self.suffix
                if name not in replaced:  # with_rows() keeps every other input: no second processor pass
                    self._rows[name] = rows = encode(p, self.data_raw(m, p["kind"]))
                    self.modalities[name] = (
                        ModalitySpec(name, "text", (int(p["max_length"]),), "int64", int(p["vocab_size"]))
                        if p["kind"] == "text" else ModalitySpec(name, p["kind"], tuple(rows.shape[1:]), "float32"))
                else:
                    self.modalities[name] = replaced[name][0]  # keeps the dataset's input order
                self.preprocess[name] = {k: v for k, v in p.items() if k not in ("vocab_size", "source")}
            else:
                self.modalities[m], self.preprocess[m] = spec, self.data.preprocess[m]
        for name, (spec, rows) in replaced.items():
            self.modalities[name], self._rows[name] = spec, rows

    def data_raw(self, m: str, kind: str) -> list | None:
        """Column `m` as written: texts, or image/audio file paths (folder datasets keep both)."""
        return (getattr(self.data, "raw_text" if kind == "text" else "raw_files", None) or {}).get(m)

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
