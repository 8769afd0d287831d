"""The export stage: ONNX models (student FP32, student INT8 QDQ for TensorRT, student INT8 for
onnxruntime's CPU provider, teacher FP32), the parity ladder, the offline TensorRT lint, and the
device bundle.

Writes export/*.onnx, export/parity.json, export/lint.json + lint.md, and bundle/ (its own
manifest holds the sha256 of every file; the build stage may add an engine to it later, so the
run manifest records the bundle as a directory, verified through that manifest). Manifest
metrics: per artifact `max_abs_diff`, `bound`, `top1_agreement`, `accuracy` (through onnxruntime
on the test split).
"""
from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from edgekd.contract import io_spec
from edgekd.data import load_dataset
from edgekd.distill.evaluate import predict
from edgekd.errors import ExportError
from edgekd.exporting.cpu_int8 import quantize_for_cpu
from edgekd.exporting.onnx_export import OPSET, export_onnx
from edgekd.exporting.parity import Rung, accuracy, run_rung
from edgekd.files import atomic_path, atomic_write_json, atomic_write_text
from edgekd.models.student import inference_form
from edgekd.rundir import RunDir
from edgekd.runtime import drift
from edgekd.runtime.bundle import write_bundle
from edgekd.runtime.runner import OrtRunner
from edgekd.stages.common import (
    check_data,
    load_model,
    pct,
    pruned,
    recorded_baselines,
    student_data,
    teacher_data,
    threads,
)
from edgekd.trt.lint import check, format_report, lint_onnx

# what each artifact is, for the bundle and the bench
KINDS = {
    "student_fp32": {"role": "student", "precision": "fp32", "target": "any"},
    "student_int8_qdq": {"role": "student", "precision": "int8", "target": "tensorrt"},
    "student_int8_cpu": {"role": "student", "precision": "int8", "target": "cpu"},
    "teacher_fp32": {"role": "teacher", "precision": "fp32", "target": "any"},
}


def _folded_fp32(quant: torch.nn.Module) -> torch.nn.Module:
    """The QAT/QAD student as a plain float model: its fake-quantized weights folded in, every
    quantizer off. The CPU INT8 model is built from these weights, which training adapted to INT8
    (from the FP32 student instead: 94.2-96.6% vs 96.9%, see cpu_int8.py)."""
    import modelopt.torch.quantization as mtq

    model = copy.deepcopy(quant)
    mtq.fold_weight(model)
    mtq.disable_quantizer(model, "*")
    return model.eval()


# --------------------------------------------------------------------------- the steps


def export_student(fp32, quant, example, out: Path) -> dict[str, Path]:
    """Student FP32 and INT8 QDQ. onnxruntime and the CPU get the late-fusion tail folded into one
    Gemm (fewer kernel launches); the parity ladder checks it against the unfolded PyTorch model.
    The QDQ model stays unfolded: it is TensorRT's, whose own fusions do this."""
    return {"student_fp32": export_onnx(inference_form(fp32), example, out / "student_fp32.onnx"),
            "student_int8_qdq": export_onnx(quant, example, out / "student_int8_qdq.onnx", quantized=True)}


def export_cpu_int8(quant, example, train, names, seed: int, cfg, out: Path) -> Path:
    """onnxruntime's own INT8 model, calibrated on real train batches of 64."""
    order = np.random.default_rng([seed, 11]).permutation(len(train))
    calib = [{n: train.inputs[n][order[i : i + 64]] for n in names}
             for i in range(0, min(len(order), 64 * cfg.cpu_calib_batches), 64)]
    with tempfile.TemporaryDirectory() as tmp:
        folded = export_onnx(inference_form(_folded_fp32(quant)), example, Path(tmp) / "folded.onnx")
        return quantize_for_cpu(folded, out / "student_int8_cpu.onnx", calib, cfg.cpu_calib_method)


def export_teacher(teacher, test, out: Path) -> Path:
    example = {n: torch.from_numpy(test.inputs[n][:2]) for n in teacher.names}
    return export_onnx(teacher, example, out / "teacher_fp32.onnx")


def lint(files: dict[str, Path], out: Path) -> dict[str, Path]:
    """The offline TensorRT lint of every model TensorRT may be given (the CPU model is
    onnxruntime's own format); raises on a violation after writing the report."""
    reports = {k: lint_onnx(p, expect_qdq=k == "student_int8_qdq") for k, p in files.items() if k != "student_int8_cpu"}
    written = {"lint": atomic_write_json(out / "lint.json", reports),
               "lint_md": atomic_write_text(out / "lint.md", "\n".join(format_report(v) for v in reports.values()))}
    for report in reports.values():
        check(report)
    return written


