"""The pipeline's stages, registered in one place (torch-free: doctor and the device side read it).

A stage is one module here defining `run(run, *, data_root, resume, progress) -> metrics` and
`summary(metrics) -> str`, plus one `Stage` entry below. The CLI (`edgekd run --until`, one
command per stage), the pipeline, staleness and `edgekd doctor` all read this registry. Its run
function reads its inputs through the manifest, writes its files atomically and records only its
own manifest entry.

    teacher ─► search ─► distill ─► prune ─► qat ─► export ─► build ─► bench
    (order = the run order; a stage is stale when any stage before it, or its sections, changed)
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]  # recipe sections it reads first: a change makes it and later stages stale
    trains: bool  # epoch checkpoints and --resume; runs on every torchrun rank (else rank 0 alone)
    metrics: tuple[str, ...]  # the public manifest metric keys it records (DESIGN.md, docs/run-directory.md)
    help: str  # the CLI help of `edgekd NAME`
    module: str = ""  # default: edgekd.stages.NAME

    def _impl(self):
        return import_module(self.module or f"edgekd.stages.{self.name}")

    def run(self, run, **kwargs) -> dict:
        return self._impl().run(run, **kwargs)

    def summary(self, metrics: dict) -> str:
        return self._impl().summary(metrics)


STAGES: tuple[Stage, ...] = (
    Stage("teacher", ("seed", "data", "teacher"), trains=True,
          metrics=("accuracy", "val_accuracy", "params", "flops", "accuracy_without", "baselines"),
          help="Fit the multimodal teacher (or adopt recipe.teacher.checkpoint) and evaluate it."),
    Stage("search", ("student", "search"), trains=True,  # rank 0 searches, the others wait (docs/search.md)
          metrics=("choice", "student", "val_accuracy", "params", "size_kb", "latency", "trials", "seconds"),
          help="student.name: auto -- search students and their distillation settings with Optuna for the most "
               "accurate on validation that meets student.budget (skipped for a named student)."),
    Stage("distill", ("student", "distill"), trains=True,
          metrics=("accuracy", "val_accuracy", "params", "flops", "baseline_accuracy", "baseline_val_accuracy",
                   "kd_gain", "accuracy_without"),
          help="Distill the teacher into the student (and train the no-KD baseline)."),
    Stage("prune", ("prune",), trains=True,
          metrics=("flops_before", "flops", "params_before", "params", "accuracy_before", "accuracy_pruned",
                   "accuracy", "val_accuracy_before", "val_accuracy_pruned", "val_accuracy"),
          help="Prune the distilled student's channels with ModelOpt FastNAS under a FLOPs or parameter bound, or "
               "pick the most accurate pruned candidate that meets a measured latency budget (prune.constraint), "
               "then recover it by distillation (skipped unless prune.enabled)."),
    Stage("qat", ("qat",), trains=True,
          metrics=("fp32_accuracy", "ptq_accuracy", "accuracy", "val_accuracy", "fp32_val_accuracy", "budget"),
          help="Quantize the distilled student to INT8 with ModelOpt: fold BatchNorm, calibrate (PTQ), then "
               "quantization-aware distillation (QAD) or plain QAT; prints the accuracy budget."),
    Stage("export", ("export",), trains=False,
          metrics=("opset",),  # plus one {max_abs_diff, top1_agreement, accuracy, ...} per exported model
          help="Export ONNX models (student FP32, INT8 QDQ for TensorRT, INT8 for the CPU, teacher FP32), run the "
               "parity ladder and the offline TensorRT lint, and write the device bundle (runs/<name>/bundle)."),
    Stage("build", ("build",), trains=False, metrics=("target",),
          help="Build a TensorRT engine for a target; without TensorRT or a GPU, lint and write build/trtexec.sh "
               "(skipped)."),
    Stage("bench", ("bench",), trains=False, metrics=("bench_json", "results"),
          help="Measure latency and accuracy of every model on every backend (the recipe's bench section)."),
)
NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
_BY_NAME = {s.name: s for s in STAGES}


def get(name: str) -> Stage:
    from edgekd.errors import UsageError
    from edgekd.schema import suggest

    if name not in _BY_NAME:
        raise UsageError(f"unknown stage {name!r}{suggest(name, NAMES)}: choose one of {', '.join(NAMES)}")
    return _BY_NAME[name]


def after(name: str) -> tuple[str, ...]:
    """The stages that run after `name` (they become stale when it re-runs)."""
    return NAMES[NAMES.index(name) + 1:] if name in NAMES else ()


def _content(dump: dict) -> dict:
    """A recipe dump without the data fields that change only speed (decode workers, shard size)."""
    from edgekd.recipe_data import MACHINE_ONLY

    if not isinstance(dump.get("data"), dict):
        return dump
    return {**dump, "data": {k: v for k, v in dump["data"].items() if k not in MACHINE_ONLY}}


def first_changed(old: dict | None, new: dict) -> str | None:
    """The earliest stage whose recipe sections differ between two recipe dumps (None: none's)."""
    if old is None:
        return NAMES[0]
    old, new = _content(old), _content(new)
    for stage in STAGES:
        if any(old.get(k) != new.get(k) for k in stage.sections):
            return stage.name
    return None
