"""ONNX export of every student fusion, FP32 and INT8: dynamic batch, parity rungs (and that a
broken model fails them), the TensorRT lint on real exports, and the CPU INT8 model."""
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgekd.errors import ExportError
from edgekd.exporting.cpu_int8 import quantize_for_cpu
from edgekd.exporting.onnx_export import export_onnx
from edgekd.exporting.parity import Rung, run_rung
from edgekd.models import create_model
from edgekd.models.student import inference_form
from edgekd.quant.fold import fold_batchnorm
from edgekd.quant.int8 import calibration_batches, quantize
from edgekd.recipe import QatConfig
from edgekd.runtime.runner import OrtRunner
from edgekd.stages.export import _folded_fp32
from edgekd.trt.lint import lint_onnx

NAMES = ["image", "audio"]
FUSIONS = ["concat", "gated", "attention", "late"]


def _student(toy, fusion):
    torch.manual_seed(0)
    return create_model("fusion_tiny", "student", modalities=toy.modalities, num_classes=3, fusion=fusion).eval()


def _example(toy, n=2):
    return {k: torch.from_numpy(v[:n]) for k, v in toy.split("test").inputs.items()}


def _batches(toy, sizes=(1, 5)):
    inputs = toy.split("test").inputs
    return {s: {k: v[:s] for k, v in inputs.items()} for s in sizes}


def _quantized(toy, fusion):
    m = _student(toy, fusion)
    fold_batchnorm(m)
    q = QatConfig(batch_size=16, calib_batches=2)
    return quantize(m, q, calibration_batches(toy.split("train"), NAMES, 16, 2, 0))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fp32_export_has_named_io_dynamic_batch_and_parity(toy, fusion, tmp_path):
    model = _student(toy, fusion)
    path = export_onnx(model, _example(toy), tmp_path / "s.onnx")
    m = onnx.load(str(path))
    assert [i.name for i in m.graph.input] == NAMES and [o.name for o in m.graph.output] == ["logits", "embedding"]
    assert m.opset_import[0].version == 17 and m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    result = run_rung(Rung("student_fp32", "pytorch fp32", 1e-4, 1.0), model, OrtRunner(path),
                      _batches(toy, (1, 3, 17)))
    assert set(result["batches"]) == {1, 3, 17} and result["top1_agreement"] == 1.0
    assert lint_onnx(path)["ok"]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_qdq_export_matches_fake_quant_and_passes_the_tensorrt_lint(toy, fusion, tmp_path):
    model = _quantized(toy, fusion)
    path = export_onnx(model, _example(toy), tmp_path / "q.onnx", quantized=True)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") >= 10 and ops.count("QuantizeLinear") == ops.count("DequantizeLinear")
    # 5% of the logit range: an untrained attention fusion turns one-step rounding flips of its
    # quantized keys into visibly different softmax weights (trained runs stay under 3%)
    run_rung(Rung("student_int8_qdq", "pytorch fake-quant", 0.05, 0.95, relative=True), model, OrtRunner(path),
             _batches(toy, (1, 12)))
    report = lint_onnx(path, expect_qdq=True)
    assert report["ok"], report["violations"]
    assert report["qdq"]["per_channel_weights"] > 0 and report["qdq"]["per_tensor_activations"] > 0


def test_a_broken_model_fails_its_parity_rung_naming_output_diff_and_tolerance(toy, tmp_path):
    model = _student(toy, "gated")
    path = export_onnx(model, _example(toy), tmp_path / "s.onnx")
    m = onnx.load(str(path))
    init = max(m.graph.initializer, key=lambda t: np.prod(t.dims))  # the biggest weight, perturbed
    w = numpy_helper.to_array(init).copy()
    w += 0.5
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(m, str(tmp_path / "broken.onnx"))
    with pytest.raises(ExportError, match=r"parity: student_fp32 vs pytorch fp32 at batch 1: output '\w+' max abs diff "
                                          r"[\d.e+-]+ > tolerance 0.0001"):
        run_rung(Rung("student_fp32", "pytorch fp32", 1e-4, 1.0), model, OrtRunner(tmp_path / "broken.onnx"),
                 _batches(toy))


