"""Per-operator profile of a student's FP32 and CPU-INT8 ONNX models on onnxruntime's CPU provider.

    OMP_NUM_THREADS=1 python bench/int8_profile.py BUNDLE/student.fp32.onnx BUNDLE/student.int8-cpu.onnx \\
        BUNDLE/testset.npz --batches 1,32 [--nodes] [--compare OTHER.onnx ...] [--prototype base,conv2d+ln]

Printed, one thread (intra_op_num_threads=1, ORT_ENABLE_ALL, sequential execution), for FP32 and INT8:
1. the op types of the graph onnxruntime actually runs (SessionOptions.optimized_model_filepath);
2. per batch, each node of that graph run alone (a one-node model fed the node's real inputs,
   unprofiled, less the fixed cost of a call): µs per call by op type (and per node with --nodes),
   with the whole model's unprofiled median for comparison; the measure to trust at batch 1;
3. per batch, onnxruntime's own profiler (SessionOptions.enable_profiling): the `*_kernel_time`
   events of `--runs` calls after `--warmup` untimed ones, µs per call by op type (and per node);
   it adds ~2 µs to every node, so trust it at large batches only;
4. latency: median of `--calls` calls per model and batch, the models called in turn (order rotated
   every round) so a noisy neighbour hits all of them alike; and top-1 accuracy on the test set
   (also on rows from `--heldout-from` on, for models calibrated on the first rows).

--prototype builds more INT8 models to compare, a PROTOTYPE of changes to edgekd's CPU recipe:
edgekd.exporting.cpu_int8.quantize_for_cpu run on the FP32 ONNX (the export stage runs it on the
QAT-folded student, calibrated on train batches), calibrated on the first 256 test rows (so
--heldout-from defaults to 256 with it), with more nodes left float per variant, '+'-joined:
`base` (none: today's recipe), `stem` (a 2-D Conv reading a model input), `conv2d` (every Conv
with a 4-D weight: the image encoder), `ln` (LayerNormalization), `mul` (Mul and Add).
The test set is a bundle's testset.npz ("labels" and "input.<name>" per model input).
"""
from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


def session(path: Path, optimized: Path | None = None, profile: Path | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    if profile is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def load(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k[len("input."):]: z[k] for k in z.files if k.startswith("input.")}, z["labels"].astype(np.int64)


def batch_of(inputs: dict[str, np.ndarray], names: list[str], batch: int) -> dict[str, np.ndarray]:
    return {n: np.ascontiguousarray(np.resize(inputs[n], (batch, *inputs[n].shape[1:]))) for n in names}


def optimized(path: Path, out: Path) -> Path:
    """The graph onnxruntime runs (after its fusions, NHWC/NCHWc layout changes), saved to `out`."""
    session(path, optimized=out)
    return out


def _raw(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run it exactly as written
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def isolated(opt: Path, inputs: dict[str, np.ndarray], batch: int, calls: int) -> dict:
    """µs per call of each node of the optimized graph run alone, unprofiled: a one-node model per
    node (its initializers, its real inputs captured from a full run), median of `calls` calls taken
    in turn over the nodes (each after an untimed re-warm call), less the median of a one-node Identity model (the fixed cost of a call).
    onnxruntime's profiler reports whole µs and adds ~2 µs to every node (Not on 64 values: 2.0 µs
    profiled, 0.1 µs alone), which swamps batch-1 kernels; this does not. Large-batch tensors are
    re-warmed but still not those the previous node left in cache: memory-bound nodes read high.
    """
    m = onnx.load(str(opt))
    full = onnx.ModelProto()
    full.CopyFrom(m)
    seen = {o.name for o in full.graph.output}
    for n in full.graph.node:
        for o in n.output:
            if o and o not in seen:
                full.graph.output.append(onnx.helper.make_empty_tensor_value_info(o))
                seen.add(o)
    feed = batch_of(inputs, [i.name for i in m.graph.input], batch)
    s = _raw(full)
    vals = {**feed, **dict(zip([o.name for o in s.get_outputs()], s.run(None, feed)))}
    inits = {t.name: t for t in m.graph.initializer}
    ident = onnx.helper.make_node("Identity", ["x"], ["y"])
    one = {"x": np.zeros((1, 1), np.float32)}
    runs = {"(call)": (_raw(onnx.helper.make_model(onnx.helper.make_graph(
        [ident], "call", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1])],
        [onnx.helper.make_empty_tensor_value_info("y")]), opset_imports=m.opset_import)), one)}
    op = {}
    for n in m.graph.node:
        ins = [i for i in dict.fromkeys(n.input) if i and i not in inits]
        g = onnx.helper.make_graph(
            [n], n.name, [onnx.helper.make_tensor_value_info(i, onnx.helper.np_dtype_to_tensor_dtype(vals[i].dtype),
                                                            vals[i].shape) for i in ins],
            [onnx.helper.make_empty_tensor_value_info(o) for o in n.output if o],
            [inits[i] for i in dict.fromkeys(n.input) if i in inits])
        runs[n.name], op[n.name] = (_raw(onnx.helper.make_model(g, opset_imports=m.opset_import)),
                                    {i: vals[i] for i in ins}), n.op_type
    times = {k: [] for k in runs}
    for sess, f in runs.values():
        for _ in range(10):
            sess.run(None, f)
    for _ in range(calls):
        for k, (sess, f) in runs.items():
            sess.run(None, f)  # re-warm: the previous node's run evicted this one's tensors at large batches
            t = time.perf_counter()
            sess.run(None, f)
            times[k].append((time.perf_counter() - t) * 1e6)
    base = statistics.median(times.pop("(call)"))
    node = {k: max(0.0, statistics.median(v) - base) for k, v in times.items()}
    by_op = collections.defaultdict(float)
    for k, v in node.items():
        by_op[op[k]] += v
    return {"op": dict(by_op), "node": node, "node_op": op, "call": base}


