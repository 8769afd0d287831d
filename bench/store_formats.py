"""Which on-disk layout the data store uses, measured: Hugging Face datasets (Arrow) vs numpy memmap.

Both hold the same N decoded rows (float32, 3x32x32 by default) and are read the way training reads
them: shuffled batches of 256 rows, and the sequential pass of a statistic. Also the cost of a
teacher processor's inputs: a 224-px ViTImageProcessor run per row (what loader workers do on the
fly) against reading the same rows back from a stored array (600 KB a row).

    python bench/store_formats.py --rows 20000
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--shape", type=int, nargs="+", default=[3, 32, 32])
    ap.add_argument("--batches", type=int, default=200)
    a = ap.parse_args()
    import datasets

    rng = np.random.default_rng(0)
    x = rng.random((a.rows, *a.shape), dtype=np.float32)
    work = Path(tempfile.mkdtemp(prefix="edgekd-formats-"))
    order = [rng.permutation(a.rows)[:256] for _ in range(a.batches)]
    out = []

    t_np_write = _timed(lambda: np.save(work / "x.npy", x), 1)
    mm = np.load(work / "x.npy", mmap_mode="r")
    t_np = _timed(lambda: [np.asarray(mm[np.sort(b)]) for b in order])
    t_np_seq = _timed(lambda: [np.asarray(mm[i:i + 1024]).sum() for i in range(0, a.rows, 1024)])

    feat = datasets.Features({"x": datasets.Array3D(shape=tuple(a.shape), dtype="float32")})
    t_ds_write = _timed(lambda: datasets.Dataset.from_dict({"x": x}, features=feat).save_to_disk(str(work / "ds")), 1)
    ds = datasets.load_from_disk(str(work / "ds")).with_format("numpy")
    t_ds = _timed(lambda: [ds[np.sort(b)]["x"] for b in order])
    t_ds_seq = _timed(lambda: [ds[i:i + 1024]["x"].sum() for i in range(0, a.rows, 1024)])
    same = np.array_equal(ds[order[0].tolist()]["x"], mm[order[0]])
    out += [("numpy memmap (.npy shards)", t_np_write, t_np, t_np_seq),
            ("datasets Arrow, numpy format", t_ds_write, t_ds, t_ds_seq)]
    print(f"{a.rows:,} rows of {tuple(a.shape)} float32; {a.batches} shuffled batches of 256; same values: {same}\n")
    print("| layout | write s | 200 shuffled batches s | ms a batch | sequential pass s |\n|---|---:|---:|---:|---:|")
    for name, w, r, s in out:
        print(f"| {name} | {w:.2f} | {r:.2f} | {1000 * r / a.batches:.2f} | {s:.2f} |")

    # a teacher processor's inputs: on the fly per row vs stored (3 x 224 x 224 float32 = 602 KB a row)
    from PIL import Image
    from transformers import ViTImageProcessor

    proc = ViTImageProcessor(size={"height": 224, "width": 224})
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(256)]
    t_proc = _timed(lambda: proc(images=images, return_tensors="np")["pixel_values"])
    big = np.lib.format.open_memmap(work / "pix.npy", mode="w+", dtype=np.float32, shape=(4096, 3, 224, 224))
    big[:] = 0.5
    big.flush()
    del big
    pix = np.load(work / "pix.npy", mmap_mode="r")
    t_read = _timed(lambda: [np.asarray(pix[np.sort(rng.permutation(4096)[:256])]) for _ in range(4)]) / 4
    print(f"\nViTImageProcessor at 224 px, 256 rows: {1000 * t_proc:.0f} ms on one core "
          f"({1000 * t_proc / 256:.2f} ms a row); the same rows read from a stored array (page cache warm): "
          f"{1000 * t_read:.0f} ms; stored, they would take {3 * 224 * 224 * 4 / 1e3:.0f} KB a row on disk "
          f"({3 * 224 * 224 * 4 * a.rows / 1e9:.1f} GB for {a.rows:,} rows)")


if __name__ == "__main__":
    main()
