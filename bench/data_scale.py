"""Data at scale: wall time, rows/s and peak anonymous memory of edgekd on N-row folder datasets.

Synthesises N-row datasets from tabler-icons (each row one of its icons -- a hard link to the PNG,
so every row is its own file -- and the icon's text plus three random words), then runs edgekd
commands in a subprocess while sampling the anonymous resident memory (RssAnon + RssShmem from
/proc/PID/status) of the process and all its children (loader and decode workers) every 0.1 s.
File-backed pages of the memory-mapped store are page cache and do not count.

    python bench/data_scale.py --rows 20000 200000          # store build + run --until distill
    python bench/data_scale.py --rows 20000 --vit           # a tiny 224-px ViT image teacher, head and all
    python bench/data_scale.py --rows 20000 --workers 1 2   # store build speed-up

Prints a Markdown table (docs/data.md) and writes the rows as JSON with --out.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def synthesise(src: Path, n: int, out: Path, seed: int = 0) -> Path:
    """An n-row copy of tabler-icons in `out` (hard-linked PNGs, texts with three random words)."""
    if (out / "metadata.jsonl").is_file():
        return out
    rows = [json.loads(line) for line in (src / "metadata.jsonl").read_text().splitlines() if line.strip()]
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    with open(out / "metadata.tmp", "w") as f:
        for i in range(n):
            r = rows[i % len(rows)]
            rel = f"images/{i:07d}.png"
            os.link(src / r["image"], out / rel)
            words = " ".join(rng.choice(WORDS, 3))
            f.write(json.dumps({"image": rel, "text": f"{r['text']} {words}", "label": r["label"],
                                "split": r["split"]}) + "\n")
    os.replace(out / "metadata.tmp", out / "metadata.jsonl")
    return out


def anon_kb(pid: int) -> int:
    """RssAnon + RssShmem (kB) of `pid` and every descendant."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += sum(int(line.split()[1]) for line in status.splitlines() if line.startswith(("RssAnon:", "RssShmem:")))
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (t / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def measured(cmd: list[str], env: dict) -> dict:
    """Wall seconds and peak anonymous memory (MB) of a command and its children."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], anon_kb(proc.pid))
            time.sleep(0.1)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out = proc.communicate()[0]
    t.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    # `data prepare`: the data's own time (no start-up), and the store build's scan and decode
    found = re.search(r"fingerprint \w+ \(([\d.]+) s; when built: scan ([\d.]+) s, decoding ([\d.]+) s", out)
    return {"seconds": round(time.perf_counter() - t0, 1), "peak_anon_mb": round(peak[0] / 1024), "output": out,
            **({"data_seconds": float(found.group(1)), "store_build_seconds": round(float(found.group(2))
                + float(found.group(3)), 2)} if found else {})}


def recipe(path: Path, data: Path, teacher: str, rgb: bool = True) -> Path:
    teachers = {
        "scratch": "  name: mm_transformer\n  image_encoder: convnext\n  image_patch: 4\n  hidden: 64\n  layers: 1\n"
                   "  heads: 4\n  epochs: 1\n  batch_size: 256\n",
        "vit-head": f"  name: mm_transformer\n  hidden: 64\n  layers: 1\n  heads: 4\n  epochs: 1\n  batch_size: 64\n"
                    f"  train: head\n  encoders: {{image: {{pretrained: {path.parent / 'vit'}}}}}\n",
        "vit-all": f"  name: mm_transformer\n  hidden: 64\n  layers: 1\n  heads: 4\n  epochs: 1\n  batch_size: 64\n"
                   f"  train: all\n  encoders: {{image: {{pretrained: {path.parent / 'vit'}}}}}\n",
    }
    path.write_text(f"""name: scale
seed: 0
threads: 1
data:
  name: folder
  path: {data}
  modalities: {{image: image, text: text}}
  image_size: 32
  image_mode: {'rgb' if rgb else 'gray'}
teacher:
{teachers[teacher]}student:
  name: fusion_lean
distill:
  epochs: 1
  batch_size: 256
  baseline: false
""")
    return path


def tiny_vit(path: Path) -> None:
    """A random-weight ViT at 224 px with its ViTImageProcessor, saved as a user would."""
    if (path / "config.json").is_file():
        return
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    ViTModel(ViTConfig(image_size=224, patch_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=128)).save_pretrained(path)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[20000])
    ap.add_argument("--workers", type=int, nargs="*", default=[], help="store builds with these worker counts")
    ap.add_argument("--repeat", type=int, default=3, help="store builds per worker count")
    ap.add_argument("--vit", action="store_true", help="the 224-px ViT teacher (head and all) instead of scratch")
    ap.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "data" / "tabler-icons")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgekd-scale")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    edgekd = str(Path(sys.executable).parent / "edgekd")
    rows_out = []
    for n in a.rows:
        data = synthesise(a.src, n, a.work / f"icons-{n}")
        for rep in range(a.repeat if a.workers else 0):  # store build alone, from nothing, with w decode workers
            for w in a.workers:  # interleaved, so a busy moment of the machine hits every count alike
                env = {**os.environ, "EDGEKD_CACHE": str(a.work / f"cache-{n}-w{w}"), "OMP_NUM_THREADS": "1"}
                shutil.rmtree(env["EDGEKD_CACHE"], ignore_errors=True)
                r = recipe(a.work / "r.yaml", data, "scratch")
                got = measured([edgekd, "data", "prepare", str(r), "--set", f"data.workers={w}"], env)
                rows_out.append({"rows": n, "what": f"store build, {w} worker(s), try {rep + 1}", **got})
                shutil.rmtree(env["EDGEKD_CACHE"], ignore_errors=True)
        if a.workers:
            continue
        teachers = ("vit-head", "vit-all") if a.vit else ("scratch",)
        if a.vit:
            tiny_vit(a.work / "vit")
        env = {**os.environ, "EDGEKD_CACHE": str(a.work / f"cache-{n}"), "OMP_NUM_THREADS": "1"}
        shutil.rmtree(env["EDGEKD_CACHE"], ignore_errors=True)
        for t in teachers:
            r = recipe(a.work / f"{t}.yaml", data, t)
            run_dir = a.work / f"run-{n}-{t}"
            shutil.rmtree(run_dir, ignore_errors=True)
            first = measured([edgekd, "data", "prepare", str(r)], env)
            again = measured([edgekd, "data", "prepare", str(r)], env)
            got = measured([edgekd, "run", str(r), "--run-dir", str(run_dir), "--until", "distill", "-q"], env)
            stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
            rows_out.append({"rows": n, "what": f"data prepare (first), {t}", **first})
            rows_out.append({"rows": n, "what": f"data prepare (again), {t}", **again})
            rows_out.append({"rows": n, "what": f"run --until distill, {t}", **got,
                             "teacher_accuracy": stages["teacher"]["metrics"]["accuracy"],
                             "student_accuracy": stages["distill"]["metrics"]["accuracy"]})
    print("| rows | what | wall s (in-process s; store build s) | rows/s | peak anon MB |\n|---:|---|---:|---:|---:|")
    for r in rows_out:
        data_s = f" ({r['data_seconds']}; store {r['store_build_seconds']})" if "data_seconds" in r else ""
        print(f"| {r['rows']:,} | {r['what']} | {r['seconds']}{data_s} | {r['rows'] / max(r['seconds'], 1e-9):,.0f} | "
              f"{r['peak_anon_mb']:,} |")
    if a.out:
        a.out.write_text(json.dumps([{k: v for k, v in r.items() if k != "output"} for r in rows_out], indent=1))


if __name__ == "__main__":
    main()