def test_cpu_int8_model_is_built_from_the_quantized_student_and_agrees_with_it(toy, tmp_path):
    quant = _quantized(toy, "late")
    folded = _folded_fp32(quant)
    assert not any(m.is_enabled for m in folded.modules() if type(m).__name__ == "TensorQuantizer")
    # the fake-quantized weights are folded in: each conv channel lies on its INT8 grid
    conv, wq = folded.encoders["image"].body[0][0], quant.encoders["image"].body[0][0].weight_quantizer
    steps = conv.weight.detach() / (wq.amax.reshape(-1, 1, 1, 1) / 127)
    assert torch.allclose(steps, steps.round(), atol=1e-3)
    fp32 = export_onnx(folded, _example(toy), tmp_path / "s.onnx")
    train = toy.split("train").inputs
    calib = [{k: v[i : i + 16] for k, v in train.items()} for i in range(0, 48, 16)]
    out = quantize_for_cpu(fp32, tmp_path / "cpu.onnx", calib)
    g = onnx.load(str(out)).graph
    q_inputs = {n.input[0] for n in g.node if n.op_type == "QuantizeLinear"}
    zero_points = [numpy_helper.to_array(t) for t in g.initializer if t.name.endswith("zero_point")]
    assert q_inputs and any(z.dtype == np.uint8 for z in zero_points)  # u8 activations: the x86 fast path
    weights = [numpy_helper.to_array(t) for t in g.initializer if t.name.endswith("_quantized")]
    assert weights and all(np.abs(w.astype(int)).max() <= 64 for w in weights if w.dtype == np.int8)  # 7-bit
    result = run_rung(Rung("student_int8_cpu", "pytorch fake-quant", float("inf"), 0.8), quant, OrtRunner(out),
                      _batches(toy, (1, 24)))
    assert result["top1_agreement"] >= 0.8


def test_folded_late_student_exports_fewer_nodes_and_passes_parity_against_the_unfolded_one(toy, tmp_path):
    model = _student(toy, "late")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    plain = onnx.load(str(export_onnx(model, _example(toy), tmp_path / "plain.onnx"))).graph
    path = export_onnx(inference_form(model), _example(toy), tmp_path / "folded.onnx")
    folded = onnx.load(str(path)).graph
    assert len(folded.node) < len(plain.node) and [n.op_type for n in folded.node].count("Gemm") == 1
    result = run_rung(Rung("student_fp32", "pytorch fp32", 1e-4, 1.0), model, OrtRunner(path),
                      _batches(toy, (1, 9)))
    assert result["top1_agreement"] == 1.0 and result["max_abs_diff"] <= 1e-4
    assert lint_onnx(path)["ok"]


def test_cpu_int8_of_the_folded_student_writes_float_outputs_straight_from_its_gemm(toy, tmp_path):
    quant = _quantized(toy, "late")
    fp32 = export_onnx(inference_form(_folded_fp32(quant)), _example(toy), tmp_path / "s.onnx")
    train = toy.split("train").inputs
    calib = [{k: v[i : i + 16] for k, v in train.items()} for i in range(0, 48, 16)]
    g = onnx.load(str(quantize_for_cpu(fp32, tmp_path / "cpu.onnx", calib))).graph
    producers = {o: n for n in g.node for o in n.output}
    split = producers["logits"]
    assert split.op_type == "Split" and producers["embedding"] is split
    assert producers[split.input[0]].op_type == "Gemm"  # no Q/DQ between the tail product and the outputs
    assert producers[producers[split.input[0]].input[0]].op_type == "DequantizeLinear"  # its input is INT8
    result = run_rung(Rung("student_int8_cpu", "pytorch fake-quant", float("inf"), 0.8), quant, OrtRunner(tmp_path / "cpu.onnx"),
                      _batches(toy, (1, 24)))
    assert result["top1_agreement"] >= 0.8


def test_cpu_int8_needs_calibration_batches(toy, tmp_path):
    fp32 = export_onnx(_student(toy, "late"), _example(toy), tmp_path / "s.onnx")
    with pytest.raises(ExportError, match="calib_batches"):
        quantize_for_cpu(fp32, tmp_path / "cpu.onnx", [])
    assert not (tmp_path / "cpu.onnx").exists()


def test_the_bundle_test_set_is_capped_to_a_seeded_sample_of_every_class():
    from edgekd.stages.export import testset_rows

    labels = np.repeat(np.arange(5), [400, 300, 200, 90, 10])
    rows = testset_rows(labels, 100, seed=0)
    assert len(rows) == 100 and np.all(np.diff(rows) > 0)  # split order, no repeats
    assert set(labels[rows]) == set(range(5))  # every class, even the one with 1% of the rows
    assert abs(np.mean(labels[rows] == 0) - 0.4) < 0.02  # in proportion
    np.testing.assert_array_equal(rows, testset_rows(labels, 100, seed=0))
    assert not np.array_equal(rows, testset_rows(labels, 100, seed=1))
    np.testing.assert_array_equal(testset_rows(labels, 0, 0), np.arange(1000))  # 0: no cap
    np.testing.assert_array_equal(testset_rows(labels, 5000, 0), np.arange(1000))
