"""`edgekd profile BUNDLE`: where a model's time goes, node by node, on onnxruntime's CPU provider.

onnxruntime's own profiler (SessionOptions.enable_profiling) over `runs` calls after `warmup`
untimed ones, one intra-op thread by default, sequential execution, every graph optimisation on (the
graph that runs is the one measured). Reported per op type and per node: µs per call and share of
the kernels' total; beside them the profiled call (`model_run`) and an unprofiled median of the same
calls, so the profiler's own cost is visible: it adds about 2 µs to every node, which is most of a
batch-1 call of a small student. Trust the shares at larger batches; `bench/int8_profile.py` times
nodes one by one, unprofiled, when batch 1 matters. Torch-free: it runs on a device install.
"""
from __future__ import annotations

import collections
import json
import statistics
import tempfile
import time
from pathlib import Path

from edgekd.benchmark.testset import batch_of, load_testset
from edgekd.errors import UsageError
from edgekd.files import atomic_write_json, atomic_write_text


def _session(model: bytes | Path, threads: int, profile_prefix: Path | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                providers=["CPUExecutionProvider"])


def profile_model(model: bytes | Path, feeds: dict, *, runs: int = 200, warmup: int = 20, threads: int = 1) -> dict:
    """{"op": [...], "node": [...], "kernels_us", "model_run_us", "unprofiled_us"}: µs per call."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = _session(model, threads, Path(tmp) / "profile")
        feed = {i.name: feeds[i.name] for i in sess.get_inputs()}
        for _ in range(warmup + runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text(encoding="utf-8"))
    calls = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    start = calls[warmup]["ts"]  # warm-up calls are left out
    by_op, by_node, op_of = collections.defaultdict(float), collections.defaultdict(float), {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            node = e["name"][: -len("_kernel_time")]
            by_op[e["args"]["op_name"]] += e["dur"] / runs
            by_node[node] += e["dur"] / runs
            op_of[node] = e["args"]["op_name"]
    plain = _session(model, threads)
    wall = []
    for i in range(warmup + runs):
        t = time.perf_counter()
        plain.run(None, feed)
        if i >= warmup:
            wall.append((time.perf_counter() - t) * 1e6)
    total = sum(by_op.values()) or 1.0
    return {"op": [{"op": k, "us": round(v, 2), "share": round(v / total, 4)}
                   for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])],
            "node": [{"node": k, "op": op_of[k], "us": round(v, 2), "share": round(v / total, 4)}
                     for k, v in sorted(by_node.items(), key=lambda kv: -kv[1])],
            "kernels_us": round(sum(by_op.values()), 2),
            "model_run_us": round(statistics.median(e["dur"] for e in calls[warmup:]), 2),
            "unprofiled_us": round(statistics.median(wall), 2), "runs": runs, "threads": threads}


def profile_bundle(bundle_dir, model: str | None = None, batch: int = 1, *, runs: int = 200, warmup: int = 20,
                   threads: int = 1, out: Path | None = None, top: int = 15) -> tuple[dict, Path]:
    """Profile model `model` (default: the bundle's) of a bundle on its test inputs; writes
    profile.json and profile.md under `out` (default BUNDLE/../profile/<model>-b<batch>)."""
    from edgekd.runtime.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    key = bundle.resolve_key(model)
    if bundle.model_path(key).suffix != ".onnx":
        raise UsageError(f"model '{key}' is not an ONNX model; profile a TensorRT engine with trtexec --dumpProfile "
                         "(build/trtexec.sh)")
    if not (bundle.path / "testset.npz").is_file():
        raise UsageError(f"{bundle.path} has no testset.npz to feed the model; re-export with export.testset: true")
    inputs, _ = load_testset(bundle.path / "testset.npz")
    names = [i["name"] for i in bundle.io_spec.get("inputs", [])] or list(inputs)
    result = profile_model(bundle.verified_bytes(key) or bundle.model_path(key), batch_of(inputs, names, batch),
                           runs=runs, warmup=warmup, threads=threads)
    result.update(model=key, batch=batch, bundle=str(bundle.path))
    out = Path(out) if out else bundle.path.parent / "profile" / f"{key}-b{batch}"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "profile.json", result)
    atomic_write_text(out / "profile.md", to_markdown(result, top))
    return result, out


def to_markdown(r: dict, top: int = 15) -> str:
    lines = [f"# Profile: {r['model']}, batch {r['batch']}, {r['threads']} thread(s), onnxruntime CPU", "",
             f"Per call, median of {r['runs']}: unprofiled **{r['unprofiled_us']:.1f} µs**; profiled call "
             f"{r['model_run_us']:.1f} µs, of which kernels {r['kernels_us']:.1f} µs. The profiler adds about "
             "2 µs per node, so at batch 1 shares lean towards cheap nodes.", "",
             "| op type | µs per call | share |", "|---|---|---|"]
    lines += [f"| {o['op']} | {o['us']:.1f} | {o['share']:.1%} |" for o in r["op"]]
    lines += ["", f"Slowest {min(top, len(r['node']))} of {len(r['node'])} nodes:", "",
              "| node | op type | µs per call | share |", "|---|---|---|---|"]
    lines += [f"| {n['node']} | {n['op']} | {n['us']:.1f} | {n['share']:.1%} |" for n in r["node"][:top]]
    return "\n".join(lines) + "\n"