def profile(path: Path, inputs: dict[str, np.ndarray], batch: int, runs: int, warmup: int) -> dict:
    """onnxruntime's profile of `runs` calls after `warmup` (edgekd.benchmark.profile, what `edgekd
    profile` runs): µs per call by op type and by node."""
    from edgekd.benchmark.profile import profile_model

    names = [i.name for i in session(path).get_inputs()]
    r = profile_model(path, batch_of(inputs, names, batch), runs=runs, warmup=warmup)
    return {"op": {o["op"]: o["us"] for o in r["op"]}, "node": {n["node"]: n["us"] for n in r["node"]},
            "node_op": {n["node"]: n["op"] for n in r["node"]}, "model_run": r["model_run_us"],
            "wall": r["unprofiled_us"]}


def latency(paths: dict[str, Path], inputs: dict[str, np.ndarray], batch: int, calls: int) -> dict[str, float]:
    """Median µs per call, the models called in turn, order rotated each round."""
    sessions = {k: session(p) for k, p in paths.items()}
    feeds = {k: batch_of(inputs, [i.name for i in s.get_inputs()], batch) for k, s in sessions.items()}
    keys, times = list(sessions), {k: [] for k in sessions}
    for k in keys:
        for _ in range(20):
            sessions[k].run(None, feeds[k])
    for r in range(calls):
        for k in keys[r % len(keys):] + keys[: r % len(keys)]:
            t = time.perf_counter()
            sessions[k].run(None, feeds[k])
            times[k].append((time.perf_counter() - t) * 1e6)
    return {k: statistics.median(v) for k, v in times.items()}


