"""`edgekd report`: the answer first, the recipe last with only what differs from the defaults, prose in
80 columns, and report.html as one self-contained page (rendered in headless Chromium where it exists)."""
import json
import re
import shutil
import subprocess

import pytest
from conftest import cli
from test_benchmark import recorded_run

from edgekd.report import render_report


def _run(tmp_path):
    run = recorded_run(tmp_path)
    bench_json = run.path / "bench" / "20250101-000000" / "bench.json"
    bench = json.loads(bench_json.read_text())
    bench["defaults"] = {"onnxruntime-cpu": {"model": "student_int8_cpu", "why": "the fastest student"}}  # the pick
    bench_json.write_text(json.dumps(bench))
    return run


def test_the_report_opens_with_the_answer_and_ends_with_the_recipe_that_differs(tmp_path):
    run = _run(tmp_path)
    text = render_report(run.path).read_text()
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Summary" and headings[-1] == "## Recipe"
    summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    for needle in ("**Ships `student_int8_cpu` on onnxruntime-cpu**", "teacher 90.9%", "**Faster than the teacher**",
                   "at batch 1 (95% CI", "**Size**", "**INT8 against its FP32 model**"):
        assert needle in summary, needle
    recipe = text.split("## Recipe", 1)[1]
    assert "| data | name=avdigits |" in recipe and "epochs=" not in recipe  # defaults are not repeated
    assert "[recipe.yaml](../recipe.yaml)" in recipe


def test_prose_fits_80_columns_up_to_the_tables(tmp_path):
    text = render_report(_run(tmp_path).path).read_text()
    long = [line for line in text.splitlines() if len(line) > 80 and not line.startswith(("|", "![", "#"))]
    assert not long, long


def test_the_gate_verdict_joins_the_summary(tmp_path, capsys):
    run = _run(tmp_path)
    budget = tmp_path / "budget.yaml"
    budget.write_text("budgets:\n  - {name: p50, model: student_int8_cpu, backend: onnxruntime-cpu, batch: 1, "
                      "metric: p50_ms, max: 1000}\n")
    code, out, err = cli(capsys, "report", run.path, "--budget", budget)
    assert code == 0, err and "report.html" in out
    text = re.sub(r"\s+", " ", (run.path / "report" / "report.md").read_text())  # as wrapped at 80 columns
    assert "- **Gate** (`" in text and "budget.yaml`): **passed**" in text


def test_report_html_is_one_self_contained_page(tmp_path):
    pytest.importorskip("matplotlib")
    run = _run(tmp_path)
    render_report(run.path)
    page = (run.path / "report" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    summary = page.split('<div id="summary">', 1)[1].split("</div>", 1)[0]
    assert "<h2>Summary</h2>" in summary and "Ships" in summary and "Faster than the teacher" in summary
    assert "<script" not in page.lower()
    sources = re.findall(r'src="([^"]+)"', page)
    assert sources and all(src.startswith("data:image/png;base64,") for src in sources)  # plots inlined
    assert "<table>" in page and "<h2>Recipe</h2>" in page


def test_report_html_renders_in_headless_chromium_without_console_errors(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    run = _run(tmp_path)
    render_report(run.path)
    page = (run.path / "report" / "report.html").resolve().as_uri()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--enable-logging=stderr", "--v=0", "--window-size=1280,800"]
    shot = tmp_path / "report.png"
    done = subprocess.run([*flags, f"--screenshot={shot}", page], capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert 'id="summary"' in dom and "Ships" in dom
