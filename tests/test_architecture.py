"""The structure, enforced: import-linter's layer and device-side contracts (pyproject.toml), no
import cycles, small modules, one stage registry, ruff clean, and the device flows with every
training-only package made unimportable."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BLOCK_TRAINING, ROOT

from edgekd import stages

PACKAGE = ROOT / "edgekd"
MAX_LINES = 400


def test_import_contracts_hold():
    """cli -> pipeline -> stages -> (distill, quant, exporting, trt, benchmark) -> (models, data) ->
    (runtime, files, errors); the device side imports no training code; stages are independent."""
    proc = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports())"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_the_stage_contract_names_every_registered_stage():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    independent = next(c for c in config if c["type"] == "independence")
    assert independent["modules"] == [f"edgekd.stages.{s.name}" for s in stages.STAGES]


def test_no_import_cycles():
    import grimp

    graph = grimp.build_graph("edgekd")
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10000)
    for m in modules:
        if m not in index:
            visit(m)
    assert not cycles, cycles


def test_modules_stay_small():
    big = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not big, f"split these by concern (limit {MAX_LINES} lines): {big}"


def test_every_stage_module_has_the_stage_shape():
    import importlib

    for stage in stages.STAGES:
        module = importlib.import_module(f"edgekd.stages.{stage.name}")
        assert callable(module.run) and callable(module.summary), stage.name
        assert stage.sections and stage.metrics and stage.help


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (the [test] extra has it)")
    proc = subprocess.run([ruff, "check", "edgekd", "tests", "bench", "tools"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_device_flows_run_with_no_training_package(tmp_path):
    """predict, bench, gate, doctor and build on a bundle, with torch, transformers, modelopt,
    matplotlib and safetensors unimportable (CI also runs them from a real core-only install)."""
    from test_bundle import make_bundle, write_png, write_wav

    bundle, _, _ = make_bundle(tmp_path)
    png, wav = write_png(tmp_path / "x.png"), write_wav(tmp_path / "y.wav")
    budget = tmp_path / "budget.yaml"
    budget.write_text("budgets:\n  - {name: fp32 latency, model: student_fp32, backend: onnxruntime-cpu, batch: 1, "
                      "metric: p50_ms, max: 1000}\n")
    script = BLOCK_TRAINING + f"""
import json
from edgekd.cli import main
def call(*args):
    try:
        main(list(args))
    except SystemExit as e:
        if e.code:
            raise
call("predict", {str(bundle)!r}, "--image", {str(png)!r}, "--audio", {str(wav)!r}, "--json")
call("bench", {str(bundle)!r}, "--batch", "1", "--min-seconds", "0.05", "--max-seconds", "0.2",
     "--out", {str(tmp_path / "bench")!r})
call("gate", {str(tmp_path / "bench" / "bench.json")!r}, "--budget", {str(budget)!r})
call("doctor", {str(bundle)!r})
call("build", {str(bundle)!r}, "--target", "jetson-orin-nano", "--model", "student_fp32")
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("edgekd.", "torch", "matplotlib")))))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    for forbidden in ("edgekd.rundir", "edgekd.recipe", "edgekd.models", "edgekd.stages.teacher", "edgekd.pipeline"):
        assert forbidden not in loaded, forbidden
    assert (tmp_path / "bench" / "bench.json").is_file() and list(tmp_path.rglob("trtexec.sh"))


def test_opening_a_run_directory_imports_no_training_package(tmp_path):
    """Measured on main: loading a recipe imported torch (recipe.py -> models.check_names)."""
    from edgekd.recipe import recipe_from_dict
    from edgekd.rundir import RunDir

    RunDir.create(tmp_path / "run", recipe_from_dict({"name": "r", "data": {"name": "avdigits"}}))
    script = BLOCK_TRAINING + (f"from edgekd.rundir import RunDir; from edgekd.doctor import check\n"
                               f"run = RunDir.open({str(tmp_path / 'run')!r}); assert run.recipe.name == 'r'\n"
                               f"assert check(run.path).ok\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