def rungs(cfg) -> dict[str, Rung]:
    return {"student_fp32": Rung("student_fp32", "pytorch fp32", cfg.fp32_tolerance, 1.0),
            "teacher_fp32": Rung("teacher_fp32", "pytorch fp32", cfg.fp32_tolerance, 1.0),
            "student_int8_qdq": Rung("student_int8_qdq", "pytorch fake-quant", cfg.qdq_tolerance,
                                     cfg.qdq_min_agreement, relative=True),
            # its own calibration: held to agreement, not to a logit tolerance
            "student_int8_cpu": Rung("student_int8_cpu", "pytorch fake-quant", float("inf"), 0.0)}


def parity(files: dict[str, Path], models: dict, tests: dict, cfg, threads_: int) -> tuple[dict, dict]:
    """(parity report, metrics): each ONNX model through OrtRunner against its PyTorch model at
    batch 1 and a larger batch, then its accuracy and top-1 agreement over the whole test split.
    `tests[key]` is (the split the exported model reads, the same rows for the PyTorch reference:
    for a teacher with frozen encoders, their cached embeddings instead of a second slow pass)."""
    # the CPU model's own calibration moves near-tied logits, so its agreement is judged over the
    # whole test split rather than per small batch
    min_test_agreement = {"student_int8_cpu": cfg.cpu_int8_min_agreement}
    ladder = rungs(cfg)
    report, metrics = {}, {}
    for key, path in files.items():
        test, reference = tests[key]
        n, names = len(test), list(models[key].names)
        big = max(2, min(cfg.parity_batch, n - 1))  # a small test split caps the larger batch
        batches = {1: {m: test.inputs[m][:1] for m in names}, big: {m: test.inputs[m][1 : 1 + big] for m in names}}
        runner = OrtRunner(path, threads=threads_)
        try:
            report[key] = run_rung(ladder[key], models[key], runner, batches)
            acc, preds = accuracy(runner, {m: test.inputs[m] for m in names}, test.labels)
        finally:
            runner.close()
        ref = predict(models[key], reference, names).argmax(1)
        report[key].update({"accuracy": acc, "test_top1_agreement": round(float((preds == ref).mean()), 4)})
        if report[key]["test_top1_agreement"] < min_test_agreement.get(key, 0.0):
            raise ExportError(f"parity: {key} agrees with {ladder[key].reference} on "
                              f"{report[key]['test_top1_agreement']:.3f} of the test split < "
                              f"recipe.export.cpu_int8_min_agreement {min_test_agreement[key]}; calibrate on more "
                              "batches (export.cpu_calib_batches) or another export.cpu_calib_method")
        metrics[key] = {k: report[key][k] for k in ("max_abs_diff", "bound", "top1_agreement", "test_top1_agreement",
                                                    "accuracy")}
        metrics[key]["bytes"] = path.stat().st_size
    return report, metrics


def testset_rows(labels: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """The test rows testset.npz carries: all of them up to `cap` (0: no cap), else a seeded sample
    with every class in proportion, in split order (the device's accuracy is then an estimate)."""
    if cap <= 0 or len(labels) <= cap:
        return np.arange(len(labels))
    rng = np.random.default_rng([seed, 29])
    picked = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: max(1, int(cap * np.mean(labels == c)))]
                             for c in np.unique(labels)])
    rest = rng.permutation(np.setdiff1d(np.arange(len(labels)), picked))  # rounding down left room: top it up
    return np.sort(np.concatenate([picked, rest])[:cap])


def bundle(run: RunDir, data, tests: dict, files, metrics, config, embed_dim: int, used: set[str]) -> Path:
    """The device bundle: the models, io_spec, preprocess parameters, labels and (optionally) the
    test split's model inputs, so `edgekd bench` on a device reports accuracy on its own backend."""
    pm = pruned(run)  # the students are the pruned one: its FLOPs, and where it came from
    flops = {"student": pm["flops"] if pm else run.stage("distill")["metrics"].get("flops"),
             "teacher": run.stage("teacher")["metrics"].get("flops")}
    origin = {"pruned": {"flops_before": pm["flops_before"], "constraint": pm["constraint"]}} if pm else {}
    models = {k: {**KINDS[k], "accuracy": metrics[k]["accuracy"], "flops": flops[KINDS[k]["role"]],
                  **(origin if KINDS[k]["role"] == "student" else {})} for k in files}
    # every model's inputs: the student's, and the teacher's own where its processors made them
    inputs = {m: (split.inputs[m], pre[m]) for split, pre in tests.values() for m in split.inputs if m in used}
    extra = {}
    if run.recipe.export.testset:  # every model input of the test split + labels, no pickles (allow_pickle=False)
        labels = next(iter(tests.values()))[0].labels
        rows = testset_rows(labels, run.recipe.export.testset_rows, run.recipe.seed)
        out = run.stage_dir("export") / "testset.npz"
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, labels=labels[rows].astype(np.int64),
                                **{f"input.{m}": np.asarray(x[rows]) for m, (x, _) in inputs.items()})
        extra["testset.npz"] = out
    extra["drift.json"] = drift_reference(run, files, tests["student"])
    baselines = recorded_baselines(run)
    return write_bundle(run.path / "bundle", name=run.recipe.name, models=models, model_files=files, baselines=baselines,
                        io_spec=io_spec(config["modalities"], len(data.classes), embed_dim),
                        preprocess={m: p for m, (_, p) in inputs.items()},
                        labels=list(data.classes), extra_files=extra)


