"""Frozen pretrained encoders, run once: their embeddings of every row, memory-mapped in the run
directory (teacher.train: head). A 100M-parameter encoder then costs one forward pass per sample,
and fitting the teacher's head costs what fitting a small MLP does.

The cache is keyed by the encoder's weights, its processor's parameters and the data fingerprint,
written file by file and `meta.json` last (a folder without it is incomplete and recomputed).
Texts are embedded in batches of similar length, each cut to its longest real token run: the
padding is masked in attention and pooling alike, so this only saves work.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from edgekd.files import atomic_path, atomic_write_json


def _params_without_embeddings(module) -> int:
    emb = sum(p.numel() for m in module.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters())
    return sum(p.numel() for p in module.parameters()) - emb


@torch.no_grad()
def embed_rows(encoder, ids: np.ndarray, pad_id: int, batch_size: int = 64, progress=None, label: str = "embed"):
    """(N, D) float32 embeddings of every row of token ids, and {seconds, samples_per_s, gflops_per_s}
    (GFLOP/s estimated as 2 x non-embedding parameters x real tokens / seconds)."""
    encoder.eval()
    lengths = (ids != pad_id).sum(1)
    order = np.argsort(-lengths, kind="stable")  # similar lengths share a batch
    out = None
    task = progress.add_task(label, total=len(ids)) if progress else None
    t0 = time.perf_counter()
    for i in range(0, len(ids), batch_size):
        rows = order[i : i + batch_size]
        width = max(1, int(lengths[rows].max()))
        emb = encoder.embed(torch.from_numpy(np.ascontiguousarray(ids[rows, :width]))).float().numpy()
        if out is None:
            out = np.zeros((len(ids), emb.shape[1]), dtype=np.float32)
        out[rows] = emb
        if progress:
            progress.update(task, advance=len(rows))
    seconds = max(time.perf_counter() - t0, 1e-9)
    if progress:
        progress.remove_task(task)
    flops = 2.0 * _params_without_embeddings(encoder.net) * float(lengths.sum())
    return out, {"rows": int(len(ids)), "seconds": round(seconds, 2), "samples_per_s": round(len(ids) / seconds, 1),
                 "gflops_per_s": round(flops / seconds / 1e9, 1)}


def cached_embeddings(cache_dir: Path, name: str, compute) -> tuple[np.ndarray, dict]:
    """The embeddings of input `name` from `cache_dir`, or compute() -> (array, stats) and store them."""
    meta_file = cache_dir / f"{name}.meta.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        arr = np.load(cache_dir / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        if arr.shape[0] == meta.get("rows"):
            return arr, {**meta, "cached": True}
    arr, stats = compute()
    with atomic_path(cache_dir / f"{name}.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, arr)
    atomic_write_json(meta_file, stats)  # last: its presence means the array is whole
    return np.load(cache_dir / f"{name}.npy", mmap_mode="r", allow_pickle=False), {**stats, "cached": False}
