"""The export stage: ONNX models (student FP32, student INT8 QDQ for TensorRT, student INT8 for
onnxruntime's CPU provider, teacher FP32), the parity ladder, the offline TensorRT lint, and the
device bundle.

Writes export/*.onnx, export/parity.json, export/lint.json + lint.md, and bundle/ (its own
manifest holds the sha256 of every file). Manifest metrics: per artifact `max_abs_diff`,
`top1_agreement`, `accuracy` (through onnxruntime on the test split).
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch

from edgekd.data import load_dataset
from edgekd.distill.evaluate import predict
from edgekd.errors import ExportError, RunDirError
from edgekd.exporting.cpu_int8 import quantize_for_cpu
from edgekd.exporting.lint import check, format_report, lint_onnx
from edgekd.exporting.onnx_export import OPSET, export_onnx
from edgekd.exporting.parity import Rung, ort_accuracy, ort_session, run_rung
from edgekd.models.io import load_model
from edgekd.models.student import inference_form
from edgekd.rundir import RunDir, atomic_path, atomic_write_json, atomic_write_text
from edgekd.runtime.bundle import write_bundle
from edgekd.stages import threads
from edgekd.stages.qat import load_fp32_student, load_quantized_student

# what each artifact is, for the bundle and the bench
KINDS = {
    "student_fp32": {"role": "student", "precision": "fp32", "target": "any"},
    "student_int8_qdq": {"role": "student", "precision": "int8", "target": "tensorrt"},
    "student_int8_cpu": {"role": "student", "precision": "int8", "target": "cpu"},
    "teacher_fp32": {"role": "teacher", "precision": "fp32", "target": "any"},
}


def _io_spec(specs: dict, num_classes: int, embed_dim: int) -> dict:
    return {"inputs": [{"name": n, "kind": s["kind"], "dtype": s["dtype"], "shape": ["batch", *s["shape"]]}
                       for n, s in specs.items()],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", num_classes]},
                        {"name": "embedding", "dtype": "float32", "shape": ["batch", embed_dim]}]}


def _bundle_preprocess(data, names: list[str]) -> dict:
    return {n: data.preprocess[n] for n in names}


def _folded_fp32(quant: torch.nn.Module) -> torch.nn.Module:
    """The QAT/QAD student as a plain float model: its fake-quantized weights folded in, every
    quantizer off. The CPU INT8 model is built from these weights, which training adapted to INT8
    (from the FP32 student instead: 94.2-96.6% vs 96.9%, see cpu_int8.py)."""
    import modelopt.torch.quantization as mtq

    model = copy.deepcopy(quant)
    mtq.fold_weight(model)
    mtq.disable_quantizer(model, "*")
    return model.eval()


def run_export(run: RunDir, data_root=None, resume: bool = False, progress=None) -> dict:
    r, e = run.recipe, run.recipe.export
    with threads(r.threads):
        data = load_dataset(r, data_root)
        if run.stage("qat") and run.stage("qat").get("data_fingerprint") not in (None, data.fingerprint()):
            raise RunDirError(f"the models in {run.path} were trained on other data than --data-root / EDGEKD_DATA "
                              "gives now; point at the same data or re-run the pipeline")
        fp32, config = load_fp32_student(run)
        quant, _ = load_quantized_student(run)
        teacher = None
        if e.teacher:
            teacher, _ = load_model(run.artifact("teacher", "weights"), run.artifact("teacher", "config"))
        started = run.begin("export")
        out = run.stage_dir("export")
        test, names = data.split("test"), list(fp32.names)
        example = {n: torch.from_numpy(test.inputs[n][:2]) for n in names}

        models = {"student_fp32": fp32, "student_int8_qdq": quant}
        # onnxruntime and the CPU get the late-fusion tail folded into one Gemm (fewer kernel launches);
        # the parity ladder checks the folded graphs against the unfolded PyTorch models
        files = {"student_fp32": export_onnx(inference_form(fp32), example, out / "student_fp32.onnx"),
                 "student_int8_qdq": export_onnx(quant, example, out / "student_int8_qdq.onnx", quantized=True)}
        if teacher is not None:
            t_example = {n: torch.from_numpy(test.inputs[n][:2]) for n in teacher.names}
            files["teacher_fp32"] = export_onnx(teacher, t_example, out / "teacher_fp32.onnx")
            models["teacher_fp32"] = teacher
        if e.cpu_int8:
            train = data.split("train", 0)
            order = np.random.default_rng([r.seed, 11]).permutation(len(train))
            calib = [{n: train.inputs[n][order[i : i + 64]] for n in names}
                     for i in range(0, min(len(order), 64 * e.cpu_calib_batches), 64)]
            with tempfile.TemporaryDirectory() as tmp:
                folded = export_onnx(inference_form(_folded_fp32(quant)), example, Path(tmp) / "folded.onnx")
                files["student_int8_cpu"] = quantize_for_cpu(folded, out / "student_int8_cpu.onnx", calib,
                                                             e.cpu_calib_method)
            models["student_int8_cpu"] = quant

        # offline TensorRT lint: the models TensorRT may be given (the CPU model is onnxruntime's own format)
        lint = {k: lint_onnx(p, expect_qdq=k == "student_int8_qdq") for k, p in files.items() if k != "student_int8_cpu"}
        lint_json = atomic_write_json(out / "lint.json", lint)
        lint_md = atomic_write_text(out / "lint.md", "\n".join(format_report(v) for v in lint.values()))
        for report in lint.values():
            check(report)

        rungs = {"student_fp32": Rung("student_fp32", "pytorch fp32", e.fp32_tolerance, 1.0),
                 "teacher_fp32": Rung("teacher_fp32", "pytorch fp32", e.fp32_tolerance, 1.0),
                 "student_int8_qdq": Rung("student_int8_qdq", "pytorch fake-quant", e.qdq_tolerance, e.qdq_min_agreement,
                                          relative=True),
                 # its own calibration: held to agreement, not to a logit tolerance
                 "student_int8_cpu": Rung("student_int8_cpu", "pytorch fake-quant", float("inf"), 0.0)}
        # the CPU model's own calibration moves near-tied logits, so its agreement is judged over the
        # whole test split rather than per small batch
        min_test_agreement = {"student_int8_cpu": e.cpu_int8_min_agreement}
        n = len(test)
        parity, metrics = {}, {}
        for key, path in files.items():
            model_names = list(models[key].names)
            big = max(2, min(e.parity_batch, n - 1))  # a small test split caps the larger batch
            batches = {1: {m: test.inputs[m][:1] for m in model_names},
                       big: {m: test.inputs[m][1 : 1 + big] for m in model_names}}
            session = ort_session(path, r.threads)
            parity[key] = run_rung(rungs[key], models[key], session, batches)
            acc, preds = ort_accuracy(session, {m: test.inputs[m] for m in model_names}, test.labels)
            ref = predict(models[key], test, model_names).argmax(1)
            parity[key].update({"accuracy": acc, "test_top1_agreement": round(float((preds == ref).mean()), 4)})
            if parity[key]["test_top1_agreement"] < min_test_agreement.get(key, 0.0):
                raise ExportError(f"parity: {key} agrees with {rungs[key].reference} on "
                                  f"{parity[key]['test_top1_agreement']:.3f} of the test split < "
                                  f"recipe.export.cpu_int8_min_agreement {min_test_agreement[key]}; calibrate on more "
                                  "batches (export.cpu_calib_batches) or another export.cpu_calib_method")
            metrics[key] = {"max_abs_diff": parity[key]["max_abs_diff"], "top1_agreement": parity[key]["top1_agreement"],
                            "test_top1_agreement": parity[key]["test_top1_agreement"], "accuracy": acc,
                            "bytes": path.stat().st_size}
        parity_json = atomic_write_json(out / "parity.json", parity)

        flops = {"student": run.stage("distill")["metrics"].get("flops"),
                 "teacher": run.stage("teacher")["metrics"].get("flops")}
        bundle_models = {k: {**KINDS[k], "accuracy": metrics[k]["accuracy"], "flops": flops[KINDS[k]["role"]]}
                         for k in files}
        extra = {}
        if e.testset:  # every model input of the test split + labels, no pickles (np.load allow_pickle=False)
            arrays = {f"input.{m}": test.inputs[m] for m in dict.fromkeys([*names, *(teacher.names if teacher else [])])}
            with atomic_path(out / "testset.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez_compressed(f, labels=test.labels.astype(np.int64), **arrays)
            extra["testset.npz"] = out / "testset.npz"
        bundle = write_bundle(run.path / "bundle", name=r.name, models=bundle_models, model_files=files,
                              io_spec=_io_spec(config["modalities"], len(data.classes), fp32.embed_dim),
                              preprocess=_bundle_preprocess(data, list(dict.fromkeys([*names, *(teacher.names if teacher else [])]))),
                              labels=list(data.classes), extra_files=extra)
        outputs = {**files, "parity": parity_json, "lint": lint_json, "lint_md": lint_md,
                   "bundle_manifest": bundle / "manifest.json"}
        run.record("export", started=started, outputs=outputs, metrics={**metrics, "opset": OPSET},
                   inputs={"student_weights": run.artifact("distill", "weights"), "qat_model": run.artifact("qat", "model")},
                   extra={"data_fingerprint": data.fingerprint(), "bundle": "bundle"})
    return metrics