def accuracy(path: Path, inputs: dict[str, np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Per-row correctness (top-1 of the `logits` output, or the first one)."""
    sess = session(path)
    names = [i.name for i in sess.get_inputs()]
    outs = [o.name for o in sess.get_outputs()]
    out = "logits" if "logits" in outs else outs[0]
    preds = [sess.run([out], {n: inputs[n][i : i + 256] for n in names})[0].argmax(1)
             for i in range(0, len(labels), 256)]
    return np.concatenate(preds) == labels


def _extra_float(graph: onnx.GraphProto, variant: str) -> list[str]:
    init = {t.name: t for t in graph.initializer}
    inputs = {i.name for i in graph.input}
    keep = []
    for n in graph.node:
        w = init.get(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None
        conv2d = w is not None and len(w.dims) == 4
        if (("conv2d" in variant and conv2d) or ("stem" in variant and conv2d and n.input[0] in inputs)
                or ("ln" in variant and n.op_type == "LayerNormalization")
                or ("mul" in variant and n.op_type in ("Mul", "Add"))):
            keep.append(n.name)
    return keep


def prototypes(fp32: Path, inputs: dict[str, np.ndarray], variants: list[str], out: Path) -> dict[str, Path]:
    """PROTOTYPE INT8 models: edgekd's quantize_for_cpu with more nodes left float (see the docstring)."""
    from edgekd.exporting import cpu_int8

    names = [i.name for i in onnx.load(str(fp32)).graph.input]
    calib = [{n: inputs[n][i : i + 64] for n in names} for i in range(0, 256, 64)]
    shipped, built = cpu_int8._float_tail, {}
    try:
        for v in variants:
            def float_tail(model: Path, v: str = v) -> tuple[list[str], dict]:
                keep, extra = shipped(model)
                return keep + _extra_float(onnx.load(str(model)).graph, set(v.split("+"))), extra

            cpu_int8._float_tail = float_tail
            built[f"proto-{v}"] = cpu_int8.quantize_for_cpu(fp32, out / f"proto-{v}.onnx", calib)
    finally:
        cpu_int8._float_tail = shipped
    return built


def fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fp32", type=Path)
    ap.add_argument("int8", type=Path)
    ap.add_argument("testset", type=Path)
    ap.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    ap.add_argument("--runs", type=int, default=300, help="profiled (and isolated) calls per model and batch")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--nodes", action="store_true", help="also print µs per call per node")
    ap.add_argument("--compare", type=Path, nargs="*", default=[], help="more models for latency/accuracy")
    ap.add_argument("--calls", type=int, default=2000, help="timed calls per model and batch (0: skip latency)")
    ap.add_argument("--heldout-from", type=int, default=None, help="also report accuracy on rows from this index on")
    ap.add_argument("--prototype", default="", help="comma-separated variants to build and compare (see above)")
    a = ap.parse_args()
    if a.heldout_from is None:
        a.heldout_from = 256 if a.prototype else 0
    with tempfile.TemporaryDirectory() as tmp:
        report(a, Path(tmp))


def report(a: argparse.Namespace, tmp: Path) -> None:
    batches = [int(b) for b in a.batches.split(",")]
    inputs, labels = load(a.testset)
    models = {"FP32": a.fp32, "INT8": a.int8}
    every = {**models, **{p.stem: p for p in a.compare}}
    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, numpy {np.__version__}; one thread")
    if a.prototype:
        every.update(prototypes(a.fp32, inputs, a.prototype.split(","), tmp))
    opt = {k: optimized(p, tmp / f"{i}.optimized.onnx") for i, (k, p) in enumerate(every.items())}
    ops = {k: collections.Counter(n.op_type for n in onnx.load(str(o)).graph.node) for k, o in opt.items()}
    cols = [(k, b) for b in batches for k in models]
    iso = {(k, b): isolated(opt[k], inputs, b, a.runs) for k, b in cols}
    prof = {(k, b): profile(models[k], inputs, b, a.runs, a.warmup) for k, b in cols}
    print("\n## Optimized graph (ORT_ENABLE_ALL): nodes per op type\n")
    kinds = sorted(set().union(*ops.values()), key=lambda o: (-max(c[o] for c in ops.values()), o))
    print(table(["op type", *every], [[o, *(str(ops[k][o] or "—") for k in every)] for o in kinds]
                + [["**all**", *(f"**{sum(ops[k].values())}**" for k in every)]]))
    head = ["op type", *(f"{k} b{b}" for k, b in cols)]
    print(f"\n## Each node run alone, unprofiled: µs per call by op type (median of {a.runs})\n")
    kinds = sorted(set().union(*(iso[c]["op"] for c in cols)), key=lambda o: -max(iso[c]["op"].get(o, 0) for c in cols))
    print(table(head, [[o, *(fmt(iso[c]["op"].get(o)) for c in cols)] for o in kinds]
                + [["**sum of nodes**", *(f"**{fmt(sum(iso[c]['op'].values()))}**" for c in cols)],
                   ["+ fixed cost of a call (1-node model)", *(fmt(iso[c]["call"]) for c in cols)],
                   ["whole model, unprofiled (median)", *(fmt(prof[c]["wall"]) for c in cols)]]))
    print(f"\n## onnxruntime profiler: µs per call by op type ({a.runs} calls after {a.warmup})\n")
    kinds = sorted(set().union(*(prof[c]["op"] for c in cols)), key=lambda o: -max(prof[c]["op"].get(o, 0) for c in cols))
    print(table(head, [[o, *(fmt(prof[c]["op"].get(o)) for c in cols)] for o in kinds]
                + [["**sum of kernels**", *(f"**{fmt(sum(prof[c]['op'].values()))}**" for c in cols)],
                   ["model_run (profiled, median)", *(fmt(prof[c]["model_run"]) for c in cols)]]))
    if a.nodes:
        for k in models:
            kb = [(k, b) for b in batches]
            print(f"\n### {k}: µs per call per node (alone / profiler)\n")
            names = sorted(iso[kb[0]]["node"], key=lambda n: -iso[kb[-1]]["node"][n])
            print(table(["node", "op", *(f"{t} b{b}" for b in batches for t in ("alone", "profiler"))],
                        [[n, iso[kb[0]]["node_op"][n], *(fmt(x) for c in kb for x in
                                                         (iso[c]["node"][n], prof[c]["node"].get(n)))]
                         for n in names]))
    if a.calls:
        print(f"\n## Latency: median µs per call of {a.calls} interleaved calls\n")
        lat = {b: latency(every, inputs, b, a.calls) for b in batches}
        print(table(["model", "nodes", *(f"b{b} µs" for b in batches), *(f"b{b} vs FP32" for b in batches)],
                    [[k, str(sum(ops[k].values())), *(fmt(lat[b][k]) for b in batches),
                      *(f"{lat[b]['FP32'] / lat[b][k]:.2f}x" for b in batches)] for k in every]))
    print("\n## Accuracy on the test set\n")
    right = {k: accuracy(p, inputs, labels) for k, p in every.items()}
    held = [f"rows {a.heldout_from}+ (n={len(labels) - a.heldout_from})"] if a.heldout_from else []
    print(table(["model", f"all (n={len(labels)})", *held],
                [[k, f"{r.mean():.2%}", *([f"{r[a.heldout_from:].mean():.2%}"] if held else [])]
                 for k, r in right.items()]))


if __name__ == "__main__":
    main()
