"""Offline TensorRT lint on small hand-built ONNX graphs (no torch, no TensorRT): a clean float model
and a ModelOpt-style Q/DQ model pass; each broken variant fails with the rule that names its fix."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd.errors import ExportError
from edgekd.trt.lint import check, format_report, lint_onnx

RNG = np.random.default_rng(0)


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _model(nodes, inits, opset=17, input_shape=("batch", 3, 8, 8), extra_opsets=()):
    graph = helper.make_graph(
        nodes, "toy",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    opsets = [helper.make_opsetid("", opset), *extra_opsets]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def _float_model(**kw):
    """image -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm(transB=1) -> logits."""
    nodes = [helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["c"], "conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], "relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], "pool"),
             helper.make_node("Flatten", ["p"], ["f"], "flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], "fc", transB=1)]
    inits = [_init("conv_w", RNG.standard_normal((4, 3, 3, 3), dtype=np.float32)),
             _init("conv_b", np.zeros(4, np.float32)),
             _init("fc_w", RNG.standard_normal((10, 4), dtype=np.float32)),
             _init("fc_b", np.zeros(10, np.float32))]
    return _model(nodes, inits, **kw)


def _qdq_model(zp_value=0, zp_type=np.int8, weight_axis=0, per_tensor_weights=False, drop_dq=False):
    """The ModelOpt legacy-export layout: float weight -> Q -> DQ (per-channel) -> Conv/Gemm, and
    per-tensor Q/DQ with an INT8 zero-point of 0 on each activation input."""
    nodes, inits = [], []

    def act_qdq(x, tag):
        inits.extend([_init(f"{tag}_s", np.float32(0.05)), _init(f"{tag}_zp", zp_type(zp_value))])
        nodes.append(helper.make_node("QuantizeLinear", [x, f"{tag}_s", f"{tag}_zp"], [f"{tag}_q"], f"{tag}_Q"))
        nodes.append(helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_s", f"{tag}_zp"],
                                      [f"{tag}_dq"], f"{tag}_DQ"))
        return f"{tag}_dq"

    def weight_qdq(w, tag):
        c = 1 if per_tensor_weights else w.shape[weight_axis]
        scale = np.float32(0.01) if c == 1 else np.full(c, 0.01, np.float32)
        inits.extend([_init(tag, w), _init(f"{tag}_s", scale), _init(f"{tag}_zp", np.zeros_like(scale, np.int8))])
        axis = {} if per_tensor_weights else {"axis": weight_axis}
        nodes.append(helper.make_node("QuantizeLinear", [tag, f"{tag}_s", f"{tag}_zp"], [f"{tag}_q"],
                                      f"{tag}_Q", **axis))
        nodes.append(helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_s", f"{tag}_zp"],
                                      [f"{tag}_dq"], f"{tag}_DQ", **axis))
        return f"{tag}_dq"

    x = act_qdq("image", "in")
    w = weight_qdq(RNG.standard_normal((4, 3, 3, 3), dtype=np.float32), "conv_w")
    nodes += [helper.make_node("Conv", [x, w, "conv_b"], ["c"], "conv", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["r"], "relu"),
              helper.make_node("GlobalAveragePool", ["r"], ["p"], "pool"),
              helper.make_node("Flatten", ["p"], ["f"], "flatten")]
    x = act_qdq("f", "fc_in")
    w = weight_qdq(RNG.standard_normal((10, 4), dtype=np.float32), "fc_w")
    nodes.append(helper.make_node("Gemm", [x, w, "fc_b"], ["logits"], "fc", transB=1))
    inits += [_init("conv_b", np.zeros(4, np.float32)), _init("fc_b", np.zeros(10, np.float32))]
    if drop_dq:  # the Gemm reads the INT8 tensor straight from the Q
        nodes = [n for n in nodes if n.name != "fc_in_DQ"]
        nodes[-1].input[0] = "fc_in_q"
    return _model(nodes, inits)


def _rules(report):
    return {v["rule"] for v in report["violations"]}


def test_clean_float_model_passes(tmp_path):
    path = tmp_path / "student_fp32.onnx"
    onnx.save(_float_model(), path)
    report = lint_onnx(path)
    assert report["ok"], report["violations"]
    assert report["model"] == "student_fp32.onnx" and report["opset"] == 17
    assert report["ops"]["Conv"] == 1 and report["ops"]["Gemm"] == 1
    assert report["qdq"] == {"pairs": 0, "per_channel_weights": 0, "per_tensor_activations": 0}
    check(report)  # no raise
    assert lint_onnx(_float_model(), expect_qdq=False)["ok"]


def test_proper_qdq_model_passes_and_runs():
    model = _qdq_model()
    report = lint_onnx(model, expect_qdq=True)
    assert report["ok"], report["violations"]
    assert report["qdq"] == {"pairs": 4, "per_channel_weights": 2, "per_tensor_activations": 2}
    check(report)
    # the fixture is a real, runnable Q/DQ graph, not just one that satisfies the lint
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    assert sess.run(None, {"image": np.zeros((2, 3, 8, 8), np.float32)})[0].shape == (2, 10)


def test_nonzero_zero_point_fails_and_check_names_the_node():
    report = lint_onnx(_qdq_model(zp_value=3))
    assert not report["ok"] and _rules(report) == {"qdq-zero-point"}
    assert {v["node"] for v in report["violations"]} >= {"in_Q", "in_DQ", "fc_in_Q"}
    with pytest.raises(ExportError) as err:
        check(report)
    msg = str(err.value)
    assert "\n" not in msg and "'in_Q'" in msg and "non-zero zero-point" in msg and "symmetric" in msg


def test_uint8_zero_point_fails():
    report = lint_onnx(_qdq_model(zp_type=np.uint8))
    assert "qdq-zero-point" in _rules(report)
    assert any("UINT8" in v["message"] for v in report["violations"])


@pytest.mark.parametrize("kw", [{"per_tensor_weights": True}, {"weight_axis": 1}])
def test_weights_not_per_output_channel_fail(kw):
    report = lint_onnx(_qdq_model(**kw))
    assert _rules(report) == {"qdq-weight-axis"}
    assert {v["node"] for v in report["violations"]} >= {"conv_w_DQ", "fc_w_DQ"}
    assert all("axis=0" in v["message"] for v in report["violations"])


def test_weight_dq_without_axis_attribute_means_axis_1():
    model = _qdq_model()
    for node in model.graph.node:
        if node.name == "conv_w_DQ":
            del node.attribute[:]  # ONNX's default axis is 1, so a [C_out] scale no longer fits
    report = lint_onnx(model)
    assert [(v["node"], v["rule"]) for v in report["violations"]] == [("conv_w_DQ", "qdq-weight-axis")]


def test_per_channel_activation_fails():
    model = _qdq_model()
    model.graph.initializer.append(_init("in_s3", np.full(3, 0.05, np.float32)))
    model.graph.initializer.append(_init("in_zp3", np.zeros(3, np.int8)))
    for node in model.graph.node:
        if node.name in ("in_Q", "in_DQ"):
            node.input[1], node.input[2] = "in_s3", "in_zp3"
    assert "qdq-activation-per-tensor" in _rules(lint_onnx(model))


def test_bad_scale_fails():
    model = _qdq_model()
    for t in model.graph.initializer:
        if t.name == "in_s":
            t.CopyFrom(_init("in_s", np.float32(0.0)))
    assert "qdq-scale" in _rules(lint_onnx(model))


def test_q_without_dq_fails():
    report = lint_onnx(_qdq_model(drop_dq=True))
    assert ("fc_in_Q", "qdq-pair") in {(v["node"], v["rule"]) for v in report["violations"]}


def test_unsupported_op_fails():
    model = _float_model()
    model.graph.node.insert(0, helper.make_node("Unique", ["image"], ["u"], "uniq"))
    report = lint_onnx(model)
    assert ("uniq", "unsupported-op") in {(v["node"], v["rule"]) for v in report["violations"]}


def test_contrib_domain_op_fails():
    model = _float_model(extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
    model.graph.node.insert(0, helper.make_node("QLinearConv", ["image"], ["qc"], "qconv", domain="com.microsoft"))
    report = lint_onnx(model)
    hit = [v for v in report["violations"] if v["node"] == "qconv"]
    assert hit and hit[0]["rule"] == "custom-domain" and "com.microsoft" in hit[0]["message"]


def test_data_dependent_op_fails():
    model = _float_model()
    model.graph.node.insert(0, helper.make_node("NonZero", ["image"], ["nz"], "nonzero"))
    assert ("nonzero", "dynamic-shape") in {(v["node"], v["rule"]) for v in lint_onnx(model)["violations"]}


def test_old_opset_fails():
    report = lint_onnx(_float_model(opset=11))
    assert "opset" in _rules(report) and report["opset"] == 11


def test_dynamic_non_batch_dim_fails():
    report = lint_onnx(_float_model(input_shape=("batch", 3, "height", 8)))
    assert [v["rule"] for v in report["violations"]] == ["input-shape"]
    assert "'image'" in report["violations"][0]["message"]


def test_expect_qdq_on_float_model_fails():
    report = lint_onnx(_float_model(), expect_qdq=True)
    assert _rules(report) == {"qdq-missing"}
    assert "qdq-unexpected" in _rules(lint_onnx(_qdq_model(), expect_qdq=False))


def test_checker_failure_is_reported():
    model = _float_model()
    model.graph.node[0].input[1] = "missing_weight"
    assert "checker" in _rules(lint_onnx(model))


def test_unreadable_file_raises_export_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(ExportError, match="cannot read ONNX model"):
        lint_onnx(bad)


def test_format_report_is_markdown_with_violations():
    report = lint_onnx(_qdq_model(zp_value=3))
    text = format_report(report)
    assert text.startswith("# TensorRT lint") and "FAIL" in text
    assert "| rule | node | op | message |" in text and "`qdq-zero-point`" in text and "`in_Q`" in text
    assert "| Conv | 1 |" in text
    assert "PASS" in format_report(lint_onnx(_float_model()))


@pytest.mark.parametrize("transpose,axis,ok", [(True, 0, True), (True, 1, False), (False, 1, True), (False, 0, False)])
def test_matmul_weight_axis_is_the_output_channel(transpose, axis, ok):
    """torch's Linear on 3-D input exports as W[out,in] -> Q/DQ -> Transpose -> MatMul (per-channel on
    axis 0, as in real ModelOpt exports); a MatMul reading W[in,out] directly wants axis 1."""
    w = RNG.standard_normal((10, 4) if transpose else (4, 10), dtype=np.float32)
    c = w.shape[axis]
    inits = [_init("w", w), _init("w_s", np.full(c, 0.01, np.float32)), _init("w_zp", np.zeros(c, np.int8))]
    nodes = [helper.make_node("QuantizeLinear", ["w", "w_s", "w_zp"], ["w_q"], "w_Q", axis=axis),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w_dq"], "w_DQ", axis=axis)]
    if transpose:
        nodes.append(helper.make_node("Transpose", ["w_dq"], ["w_t"], "w_T", perm=[1, 0]))
    nodes.append(helper.make_node("MatMul", ["image", "w_t" if transpose else "w_dq"], ["logits"], "mm"))
    report = lint_onnx(_model(nodes, inits, input_shape=("batch", 4)))
    assert report["ok"] is ok, report["violations"]
    assert report["qdq"]["per_channel_weights"] == (1 if ok else 0)
