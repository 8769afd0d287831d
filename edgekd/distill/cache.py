"""Teacher outputs for distillation: computed once per train pairing and memory-mapped, or live.

The cache lives in the run directory under cache/teacher-<key>/pairing<k>/, keyed by the teacher
weights' sha256 and the dataset fingerprint, so a retrained teacher or changed data never reuses
stale targets. The QAT stage reads the same files.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from edgekd import distributed as dist
from edgekd.contract import modality_of
from edgekd.data.base import Dataset
from edgekd.distill.lengths import token_lengths
from edgekd.files import atomic_path, atomic_write_json

_FILES = ("logits", "features")


def _by_length(teacher, names: list[str], inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Row order by real token count where the teacher's encoders read token ids and cut padding
    (edgekd.distill.lengths), so each batch of the pass holds texts of similar length. Dataset order otherwise."""
    lengths = token_lengths(teacher, names, inputs)
    n = len(next(iter(inputs.values())))
    return np.argsort(lengths, kind="stable") if lengths is not None else np.arange(n)


@torch.no_grad()
def _teacher_outputs(teacher, names: list[str], inputs: dict[str, np.ndarray], batch_size: int = 256) -> dict:
    teacher.eval()
    order = _by_length(teacher, names, inputs)
    chunks: dict[str, list] = {}
    for i in range(0, len(order), batch_size):
        rows = order[i : i + batch_size]
        out = teacher({m: torch.from_numpy(np.ascontiguousarray(inputs[m][rows])) for m in names})
        parts = {"logits": out.logits, "features": out.features}
        parts.update({f"mod_{m}": f for m, f in out.modality_features.items()})
        for k, v in parts.items():
            chunks.setdefault(k, []).append(v.float().numpy())
    back = np.argsort(order)  # each row's outputs back at its own position
    return {k: np.concatenate(v)[back] for k, v in chunks.items()}


class TeacherTargets:
    """`get(pairing, idx)` -> {"logits", "features", "modality_features": {m: ...}} as tensors."""

    def __init__(self, teacher, teacher_names: list[str], data: Dataset, cache_dir: Path | None):
        self.teacher, self.names, self.data, self.cache_dir = teacher, teacher_names, data, cache_dir
        self._loaded: dict[int, dict[str, np.ndarray]] = {}
        self._split_cache: dict[int, dict] = {}
        self.computed_pairings: list[int] = []

    def _dir(self, pairing: int) -> Path:
        return self.cache_dir / f"pairing{pairing}"

    def _load_or_compute(self, pairing: int) -> dict[str, np.ndarray]:
        if pairing in self._loaded:
            return self._loaded[pairing]
        d = self._dir(pairing)
        if not (d / "meta.json").is_file():  # meta.json is written last: its presence means complete
            inputs = self.data.split("train", pairing).inputs
            rows = dist.shard_rows(len(next(iter(inputs.values()))))  # torchrun: each rank its block
            arrays = dist.gather_rows(_teacher_outputs(self.teacher, self.names, {m: inputs[m][rows] for m in self.names}))
            d.mkdir(parents=True, exist_ok=True)
            for k, v in arrays.items():
                with atomic_path(d / f"{k}.npy") as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, v)
            atomic_write_json(d / "meta.json", {"pairing": pairing, "files": sorted(arrays), "rows": len(v)})
            self.computed_pairings.append(pairing)
            dist.barrier()  # rank 0 has written the merged files
        meta = json.loads((d / "meta.json").read_text())
        self._loaded[pairing] = {k: np.load(d / f"{k}.npy", mmap_mode="r") for k in meta["files"]}
        return self._loaded[pairing]

    def get(self, pairing: int, idx: np.ndarray, inputs: dict | None = None) -> dict:
        """Targets for train rows `idx` of `pairing`. `inputs` (augmented batch tensors) are run
        through the live teacher as they are; the cache only holds un-augmented inputs."""
        if inputs is not None and self.cache_dir is None and set(self.names) <= set(inputs):
            sel = {k: torch.from_numpy(v) for k, v in
                   _teacher_outputs(self.teacher, self.names, {m: inputs[m].numpy() for m in self.names}).items()}
        elif self.cache_dir is not None:
            arrays = self._load_or_compute(pairing)
            sel = {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in arrays.items()}
        else:  # live teacher: the batch's inputs go through the teacher every step
            split = self._split_cache.get(pairing)
            if split is None:
                self._split_cache = {pairing: (split := self.data.split("train", pairing))}
            sel = {k: torch.from_numpy(v) for k, v in
                   _teacher_outputs(self.teacher, self.names, {m: split.inputs[m][idx] for m in self.names}).items()}
        # keyed by modality: a teacher input read through the teacher's own processor
        # (`caption__teacher`) teaches the student's `caption`
        return {"logits": sel["logits"], "features": sel["features"],
                "modality_features": {modality_of(k[4:]): v for k, v in sel.items() if k.startswith("mod_")}}

    @property
    def modalities(self) -> list[str]:
        """The modalities the teacher reads (its input names without the teacher suffix)."""
        return [modality_of(n) for n in self.names]

    def prepare(self, pairings: int) -> None:
        """Fill the cache for every pairing up front (so epoch timings measure training only)."""
        if self.cache_dir is not None:
            for p in range(pairings):
                self._load_or_compute(p)


class SelfTargets:
    """Targets from a frozen copy of the model being fine-tuned (QAD with the FP32 student as the
    teacher, ModelOpt's default): run on the same batch with the same modality mask, so the
    quantized model is asked to reproduce exactly what its FP32 self computes."""

    def __init__(self, model):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def get(self, inputs: dict, keep) -> dict:
        out = self.model(inputs, keep=keep)
        return {"logits": out.logits, "features": out.features, "modality_features": dict(out.modality_features)}
