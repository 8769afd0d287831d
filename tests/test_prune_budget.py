"""Latency-budgeted pruning: the choice on fake runners with known latencies, bad budgets, the
channel divisor's source, a killed search resumed, and the stage end to end on the tiny recipe."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, cli

from edgekd.benchmark import budget as lat
from edgekd.errors import RecipeError, UsageError
from edgekd.recipe import LatencyBudget, PruneConfig, recipe_from_dict
from edgekd.stages.prune_budget import divisor

TINY = ROOT / "recipes" / "tiny.yaml"
QUICK = ["--set", "student.name=fusion_base", "--set", "prune.enabled=true", "--set", "prune.epochs=1",
         "--set", "prune.candidate_epochs=1", "--set", "prune.candidates=[50%,1%]", "--set", "bench.min_seconds=0.3",
         "--set", "bench.max_seconds=2", "--set", "qat.compare=false", "--set", "export.qdq_tolerance=0.06"]


# --------------------------------------------------------------------------- the choice, on fake runners


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeRunner:
    """A model whose every call takes `ms` (+-2% seeded jitter) on the fake clock."""

    def __init__(self, clock: FakeClock, ms: float, seed: int):
        self.clock, self.ms, self.rng = clock, ms, np.random.default_rng(seed)
        self.input_names, self.output_names = ["x"], ["logits"]

    def run(self, feeds):
        self.clock.t += self.ms / 1000 * (1 + 0.02 * self.rng.uniform(-1, 1))
        return {"logits": np.zeros((1, 2), np.float32)}


def timed(latencies: dict[str, float], accuracy: dict[str, float], budget, broken=()) -> list:
    """Candidates named by FLOPs ratio, measured through lat.measure and the real harness on fake runners."""
    clock = FakeClock()
    cands = [lat.Candidate(name, flops=int(name[:-1]) * 1000, params=1, val_accuracy=accuracy[name],
                           onnx=Path(f"{name[:-1]}.onnx")) for name in latencies]

    def open_runner(path, backend, threads):
        name = f"{Path(path).stem}%"
        if name in broken:
            raise RuntimeError("this model does not load")
        return FakeRunner(clock, latencies[name], seed=int(name[:-1]))

    lat.measure(cands, budget, {"x": np.zeros((1, 1), np.float32)}, 1, open_runner=open_runner, clock=clock,
                min_seconds=0.2, max_seconds=2.0, warmup_seconds=0.01)
    return cands


LATENCY = {"100%": 0.30, "70%": 0.20, "50%": 0.12, "30%": 0.08}
ACCURACY = {"100%": 0.95, "70%": 0.94, "50%": 0.93, "30%": 0.90}


@pytest.mark.parametrize("budget_ms, chosen", [(0.5, "100%"), (0.25, "70%"), (0.15, "50%"), (0.1, "30%")])
def test_the_most_accurate_candidate_within_the_budget_is_chosen(budget_ms, chosen):
    budget = LatencyBudget(latency_ms=budget_ms)
    cands = timed(LATENCY, ACCURACY, budget)
    for c in cands:  # the harness measured each fake model at its known latency, with bounds around it
        assert c.latency["lo"] <= LATENCY[c.name] * 1.03 and c.latency["hi"] >= LATENCY[c.name] * 0.97
    best, why = lat.choose(cands, budget)
    assert best.name == chosen and f"{chosen} FLOPs" in why and "validation" in why
    assert lat.pareto(cands) == ["30%", "50%", "70%", "100%"]
    assert any("**chosen**" in line and line.startswith(f"| {chosen}") for line in lat.table(cands, budget, best))


def test_none_meets_the_budget_says_so_with_the_fastest_candidates_figure():
    budget = LatencyBudget(latency_ms=0.05)
    best, why = lat.choose(timed(LATENCY, ACCURACY, budget), budget)
    assert best is None and "no candidate meets p50 <= 0.05 ms" in why and "the fastest, 30% FLOPs" in why
    assert "0.08" in why


def test_the_upper_bound_not_the_point_decides_and_ties_go_to_fewer_flops():
    # 0.12 ms +-2% never has an upper bound under 0.119 ms; equal accuracies: the smaller model wins
    budget = LatencyBudget(latency_ms=0.119)
    best, _ = lat.choose(timed(LATENCY, ACCURACY, budget), budget)
    assert best.name == "30%"
    budget = LatencyBudget(latency_ms=0.25)
    best, _ = lat.choose(timed(LATENCY, {**ACCURACY, "100%": 0.94, "70%": 0.94}, budget), budget)
    assert best.name == "70%"


def test_a_candidate_that_fails_to_load_is_reported_and_never_chosen():
    budget = LatencyBudget(latency_ms=1.0)
    cands = timed(LATENCY, ACCURACY, budget, broken=("100%",))
    best, _ = lat.choose(cands, budget)
    assert best.name == "70%" and "does not load" in cands[0].latency["skipped"]
    assert "not measured" in "\n".join(lat.table(cands, budget, best))


# --------------------------------------------------------------------------- bad budgets


@pytest.mark.parametrize("constraint, why", [
    ({"latency_ms": 0}, "greater than 0"),
    ({"latency_ms": -1}, "greater than 0"),
    ({"latency_ms": 1, "backend": "onnxruntime-gpu"}, "unknown backend 'onnxruntime-gpu'"),
    ({"latency_ms": 1, "backend": "tensorrt"}, "use onnxruntime-trt"),
    ({"latency_ms": 1, "batch": 0}, "greater than or equal to 1"),
    ({"latency_ms": 1, "metric": "p95_ms"}, "metric"),
])
def test_bad_latency_budgets_are_one_line_recipe_errors(constraint, why):
    with pytest.raises(RecipeError) as e:
        recipe_from_dict({"name": "x", "data": {"name": "avdigits"}, "prune": {"enabled": True, "constraint": constraint}})
    assert why in str(e.value) and "\n" not in str(e.value).strip()


def test_a_budget_and_a_flops_bound_together_and_bad_candidates_are_refused():
    for prune, why in (({"flops": "50%", "constraint": {"latency_ms": 1}}, "exactly one"),
                       ({"constraint": {"latency_ms": 1}, "candidates": ["0%"]}, "prune.candidates")):
        with pytest.raises(RecipeError, match=why):
            recipe_from_dict({"name": "x", "data": {"name": "avdigits"}, "prune": {"enabled": True, **prune}})


def test_a_budget_below_the_backends_empty_call_time_is_refused():
    with pytest.raises(UsageError) as e:
        lat.check_budget(LatencyBudget(latency_ms=1e-6), threads=1)
    assert "empty-call time" in str(e.value) and "raise the budget" in str(e.value)
    assert 0 < lat.check_budget(LatencyBudget(latency_ms=50), threads=1) < 50


def test_a_backend_this_onnxruntime_lacks_is_refused_before_any_work():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(UsageError, match="CUDAExecutionProvider"):
        lat.check_budget(LatencyBudget(latency_ms=1, backend="onnxruntime-cuda"), threads=1)


def test_the_channel_divisor_comes_from_the_recipe_the_cpu_or_the_build_target(tmp_path, monkeypatch):
    budget = {"latency_ms": 1}
    assert divisor(PruneConfig(channel_divisor=4), "onnxruntime-cpu", "x86-gpu")[0] == 4
    from edgekd.benchmark.sysinfo import cpu_channel_block

    assert divisor(PruneConfig(constraint=budget), "onnxruntime-cpu", "x86-gpu")[0] == cpu_channel_block() in (8, 16)
    assert divisor(PruneConfig(), None, "x86-gpu") == (16, "target x86-gpu")
    target = (ROOT / "export" / "targets" / "x86-gpu.yaml").read_text().replace("x86-gpu", "wide")
    (tmp_path / "wide.yaml").write_text(target.replace("channel_divisor: 16", "channel_divisor: 32"))
    monkeypatch.setenv("EDGEKD_TARGETS", str(tmp_path))
    assert divisor(PruneConfig(constraint={**budget, "backend": "onnxruntime-trt"}), "onnxruntime-trt",
                       "wide") == (32, "target wide")


# --------------------------------------------------------------------------- the stage, on real data


def _run(args) -> None:
    from edgekd.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        assert not e.code


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    if not os.environ.get("EDGEKD_DATA"):
        pytest.skip("EDGEKD_DATA is not set (CI sets it to ../shared/data)")
    run_dir = tmp_path_factory.mktemp("budget") / "tiny"
    _run(["run", TINY, "--run-dir", run_dir, "-q", "--set", "student.name=fusion_base", "--until", "distill"])
    return run_dir


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / ".lock").unlink(missing_ok=True)
    return dst


def test_a_latency_budget_picks_a_measured_candidate_that_meets_it_and_exports(distilled, tmp_path):
    run_dir = _copy(distilled, tmp_path / "run")
    _run(["run", TINY, "--run-dir", run_dir, "-q", "--force", *QUICK, "--set", "prune.constraint.latency_ms=500",
          "--until", "export"])
    m = json.loads((run_dir / "manifest.json").read_text())["stages"]
    p, table = m["prune"]["metrics"], json.loads((run_dir / "prune" / "candidates.json").read_text())
    assert p["budget_met"] and p["latency"]["hi"] <= 500 and p["constraint"]["backend"] == "onnxruntime-cpu"
    names = [c["name"] for c in table["candidates"]]
    assert names[0] == "100%" and set(names) <= {"100%", "50%"} and table["unreachable"] == ["1%"]
    best = max(table["candidates"], key=lambda c: (c["val_accuracy"], -c["flops"]))
    assert p["chosen"] == table["chosen"] == best["name"]  # a generous budget: the most accurate one
    assert all(c["value"] > table["empty_call_ms"] for c in table["candidates"])
    assert (run_dir / "prune" / "candidates.md").is_file() and m["export"]["status"] == "done"
    _run(["report", run_dir])
    report = (run_dir / "report" / "report.md").read_text()
    assert "### Latency budget" in report and "## Pruning" in report


def test_none_meeting_the_budget_fails_with_the_fastest_figure_and_keeps_the_table(distilled, tmp_path, capsys):
    run_dir = _copy(distilled, tmp_path / "run")
    floor = lat.empty_call_ms("onnxruntime-cpu", 1, 1)
    code, _, err = cli(capsys, "run", TINY, "--run-dir", run_dir, "-q", "--force", *QUICK, "--set",
                       f"prune.constraint.latency_ms={floor * 2:.4f}", "--until", "prune")
    assert code != 0 and "no candidate meets" in err and "the fastest" in err and err.strip().count("\n") == 0
    table = json.loads((run_dir / "prune" / "candidates.json").read_text())
    assert table["chosen"] is None and len(table["candidates"]) >= 2


def test_a_search_killed_midway_resumes_from_its_checkpoint(distilled, tmp_path, monkeypatch):
    """The kill lands inside ModelOpt's sensitivity profiling; --resume then scores only the layers
    not yet profiled and ends on the same architecture as an uninterrupted search."""
    import edgekd.quant.prune as qp
    from edgekd.rundir import RunDir
    from edgekd.stages import prune as stage

    run_dir = _copy(distilled, tmp_path / "run")
    _run(["run", TINY, "--run-dir", run_dir, "-q", "--force", "--set", "student.name=fusion_base", "--set",
          "prune.enabled=true", "--set", "prune.flops=60%", "--set", "prune.epochs=1", "--until", "distill"])
    original, calls, kill_after = qp.prune_to, [], [None]

    class Killed(Exception):
        pass

    def counting(wrapped, bound, divisor, loader, score, dummy, checkpoint):
        def counted(m):
            calls.append(1)
            if kill_after[0] is not None and len(calls) > kill_after[0]:
                raise Killed
            return score(m)
        return original(wrapped, bound, divisor, loader, counted, dummy, checkpoint)

    monkeypatch.setattr(qp, "prune_to", counting)
    kill_after[0] = 6
    with pytest.raises(Killed):
        stage.run(RunDir.open(run_dir))
    assert (run_dir / "prune" / "search.pth").is_file()
    kill_after[0], calls[:] = None, []
    resumed = stage.run(RunDir.open(run_dir), resume=True)
    n_resumed = len(calls)
    calls[:] = []
    fresh = stage.run(RunDir.open(run_dir))  # without --resume the search starts over
    assert n_resumed < len(calls) - 3
    assert resumed["flops"] == fresh["flops"] and resumed["params"] == fresh["params"]


def test_a_candidate_exports_as_it_would_deploy_on_each_backend(distilled, tmp_path):
    """CPU INT8: onnxruntime's own integer model; a GPU backend: ModelOpt's Q/DQ model; fp32: the float export."""
    import onnx

    from edgekd.data import load_dataset
    from edgekd.exporting.deployed import deployed_onnx as export_candidate
    from edgekd.rundir import RunDir
    from edgekd.stages.common import distilled_student, example_batch, student_data

    run = RunDir.open(distilled)
    model, _ = distilled_student(run)
    names = list(model.names)
    data = student_data(run, load_dataset(run.recipe, None))
    train = data.split("train", 0)
    calib = [{n: train.inputs[n][:16] for n in names}]
    ops = {}
    for backend, precision in (("onnxruntime-cpu", "int8"), ("onnxruntime-trt", "int8"), ("onnxruntime-cpu", "fp32")):
        budget = LatencyBudget(latency_ms=1, backend=backend, precision=precision)
        path = export_candidate(model, names, example_batch(data, names), budget, calib, run.recipe.qat, "minmax",
                                tmp_path / f"{backend}-{precision}.onnx")
        graph = onnx.load(str(path)).graph
        ops[backend, precision] = ({n.op_type for n in graph.node},
                                   {i.data_type for i in graph.initializer} & {onnx.TensorProto.INT8, onnx.TensorProto.UINT8})
    cpu, trt, fp32 = ops["onnxruntime-cpu", "int8"], ops["onnxruntime-trt", "int8"], ops["onnxruntime-cpu", "fp32"]
    assert "DequantizeLinear" in cpu[0] and cpu[1]  # onnxruntime's: integer weights stored as such
    assert {"QuantizeLinear", "DequantizeLinear"} <= trt[0]  # ModelOpt's explicit quantization for TensorRT
    assert not any("Quant" in op for op in fp32[0]) and not fp32[1]


def test_a_flops_bound_the_student_cannot_reach_is_a_one_line_error(distilled, tmp_path, capsys):
    run_dir = _copy(distilled, tmp_path / "run")
    code, _, err = cli(capsys, "run", TINY, "--run-dir", run_dir, "-q", "--force", "--set", "student.name=fusion_base",
                       "--set", "prune.enabled=true", "--set", "prune.flops=1%", "--set", "prune.channel_divisor=16",
                       "--until", "prune")
    assert code != 0 and "prune.flops 1%" in err and "prune.channel_divisor" in err and err.strip().count("\n") == 0


def test_when_the_unpruned_student_wins_nothing_is_pruned_and_later_stages_use_it(distilled, tmp_path, monkeypatch):
    original = lat.choose

    def unpruned_wins(cands, budget):
        best, _ = original(cands, budget)
        return cands[0], "100% FLOPs: forced by this test"

    monkeypatch.setattr(lat, "choose", unpruned_wins)
    run_dir = _copy(distilled, tmp_path / "run")
    _run(["run", TINY, "--run-dir", run_dir, "-q", "--force", *QUICK, "--set", "prune.constraint.latency_ms=500",
          "--until", "export"])
    m = json.loads((run_dir / "manifest.json").read_text())["stages"]
    p = m["prune"]["metrics"]
    assert p["chosen"] == "100%" and p["flops"] == p["flops_before"] and "model" not in m["prune"]["outputs"]
    assert m["qat"]["metrics"]["fp32_accuracy"] == m["distill"]["metrics"]["accuracy"]  # the distilled student
    assert "pruned" not in json.loads((run_dir / "bundle" / "manifest.json").read_text())["models"]["student_fp32"]
