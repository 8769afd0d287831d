"""Offline TensorRT lint for an ONNX model: the checks that make `trtexec --onnx=...` fail or build a
slow/wrong engine, run without TensorRT or a GPU (neither exists on development machines).

Rules (ids appear in reports and in `check`'s error): checker, opset, custom-domain, unsupported-op,
dynamic-shape, input-shape, qdq-missing, qdq-unexpected, qdq-pair, qdq-zero-point, qdq-scale,
qdq-weight-axis, qdq-activation-per-tensor. No torch here: it runs where only onnx is installed.
"""
from __future__ import annotations

import os
import re
from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgekd.errors import ExportError

# Default-domain ops marked "Y" in onnx-tensorrt docs/operators.md for TensorRT 10.x (10.15 table),
# minus ops that exist only in opsets above OPSET_MAX (Attention, RMSNormalization, RotaryEmbedding,
# TensorScatter). Absent on purpose: Unique, Compress, the Sequence*/Optional* ops, String*, the
# integer ops (ConvInteger, MatMulInteger, QLinearConv, QLinearMatMul) and DynamicQuantizeLinear.
TRT_SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos
Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand
EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow
HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not
OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike
RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RNN RoiAlign Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape
Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze
Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
# Output shapes that depend on data (or control flow): TensorRT copes with some, but students must
# be static apart from the batch axis, so any of these means the export went wrong.
DATA_DEPENDENT_OPS = frozenset({"NonZero", "NonMaxSuppression", "Loop", "If", "Scan"})
OPSET_MIN, OPSET_MAX = 13, 21  # per-axis Q/DQ needs 13; 21 is the newest the TRT 10 line reads
FIX_SYMMETRIC = "export the quantized model with symmetric signed-INT8 quantizers (ModelOpt INT8 config)"


def _name(node) -> str:
    return node.name or f"{node.op_type}->{node.output[0] if node.output else '?'}"


def _v(node, rule: str, message: str) -> dict:
    return {"node": _name(node), "op": node.op_type, "rule": rule, "message": message}


def _load(path_or_model) -> tuple[onnx.ModelProto, str]:
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model, path_or_model.graph.name or "<model>"
    try:
        return onnx.load(os.fspath(path_or_model)), os.path.basename(os.fspath(path_or_model))
    except Exception as e:  # noqa: BLE001 -- missing file, truncated protobuf, missing external data
        raise ExportError(f"TensorRT lint: cannot read ONNX model {path_or_model}: {e}; re-run the export") from e


