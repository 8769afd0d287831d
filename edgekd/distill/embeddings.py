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

from edgekd.data.columns import chunks
from edgekd.data.loader import batches
from edgekd.distill import teacher_pass
from edgekd.distill.rowfile import RowFile
from edgekd.files import atomic_write_json


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


class _Memory:
    """embed_rows' default sink: the embeddings in memory."""

    def __init__(self, rows: int, shape: tuple[int, ...]):
        self.array = np.zeros((rows, *shape), dtype=np.float32)

    def write(self, idx, values) -> None:
        self.array[idx] = values


@torch.no_grad()
def embed_rows(encoder, rows, batch_size: int = 64, progress=None, label: str = "embed",
               threads: int = 1, sink=None):
    """(N, D) float32 embeddings of every row (token ids, or the processor's pixel/audio arrays) and
    {rows, seconds, samples_per_s, gflops_per_s}. Text: GFLOP/s estimated as 2 x non-embedding
    parameters x real tokens / seconds; image/audio: the first batch's FLOPs as counted by torch,
    scaled to all rows. The pass runs where it is fastest (edgekd.distill.teacher_pass); that
    choice and its trial join the figures."""
    encoder.eval()
    text = rows.dtype.kind in "iu"
    if text:  # over chunks: a lazy column is never read whole
        lengths = np.concatenate([encoder.text_mask(torch.from_numpy(x)).sum(1).numpy() for _, x in chunks(rows)])
        order = np.argsort(-lengths, kind="stable")  # similar lengths share a batch
    else:
        order = np.arange(len(rows))
    out, flops = None, 0.0
    fixed = text and getattr(encoder, "fixed_length", False)  # SigLIP: every position runs, none is cut

    def cut(idx, x):
        x = torch.from_numpy(x)
        return idx, (x[:, : max(1, int(lengths[idx].max()))] if text and not fixed else x)

    def batch(i):
        idx = order[i : i + batch_size]
        return cut(idx, np.ascontiguousarray(rows[idx]))

    first = batch(0) if len(rows) else None
    if first is not None and not text:  # counted on the first batch, before the pass (which may move to CUDA)
        flops = _flops(encoder, first[1]) * len(rows) / len(first[0])
    run, where = teacher_pass.pick(encoder, first[1], len(rows), threads) if first is not None else (None, {"backend": "torch"})
    task = progress.add_task(label, total=len(rows)) if progress else None
    t0 = time.perf_counter()
    # a processor column (images, audio) is made by loader workers, a few batches ahead
    for idx, got in batches({"x": rows}, [order[i : i + batch_size] for i in range(0, len(rows), batch_size)]):
        idx, x = cut(idx, got["x"])
        emb = run(x)
        if out is None:
            out = (sink or _Memory)(len(rows), emb.shape[1:])
        out.write(idx, emb)
        if progress:
            progress.update(task, advance=len(idx))
    seconds = max(time.perf_counter() - t0, 1e-9)
    if progress:
        progress.remove_task(task)
    if text:
        flops = 2.0 * _params_without_embeddings(encoder.net) * float(len(rows) * rows.shape[1] if fixed else lengths.sum())
    encoder.to("cpu")  # where the rest of the teacher is
    return getattr(out, "array", out), {"rows": int(len(rows)), "seconds": round(seconds, 2), "samples_per_s": round(len(rows) / seconds, 1),
                 "gflops_per_s": float(f"{flops / seconds / 1e9:.3g}"), **where}


def cached_embeddings(cache_dir: Path, name: str, compute) -> tuple[np.ndarray, dict]:
    """The embeddings of input `name` from `cache_dir`, or compute(sink=...) -> (_, stats) writes them."""
    meta_file = cache_dir / f"{name}.meta.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        arr = np.load(cache_dir / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        if arr.shape[0] == meta.get("rows"):
            return arr, {**meta, "cached": True}
    cache_dir.mkdir(parents=True, exist_ok=True)
    made: list[RowFile] = []  # streamed to disk in length order: the embeddings are never all in memory

    def sink(rows, shape):
        made.append(RowFile(cache_dir / f"{name}.npy", rows, shape))
        return made[-1]
    try:
        _, stats = compute(sink=sink)
    except BaseException:
        for f in made:
            f.abort()
        raise
    for f in made:
        f.close()
    atomic_write_json(meta_file, stats)  # last: its presence means the array is whole
    return np.load(cache_dir / f"{name}.npy", mmap_mode="r", allow_pickle=False), {**stats, "cached": False}
