"""Teacher outputs for distillation: computed once per train pairing and memory-mapped, or live.

The cache lives in the run directory under cache/teacher-<key>/pairing<k>/, keyed by the teacher
weights' sha256 and the dataset fingerprint, so a retrained teacher or changed data never reuses
stale targets. The QAT stage reads the same files.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from edgekd import distributed as dist
from edgekd.contract import modality_of
from edgekd.data.base import Dataset
from edgekd.data.columns import take
from edgekd.data.loader import batches
from edgekd.distill.lengths import token_lengths
from edgekd.distill.rowfile import RowFile
from edgekd.files import atomic_write_json

_FILES = ("logits", "features")


def _by_length(teacher, names: list[str], inputs: dict) -> np.ndarray:
    """Row order by real token count where the teacher's encoders read token ids and cut padding
    (edgekd.distill.lengths), so each batch of the pass holds texts of similar length. Dataset order otherwise."""
    lengths = token_lengths(teacher, names, inputs)
    n = len(next(iter(inputs.values())))
    return np.argsort(lengths, kind="stable") if lengths is not None else np.arange(n)


@torch.no_grad()
def _outputs(teacher, names: list[str], inputs: dict, batch_size: int = 256):
    """(rows, {output name: array}) batch by batch, in length order, through the loader."""
    teacher.eval()
    order = _by_length(teacher, names, inputs)
    for rows, x in batches({m: inputs[m] for m in names}, [order[i : i + batch_size] for i in range(0, len(order), batch_size)]):
        out = teacher({m: torch.from_numpy(x[m]) for m in names})
        parts = {"logits": out.logits, "features": out.features}
        parts.update({f"mod_{m}": f for m, f in out.modality_features.items()})
        yield rows, {k: v.float().numpy() for k, v in parts.items()}


def _teacher_outputs(teacher, names: list[str], inputs: dict, batch_size: int = 256) -> dict:
    """Every row's outputs in memory (a live teacher's batch; the cache writes files instead)."""
    n = len(next(iter(inputs.values())))
    out: dict[str, np.ndarray] = {}
    for rows, parts in _outputs(teacher, names, inputs, batch_size):
        for k, v in parts.items():
            out.setdefault(k, np.zeros((n, *v.shape[1:]), dtype=np.float32))[rows] = v
    return out


def write_outputs(teacher, names: list[str], inputs: dict, folder: Path) -> list[str]:
    """The teacher's outputs for every row of `inputs`, streamed into folder/<name>.npy."""
    n = len(next(iter(inputs.values())))
    files: dict[str, RowFile] = {}
    try:
        for rows, parts in _outputs(teacher, names, inputs):
            for k, v in parts.items():
                if k not in files:
                    files[k] = RowFile(folder / f"{k}.npy", n, v.shape[1:])
                files[k].write(rows, v)
    except BaseException:
        for f in files.values():
            f.abort()
        raise
    for f in files.values():
        f.close()
    return sorted(files)


def merge_ranks(folder: Path, parts: list[Path], keys: list[str], chunk: int = 4096) -> None:
    """Rank shards (each rank's block of rows, in rank order) copied into whole files, a chunk at a
    time: no process holds every row."""
    for k in keys:
        arrays = [np.load(p / f"{k}.npy", mmap_mode="r") for p in parts]
        total = sum(len(a) for a in arrays)
        out = RowFile(folder / f"{k}.npy", total, arrays[0].shape[1:])
        start = 0
        for a in arrays:
            for i in range(0, len(a), chunk):
                block = np.asarray(a[i : i + chunk])
                out.write(np.arange(start + i, start + i + len(block)), block)
            start += len(a)
        out.close()


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
            n = len(next(iter(inputs.values())))
            d.mkdir(parents=True, exist_ok=True)
            ranks = [n]
            if dist.active():  # each rank its block of rows into its own shard; rank 0 merges them from disk
                rows = dist.shard_rows(n)
                mine = d / f"rank{dist.rank()}"
                mine.mkdir(exist_ok=True)
                keys = write_outputs(self.teacher, self.names, {m: take(inputs[m], rows) for m in self.names}, mine)
                ranks = [int(c) for c in dist.all_reduce_sum([len(rows) if r == dist.rank() else 0
                                                               for r in range(dist.world_size())])]
                if dist.is_main():
                    parts = [d / f"rank{r}" for r in range(dist.world_size())]
                    merge_ranks(d, parts, keys)
                    for p in parts:
                        shutil.rmtree(p, ignore_errors=True)
            else:
                keys = write_outputs(self.teacher, self.names, {m: inputs[m] for m in self.names}, d)
            atomic_write_json(d / "meta.json", {"pairing": pairing, "files": keys, "rows": n, "rows_per_rank": ranks})
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