def _all_nodes(graph):
    """Nodes of the graph and of every subgraph (If/Loop/Scan bodies are parsed by TensorRT too)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for g in list(attr.graphs) + ([attr.g] if attr.HasField("g") else []):
                yield from _all_nodes(g)


def _constants(graph) -> dict[str, np.ndarray]:
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # the legacy exporter leaves some Q/DQ params as Constant nodes
        if node.op_type == "Constant" and node.attribute:
            a = node.attribute[0]
            consts[node.output[0]] = (numpy_helper.to_array(a.t) if a.name == "value"
                                      else np.asarray(helper.get_attribute_value(a)))
    return consts


def _attr(node, name, default=None):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _out_channel_axis(consumers, tensor: str):
    """Axis of `tensor` that is the output channel of the linear op it is the weight of (None: not a
    weight). TensorRT wants per-channel weight scales on that axis: 0 for Conv and Gemm(transB=1),
    1 for ConvTranspose (weights are [C_in, C_out/g, ...]), last for MatMul; Transposes are followed."""
    for node, idx in consumers.get(tensor, []):
        if node.op_type == "Transpose":
            inner = _out_channel_axis(consumers, node.output[0])
            if inner is not None:
                perm = _attr(node, "perm") or list(range(8))[::-1]  # only 2-D weights lack perm
                return perm[inner]
        elif idx == 1 and node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            return {"Conv": 0, "ConvTranspose": 1, "MatMul": -1}.get(node.op_type,
                                                                     0 if _attr(node, "transB", 0) else 1)
    return None


def _lint_qdq(graph, consts, report) -> None:
    nodes = list(graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list] = {}
    for n in nodes:
        for i, name in enumerate(n.input):
            consumers.setdefault(name, []).append((n, i))
    graph_outputs = {o.name for o in graph.output}
    add, qdq = report["violations"].append, report["qdq"]
    for node in (n for n in nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")):
        where = f"node '{_name(node)}' ({node.op_type})"
        scale = consts.get(node.input[1]) if len(node.input) > 1 else None
        zp = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is None:
            add(_v(node, "qdq-scale", f"{where} has a scale computed at run time; TensorRT needs a "
                                      "constant scale: export with calibrated (static) quantizers"))
        elif scale.dtype.kind != "f" or not np.all(np.isfinite(scale) & (scale > 0)):
            add(_v(node, "qdq-scale", f"{where} has a scale that is not all positive finite floats; "
                                      "recalibrate the quantizers (amax must be > 0) and re-export"))
        if zp is None and (node.op_type == "QuantizeLinear" or len(node.input) > 2):
            # QuantizeLinear without a zero-point outputs UINT8, which TensorRT rejects
            add(_v(node, "qdq-zero-point", f"{where} has no constant INT8 zero-point; {FIX_SYMMETRIC}"))
        elif zp is not None and zp.dtype != np.int8:
            add(_v(node, "qdq-zero-point", f"{where} has a {zp.dtype.name.upper()} zero-point, TensorRT "
                                           f"needs INT8; {FIX_SYMMETRIC}"))
        elif zp is not None and np.any(zp != 0):
            add(_v(node, "qdq-zero-point", f"{where} has a non-zero zero-point; {FIX_SYMMETRIC}"))
        if node.op_type == "QuantizeLinear":
            uses = consumers.get(node.output[0], [])
            if not uses or node.output[0] in graph_outputs or any(u.op_type != "DequantizeLinear"
                                                                  for u, _ in uses):
                add(_v(node, "qdq-pair", f"{where} is not followed only by DequantizeLinear; "
                                         "TensorRT needs Q/DQ pairs: re-export from the fake-quant model"))
            qdq["pairs"] += sum(u.op_type == "DequantizeLinear" for u, _ in uses)
        # A weight Q/DQ quantizes a constant; for DQ, either directly or through a Q of a constant.
        src = producer.get(node.input[0])
        weight = consts.get(node.input[0])
        if weight is None and node.op_type == "DequantizeLinear" and src is not None \
                and src.op_type == "QuantizeLinear":
            weight = consts.get(src.input[0])
        dq_out = node.output[0] if node.op_type == "DequantizeLinear" else next(
            (u.output[0] for u, _ in consumers.get(node.output[0], []) if u.op_type == "DequantizeLinear"), "")
        expected = _out_channel_axis(consumers, dq_out) if weight is not None else None
        if scale is None:
            continue
        if weight is None:
            if scale.size != 1:
                add(_v(node, "qdq-activation-per-tensor",
                       f"{where} quantizes an activation per-channel; TensorRT supports only per-tensor "
                       "activation scales: use a per-tensor (axis=None) input quantizer"))
            elif node.op_type == "QuantizeLinear":
                qdq["per_tensor_activations"] += 1
        elif expected is not None:
            expected %= weight.ndim
            axis = _attr(node, "axis", 1) % max(weight.ndim, 1)  # ONNX's default axis is 1, not 0
            fix = f"quantize weights per output channel (axis={expected}) and re-export"
            if scale.size == 1 and weight.shape[expected] == 1:
                pass  # a single output channel: per-channel and per-tensor are the same thing
            elif scale.size == 1:
                add(_v(node, "qdq-weight-axis", f"{where} quantizes a weight per-tensor; {fix}"))
            elif axis != expected or scale.size != weight.shape[expected]:
                add(_v(node, "qdq-weight-axis", f"{where} quantizes weight axis {axis} "
                                                f"({scale.size} scales); {fix}"))
            elif node.op_type == "DequantizeLinear":
                qdq["per_channel_weights"] += 1


def lint_onnx(path_or_model, *, expect_qdq: bool | None = None) -> dict:
    """Lint a model (path or ModelProto) for TensorRT 10. expect_qdq: True = must be INT8 Q/DQ,
    False = must be plain float, None = whichever it is."""
    model, name = _load(path_or_model)
    graph = model.graph
    violations: list[dict] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    nodes = list(_all_nodes(graph))
    report = {"model": name, "opset": opset, "ops": dict(Counter(n.op_type for n in nodes)),
              "violations": violations, "qdq": {"pairs": 0, "per_channel_weights": 0,
                                                "per_tensor_activations": 0}, "ok": False}
    graph_node = onnx.NodeProto(name="<graph>", op_type="model")  # whole-model rules
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 -- checker and shape inference raise several types
        detail = re.sub(r"\s+", " ", str(e)).strip()[:300]
        violations.append(_v(graph_node, "checker", f"onnx.checker failed: {detail}; fix the export"))
    if not OPSET_MIN <= opset <= OPSET_MAX:
        violations.append(_v(graph_node, "opset", f"the model uses ONNX opset {opset}; TensorRT 10 with "
                                                  f"per-channel Q/DQ needs {OPSET_MIN}-{OPSET_MAX}: export "
                                                  f"with opset_version=17"))
    consts = _constants(graph)
    for node in nodes:
        where = f"node '{_name(node)}' ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            violations.append(_v(node, "custom-domain", f"{where} is from domain '{node.domain}', which "
                                 "TensorRT cannot parse without a plugin; export standard ONNX ops (for "
                                 "INT8 use QuantizeLinear/DequantizeLinear, not onnxruntime's QLinear ops)"))
        elif node.op_type not in TRT_SUPPORTED_OPS:
            violations.append(_v(node, "unsupported-op", f"{where} is not supported by TensorRT's ONNX "
                                 "parser; rewrite the model layer so it exports to supported ops"))
        elif node.op_type in DATA_DEPENDENT_OPS or (node.op_type == "TopK" and node.input[1] not in consts):
            violations.append(_v(node, "dynamic-shape", f"{where} has a data-dependent output shape; "
                                 "students must be static apart from batch: rewrite it with static ops"))
    inits = {t.name for t in graph.initializer}
    for inp in (i for i in graph.input if i.name not in inits):
        t = inp.type.tensor_type
        dims = list(t.shape.dim) if t.HasField("shape") else None
        if dims is None or any(not (d.HasField("dim_value") and d.dim_value > 0) for d in dims[1:]):
            shown = "unknown" if dims is None else [d.dim_value or d.dim_param or "?" for d in dims]
            violations.append({"node": inp.name, "op": "input", "rule": "input-shape", "message":
                               f"graph input '{inp.name}' has shape {shown}; only dim 0 (batch) may be "
                               "dynamic: export with dynamic_axes on the batch axis only"})
    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)
    if expect_qdq and not has_qdq:
        violations.append(_v(graph_node, "qdq-missing", "the model has no QuantizeLinear/DequantizeLinear "
                             "nodes but INT8 was expected; export the ModelOpt-quantized model, not the FP32 one"))
    elif expect_qdq is False and has_qdq:
        violations.append(_v(graph_node, "qdq-unexpected", "the model has Q/DQ nodes but a float model "
                             "was expected; export the unquantized student"))
    if has_qdq:
        _lint_qdq(graph, consts, report)
    report["ok"] = not violations
    return report


def format_report(report: dict) -> str:
    """Markdown: verdict, Q/DQ summary, violations table, op histogram."""
    q = report["qdq"]
    lines = [f"# TensorRT lint: {report['model']}", "",
             f"**{'PASS' if report['ok'] else 'FAIL'}** ({len(report['violations'])} violation(s)), "
             f"opset {report['opset']}, Q/DQ pairs {q['pairs']}, per-channel weights "
             f"{q['per_channel_weights']}, per-tensor activations {q['per_tensor_activations']}", ""]
    if report["violations"]:
        lines += ["## Violations", "", "| rule | node | op | message |", "|---|---|---|---|"]
        lines += [f"| `{v['rule']}` | `{v['node']}` | {v['op']} | {v['message'].replace('|', '/')} |"
                  for v in report["violations"]]
        lines.append("")
    lines += ["## Operators", "", "| op | count |", "|---|---|"]
    lines += [f"| {op} | {n} |" for op, n in sorted(report["ops"].items())]
    return "\n".join(lines) + "\n"


def check(report: dict, limit: int = 3) -> None:
    """Raise ExportError naming the first `limit` violations on one line (no-op when the lint passed)."""
    vs = report["violations"]
    if vs:
        more = f" (+{len(vs) - limit} more; see the lint report)" if len(vs) > limit else ""
        raise ExportError(f"TensorRT lint ({report['model']}): "
                          + " | ".join(f"[{v['rule']}] {v['message']}" for v in vs[:limit]) + more)
