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
from edgekd.data.columns import Column
from edgekd.data.processors import encode
from edgekd.errors import RecipeError


@dataclass
class TeacherView:
    """A dataset as the teacher sees it (the edgekd.data.base.Dataset protocol): the modalities in
    `params` read through the teacher's processors under `<name>__teacher`, the others as they are.
    The processors run on the rows a batch asks for (lazy columns, `heavy` for images and audio so
    loader workers make them in parallel), never on the whole dataset at once."""

    data: object
    params: dict  # modality -> processor parameters (edgekd.data.processors)
    replaced: dict | None = None  # input name -> (spec, per-row array): e.g. cached embeddings
    suffix: str = TEACHER_SUFFIX  # "" for the student's own view (same input names, other tokenizer)

    def __post_init__(self):
        for m, p in self.params.items():
            if not hasattr(self.data, "texts" if p["kind"] == "text" else "files"):
                raise RecipeError(f"recipe.teacher: a pretrained {p['kind']} encoder reads the raw {p['kind']} rows of "
                                  f"a folder dataset; {getattr(self.data, 'name', 'this dataset')} has none for '{m}': "
                                  "use a folder dataset (docs/datasets.md) or a teacher trained here")
        self.name, self.classes, self.num_pairings = self.data.name, self.data.classes, self.data.num_pairings
        self._fetch: dict = {}  # input name -> (fetch over dataset rows, heavy)
        self._all: dict = {}  # input name -> a per-row array over every row (replaced inputs)
        self.modalities, self.preprocess = {}, {}
        replaced = self.replaced or {}
        for m, spec in self.data.modalities.items():
            if m in self.params:
                p = self.params[m]
                name = m + self.suffix
                if name not in replaced:
                    self._fetch[name] = (self._processor(m, p), p["kind"] != "text")
                    if p["kind"] == "text":
                        self.modalities[name] = ModalitySpec(name, "text", (int(p["max_length"]),), "int64",
                                                             int(p["vocab_size"]))
                    else:  # the processor's output shape, from the first row
                        shape = self._fetch[name][0](np.zeros(1, dtype=np.int64)).shape[1:]
                        self.modalities[name] = ModalitySpec(name, p["kind"], tuple(shape), "float32")
                else:
                    self.modalities[name] = replaced[name][0]  # keeps the dataset's input order
                self.preprocess[name] = {k: v for k, v in p.items() if k not in ("vocab_size", "source")}
            else:
                self.modalities[m], self.preprocess[m] = spec, self.data.preprocess[m]
        for name, (spec, rows) in replaced.items():
            self.modalities[name], self._all[name] = spec, rows

    def _processor(self, m: str, p: dict):
        if p["kind"] == "text":
            return lambda rows: encode(p, self.data.texts(m, rows))
        return lambda rows: encode(p, self.data.files(m, rows))

    def _column(self, name: str, rows: np.ndarray) -> Column:
        spec = self.modalities[name]
        if name in self._all:
            arr = self._all[name]
            return Column(lambda r: np.asarray(arr[np.asarray(r)]), rows, spec.shape, spec.dtype)
        fetch, heavy = self._fetch[name]
        col = Column(fetch, rows, spec.shape, spec.dtype)
        col.heavy, col.workers = heavy, getattr(self.data, "workers", None)  # the recipe's data.workers
        return col

    def has_split(self, name: str) -> bool:
        return self.data.has_split(name)

    def split(self, name: str, pairing: int = 0) -> Split:
        base = self.data.split(name, pairing)
        inputs = {m: base.inputs[m] for m in self.modalities if m in base.inputs}
        own = [n for n in self.modalities if n in self._fetch or n in self._all]
        if own:  # only folder datasets have processor inputs, and they know their split's rows
            idx = self.data.split_rows(name)
            inputs.update({n: self._column(n, idx) for n in own})
        return Split({m: inputs[m] for m in self.modalities}, base.labels, base.ids)

    def split_rows(self, name: str) -> np.ndarray:
        return self.data.split_rows(name)

    def rows(self, name: str) -> Column:
        """Every row's input `name` (all splits, dataset order), lazily."""
        return self._column(name, np.arange(len(self.data)))

    def with_rows(self, name: str, spec: ModalitySpec, rows: np.ndarray) -> TeacherView:
        """The same view with input `name` replaced, e.g. by each row's cached embedding; the other
        inputs are carried over as they are."""
        kept = {n: (self.modalities[n], r) for n, r in self._all.items() if n != name}
        return replace(self, replaced={**kept, name: (spec, rows)})

    def texts(self, m: str, rows) -> list[str]:
        return self.data.texts(m, rows)

    def files(self, m: str, rows) -> list:
        return self.data.files(m, rows)

    def __len__(self) -> int:
        return len(self.data)

    def fingerprint(self) -> str:
        if not self.params:
            return self.data.fingerprint()
        h = hashlib.sha256(self.data.fingerprint().encode())
        h.update(json.dumps(self.params, sort_keys=True).encode())
        return h.hexdigest()[:16]