def drift_reference(run: RunDir, files: dict[str, Path], student) -> Path:
    """export/drift.json: the test split's input features and the default student's confidence,
    binned, which `edgekd serve` compares live traffic against (docs/monitoring.md). The whole
    split: it is sorted by label, so a prefix would be a class-skewed reference."""
    split, pre = student
    key = next(k for k in ("student_int8_cpu", "student_fp32") if k in files)
    runner = OrtRunner(files[key], threads=run.recipe.threads)
    inputs = {n: split.inputs[n] for n in runner.input_names}  # a cross-modal student reads only some
    try:
        logits = np.concatenate([runner.run({n: x[i:i + 256] for n, x in inputs.items()})["logits"]
                                 for i in range(0, len(split), 256)])
    finally:
        runner.close()
    unk = {}
    for name in inputs:
        if pre[name].get("kind") == "text" and "tokenizer_json" in pre[name]:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_str(pre[name]["tokenizer_json"])
            token = json.loads(pre[name]["tokenizer_json"]).get("model", {}).get("unk_token")
            if token and tok.token_to_id(token) is not None:
                unk[name] = tok.token_to_id(token)
    ref = drift.reference(inputs, {n: pre[n]["kind"] for n in inputs}, drift.max_softmax(logits),
                          unk_ids=unk, model=key)
    return atomic_write_json(run.stage_dir("export") / "drift.json", ref)


# --------------------------------------------------------------------------- the stage


def run(run: RunDir, data_root=None, resume: bool = False, progress=None) -> dict:
    r, e = run.recipe, run.recipe.export
    with threads(r.threads):
        data = load_dataset(r, data_root)
        check_data(run, "qat", data)
        fp32, config = load_model(run, "student")
        quant, _ = load_model(run, "qat")
        teacher = load_model(run, "teacher")[0] if e.teacher else None
        # the teacher reads its own processors' inputs (token ids); its PyTorch reference over the
        # whole test split may use the frozen encoders' cached embeddings instead (same outputs)
        tview = teacher_data(run, data, embeddings=False) if teacher is not None else None
        started = run.begin("export")
        out = run.stage_dir("export")
        sdata = student_data(run, data)  # the student's inputs (its text tokenizer)
        test, names = sdata.split("test"), list(fp32.names)
        example = {n: torch.from_numpy(test.inputs[n][:2]) for n in names}

        models = {"student_fp32": fp32, "student_int8_qdq": quant}
        tests = {"student_fp32": (test, test), "student_int8_qdq": (test, test)}
        files = export_student(fp32, quant, example, out)
        if teacher is not None:
            ttest = tview.split("test")
            files["teacher_fp32"], models["teacher_fp32"] = export_teacher(teacher, ttest, out), teacher
            tests["teacher_fp32"] = (ttest, teacher_data(run, data, view=tview).split("test"))
        if e.cpu_int8:
            files["student_int8_cpu"] = export_cpu_int8(quant, example, sdata.split("train", 0), names, r.seed, e, out)
            models["student_int8_cpu"], tests["student_int8_cpu"] = quant, (test, test)
        lint_files = lint(files, out)
        report, metrics = parity(files, models, tests, e, r.threads)
        parity_json = atomic_write_json(out / "parity.json", report)
        splits = {"student": (test, sdata.preprocess)}
        if teacher is not None:
            splits["teacher"] = (ttest, tview.preprocess)
        bundle(run, data, splits, files, metrics, config, fp32.embed_dim, {n for m in models.values() for n in m.names})
        run.record("export", started=started, outputs={**files, "parity": parity_json, **lint_files},
                   metrics={**metrics, "opset": OPSET},
                   inputs={"student_weights": run.artifact("distill", "weights"), "qat_model": run.artifact("qat", "model")},
                   extra={"data_fingerprint": data.fingerprint(), "bundle": "bundle"})
    return metrics


def summary(m: dict) -> str:
    lines = ["export: parity ladder passed; accuracy through onnxruntime (test split):"]
    for key, v in m.items():
        if isinstance(v, dict):
            bound = v.get("bound")
            held = "" if bound is None or bound == float("inf") else f" (bound {bound:.2g})"
            lines.append(f"    {key:<18} {pct(v['accuracy']):>6}  max |diff| {v['max_abs_diff']:.2g}{held}  "
                         f"top-1 agreement {v['top1_agreement']:.3f}  {v['bytes'] / 1024:,.0f} KiB")
    return "\n".join(lines)
