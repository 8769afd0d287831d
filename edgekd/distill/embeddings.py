"""Frozen pretrained encoders, run once: their embeddings of every row, memory-mapped in the run
directory (teacher.train: head). A 100M-parameter encoder then costs one forward pass per sample,
and fitting the teacher's head costs what fitting a small MLP does.

The cache is keyed by the encoder's weights, its processor's parameters and the data fingerprint,
written file by file and `meta.json` last (a folder without it is incomplete and recomputed).
Texts are embedded in batches of similar length, each cut to its longest real token run: the
padding is masked in attention and pooling alike, so this only saves work. Images and audio come
as their processor made them (pixel values, log-mel features, waveforms).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from edgekd.distill import teacher_pass
from edgekd.files import atomic_path, atomic_write_json


def _params_without_embeddings(module) -> int:
    emb = sum(p.numel() for m in module.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters())
    return sum(p.numel() for p in module.parameters()) - emb


def _flops(encoder, x: torch.Tensor) -> float:
    """The forward FLOPs of one batch, counted by torch (convolutions, attention and all)."""
    from torch.utils.flop_counter import FlopCounterMode

    # with grad on: FlopCounterMode's module tracker fails on no-grad tensors (torch 2.13)
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        encoder.embed(x)
    return float(counter.get_total_flops())


@torch.no_grad()
def embed_rows(encoder, rows: np.ndarray, batch_size: int = 64, progress=None, label: str = "embed",
               threads: int = 1):
    """(N, D) float32 embeddings of every row (token ids, or the processor's pixel/audio arrays) and
    {rows, seconds, samples_per_s, gflops_per_s}. Text: GFLOP/s estimated as 2 x non-embedding
    parameters x real tokens / seconds; image/audio: the first batch's FLOPs as counted by torch,
    scaled to all rows. The pass runs where it is fastest (edgekd.distill.teacher_pass); that
    choice and its trial join the figures."""
    encoder.eval()
    text = rows.dtype.kind in "iu"
    if text:
        lengths = encoder.text_mask(torch.from_numpy(np.asarray(rows))).sum(1).numpy()
        order = np.argsort(-lengths, kind="stable")  # similar lengths share a batch
    else:
        order = np.arange(len(rows))
    out, flops = None, 0.0
    fixed = text and getattr(encoder, "fixed_length", False)  # SigLIP: every position runs, none is cut

    def batch(i):
        idx = order[i : i + batch_size]
        x = torch.from_numpy(np.ascontiguousarray(rows[idx]))
        return idx, (x[:, : max(1, int(lengths[idx].max()))] if text and not fixed else x)

    first = batch(0) if len(rows) else None
    if first is not None and not text:  # counted on the first batch, before the pass (which may move to CUDA)
        flops = _flops(encoder, first[1]) * len(rows) / len(first[0])
    run, where = teacher_pass.pick(encoder, first[1], len(rows), threads) if first is not None else (None, {"backend": "torch"})
    task = progress.add_task(label, total=len(rows)) if progress else None
    t0 = time.perf_counter()
    for i in range(0, len(rows), batch_size):
        idx, x = batch(i)
        emb = run(x)
        if out is None:
            out = np.zeros((len(rows), emb.shape[1]), dtype=np.float32)
        out[idx] = emb
        if progress:
            progress.update(task, advance=len(idx))
    seconds = max(time.perf_counter() - t0, 1e-9)
    if progress:
        progress.remove_task(task)
    if text:
        flops = 2.0 * _params_without_embeddings(encoder.net) * float(rows.size if fixed else lengths.sum())
    encoder.to("cpu")  # where the rest of the teacher is
    return out, {"rows": int(len(rows)), "seconds": round(seconds, 2), "samples_per_s": round(len(rows) / seconds, 1),
                 "gflops_per_s": round(flops / seconds / 1e9, 1), **where}


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
