"""Distillation throughput: one epoch with the teacher-output cache vs. with the live teacher.

    pytest bench -q --benchmark-json=runs/bench-distill.json
    pytest-benchmark compare runs/bench-distill.json <older>.json   # regression check

Uses recipes/avdigits.yaml's teacher and student architectures on the real data (weights are
freshly initialised: speed does not depend on them). Samples/s goes into extra_info.
"""
import os
from pathlib import Path

import pytest
import torch

from edgekd.data import load_dataset
from edgekd.distill.cache import TeacherTargets
from edgekd.distill.losses import Projectors
from edgekd.distill.student_setup import build_student
from edgekd.distill.trainer import Job, train
from edgekd.recipe import load_recipe
from edgekd.stages.teacher import build_teacher, plan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    if not os.environ.get("EDGEKD_DATA"):
        pytest.skip("EDGEKD_DATA is not set")
    recipe = load_recipe(ROOT / "recipes" / "avdigits.yaml", ["distill.epochs=1"])
    torch.set_num_threads(1)
    data = load_dataset(recipe)
    teacher = build_teacher(recipe, data, plan(recipe, data))[0].eval()
    cache = TeacherTargets(teacher, list(data.modalities), data, tmp_path_factory.mktemp("cache"))
    cache.prepare(1)
    return recipe, data, teacher, cache, tmp_path_factory.mktemp("ck")


@pytest.mark.parametrize("mode", ["cache", "live"])
def test_distill_epoch(benchmark, setup, mode):
    recipe, data, teacher, cache, ck = setup
    names = list(data.modalities)
    targets = cache if mode == "cache" else TeacherTargets(teacher, names, data, None)

    def one_epoch():
        s = build_student(recipe, data, names)[0]
        d = recipe.distill
        job = Job(s, names, d, 0, ck / f"{mode}.pt", mode, targets=targets,
                  projectors=Projectors(s.embed_dim, teacher.embed_dim, {}),
                  loss={"alpha": d.alpha, "temperature": d.temperature, "beta": d.beta, "beta_modality": 0.0})
        train(job, data)

    benchmark.pedantic(one_epoch, rounds=3, iterations=1, warmup_rounds=1)
    n = len(data.split("train"))
    benchmark.extra_info.update({"mode": mode, "samples": n, "samples_per_s": round(n / benchmark.stats["median"], 1),
                                 "device": "cpu", "threads": 1})
