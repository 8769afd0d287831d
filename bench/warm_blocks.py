"""Batch-1 latency of bundle models, each warm: alternating blocks of calls (teacher x100, then each
other model x400, twelve rounds), 1 intra-op thread, the first tenth of every block not timed.

`edgekd bench` interleaves single calls, so the model that runs right after the teacher finds its
caches evicted; this shows each model as it runs alone on a device.

    OMP_NUM_THREADS=1 python bench/warm_blocks.py runs/avdigits/bundle teacher.fp32 student.fp32 student.int8-cpu
"""
import sys
import time

import numpy as np
import onnxruntime as ort


def main(bundle: str, names: list[str], rounds: int = 12) -> None:
    test = np.load(f"{bundle}/testset.npz")
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sessions = [ort.InferenceSession(f"{bundle}/{n}.onnx", so, providers=["CPUExecutionProvider"]) for n in names]
    feeds = [{i.name: test["input." + i.name][:1] for i in s.get_inputs()} for s in sessions]
    lat = [[] for _ in names]
    for _ in range(rounds):
        for j, (s, feed) in enumerate(zip(sessions, feeds)):
            n = 100 if j == 0 else 400
            for k in range(n):
                t = time.perf_counter()
                s.run(["logits"], feed)
                if k >= n // 10:
                    lat[j].append(time.perf_counter() - t)
    p50 = [float(np.median(v)) * 1e3 for v in lat]
    for n, v in zip(names, p50):
        print(f"{n:20s} p50 {v:.4f} ms   {names[0]} / this {p50[0] / v:.1f}x")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
