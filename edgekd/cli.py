"""The `edgekd` command line. Commands are thin: parse, call the library, print."""
from __future__ import annotations

import json
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgekd import stages
from edgekd.cli_data import register as _register_data
from edgekd.cli_device import register as _register_device
from edgekd.errors import EdgekdError, UsageError

app = typer.Typer(context_settings={"help_option_names": ["-h", "--help"]}, no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False,
                  help="Distill a multimodal teacher into a small fused student and ship it to the edge.")
data_app = typer.Typer(context_settings={"help_option_names": ["-h", "--help"]}, no_args_is_help=True,
                       help="Fetch and describe datasets.")
app.add_typer(data_app, name="data")

Target = Annotated[str, typer.Argument(help="A recipe YAML (starts or reopens runs/<name>) or a run directory.")]
RunDirOpt = Annotated[Optional[Path], typer.Option("--run-dir", help="Run directory (default: runs/<recipe name>).")]
DataRoot = Annotated[Optional[Path], typer.Option("--data-root", help="Dataset root (default: $EDGEKD_DATA, then ~/.cache/edgekd/data).")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe value, e.g. --set distill.epochs=3 (repeatable).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from the stage's last epoch checkpoint.")]
Force = Annotated[bool, typer.Option("--force", help="Re-run finished stages; replace a run directory's differing recipe.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def _progress(quiet: bool):
    from edgekd import distributed
    from edgekd.progress import progress_bar

    return progress_bar(enabled=not quiet and sys.stderr.isatty() and distributed.is_main())


def _single_process(command: str) -> None:
    from edgekd import distributed

    if distributed.world_size() > 1:
        raise UsageError(f"`edgekd {command}` is single-process; run it without torchrun "
                         "(torchrun is for run, teacher, distill and qat)")


def _stage(stage: str, target, run_dir, data_root, sets, resume, force, quiet):
    from edgekd import stages
    from edgekd.pipeline import run_stage, session

    with session(target, run_dir, sets, force=force, echo=typer.echo) as run, _progress(quiet) as bar:
        metrics = run_stage(run, stage, data_root=data_root, resume=resume, progress=bar)
    if metrics is None:  # a torchrun rank other than 0 on a single-process stage
        return
    typer.echo(stages.get(stage).summary(metrics))
    typer.echo(f"run directory: {run.path}")


@app.command()
def run(target: Target, until: Annotated[str, typer.Option("--until", help="Last stage to run (" + " -> ".join(stages.NAMES) + ").")] = stages.NAMES[-1],
        run_dir: RunDirOpt = None, data_root: DataRoot = None, set_: Sets = None, resume: Resume = False,
        force: Force = False, quiet: Quiet = False):
    """Run the pipeline (teacher -> search -> distill -> prune -> qat -> export -> build -> bench) for a recipe; finished stages are kept unless --force."""
    from edgekd.pipeline import check_until, run_pipeline, session

    check_until(until)  # before anything is created on disk
    with session(target, run_dir, set_, force=force, echo=typer.echo) as run_, _progress(quiet) as bar:
        # --force that replaced a changed recipe re-runs what the change made stale, not every stage
        again = force and not run_.replaced_recipe
        run_pipeline(run_, until=until, data_root=data_root, resume=resume, force=again, progress=bar, echo=typer.echo)
    typer.echo(f"run directory: {run_.path} (manifest.json holds every metric)")


def _stage_command(stage):
    """`edgekd NAME TARGET`: one stage of the registry, run on a recipe or a run directory."""
    def command(target: Target, run_dir: RunDirOpt = None, data_root: DataRoot = None, set_: Sets = None,
                resume: Resume = False, force: Force = False, quiet: Quiet = False):
        _stage(stage.name, target, run_dir, data_root, set_, resume, force, quiet)

    command.__doc__ = stage.help
    return command


@app.command()
def qat(target: Target, run_dir: RunDirOpt = None, data_root: DataRoot = None, set_: Sets = None,
        resume: Resume = False, force: Force = False, quiet: Quiet = False,
        list_layers: Annotated[bool, typer.Option("--list-layers", help="Print the distilled student's quantizable "
                                                  "layer names (for recipe qat.exclude) and exit.")] = False):
    """Quantize the distilled student to INT8 with ModelOpt: fold BatchNorm, calibrate (PTQ), then
    quantization-aware distillation (QAD) or plain QAT; prints the accuracy budget."""
    if list_layers:
        from edgekd.pipeline import open_run
        from edgekd.stages.qat import list_layers as layers

        for name in layers(open_run(target, run_dir, set_)):
            typer.echo(name)
        return
    _stage("qat", target, run_dir, data_root, set_, resume, force, quiet)


# stages with a richer command of their own (below); every other registered stage gets the generic one
for _s in stages.STAGES:
    if _s.name not in ("qat", "build", "bench"):
        app.command(_s.name)(_stage_command(_s))


@app.command()
def build(target_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR_OR_BUNDLE", help="A run directory (after export) or a copied bundle directory.")],
          target: Annotated[Optional[str], typer.Option("--target", help="Deployment target: a name under export/targets/ (x86-gpu, jetson-orin-nano, jetson-orin-agx) or a YAML path (default: recipe build.target).")] = None,
          model: Annotated[Optional[str], typer.Option("--model", help="Model to build: student_int8_qdq (default), student_fp32 or teacher_fp32.")] = None,
          require_trt: Annotated[bool, typer.Option("--require-trt", help="Fail instead of skipping where TensorRT or a GPU is missing.")] = False,
          twice: Annotated[bool, typer.Option("--twice", help="Build twice and report whether the engines are identical.")] = False):
    """Build a TensorRT engine for a target; without TensorRT or a GPU, lint and write build/trtexec.sh (skipped)."""
    _single_process("build")
    from edgekd.contract import source_kind

    if source_kind(target_dir) == "bundle":  # on the device: no run directory, no torch
        from edgekd.stages.build import summary
        from edgekd.trt.bundle_build import build_bundle

        metrics = build_bundle(target_dir, target or "x86-gpu", model=model or "student_int8_qdq",
                               require_trt=require_trt, build_twice=twice)
    else:
        from edgekd.pipeline import session
        from edgekd.stages.build import run as run_build
        from edgekd.stages.build import summary

        with session(target_dir, echo=typer.echo) as run_:
            metrics = run_build(run_, target=target, require_trt=require_trt or None, model=model,
                                build_twice=twice or None)
    typer.echo(summary(metrics))


def _csv(value: str | None, kind=str, what: str = "list") -> list | None:
    if value is None:
        return None
    try:
        return [kind(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} {value!r}: expected a comma-separated list, e.g. 1,8,32") from None


@app.command()
def bench(source: Annotated[Path, typer.Argument(metavar="RUN_DIR_OR_BUNDLE", help="A run directory (after export) or a bundle.")],
          batch: Annotated[Optional[str], typer.Option("--batch", help="Batch sizes, e.g. 1,8,32 (default: recipe bench.batches, else 1).")] = None,
          threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="Intra-op threads of every backend (default: recipe bench.threads, else 1).")] = None,
          backends: Annotated[Optional[str], typer.Option("--backends", help="Comma list of onnxruntime-cpu, onnxruntime-cuda, onnxruntime-trt, tensorrt, torch-cpu, torch-cuda (default: every one available).")] = None,
          models: Annotated[Optional[str], typer.Option("--models", help="Comma list of model keys (default: all).")] = None,
          out: Annotated[Optional[Path], typer.Option("--out", help="Output directory (default: RUN_DIR/bench/<time>/, or bench/<time>/ beside a bundle).")] = None,
          min_seconds: Annotated[Optional[float], typer.Option("--min-seconds", help="Minimum measuring time per batch size.")] = None,
          max_seconds: Annotated[Optional[float], typer.Option("--max-seconds", help="Time cap per batch size.")] = None,
          block: Annotated[Optional[int], typer.Option("--block", min=1, help="Timed calls per model per interleaved round, after one untimed call (default: recipe bench.block, else 10; 1 = strict A B C rounds, no re-warm).")] = None,
          baseline: Annotated[Optional[Path], typer.Option("--baseline", help="A baseline bundle (e.g. main's) measured interleaved in the same run, as baseline/<model>, for regression gates.")] = None,
          record: Annotated[bool, typer.Option("--record", help="Record this bench as the run directory's bench stage (default: the pipeline's recorded bench is left alone).")] = False,
          pick_default: Annotated[bool, typer.Option("--pick-default", help="Write this bench's per-backend default models into the bundle (the fastest student within --default-budget of the best).")] = False,
          default_budget: Annotated[Optional[float], typer.Option("--default-budget", min=0, max=1, help="Accuracy (fraction, 0.01 = 1 point) a default may give up against the best student (default: recipe bench.default_budget, else 0.01).")] = None,
          data_root: DataRoot = None):
    """Measure latency (p50/p90/p95/p99 with confidence bounds, interleaved) and accuracy of every model on every backend."""
    _single_process("bench")
    from edgekd.contract import source_kind

    given = {"batches": _csv(batch, int, "--batch"), "threads": threads, "backends": _csv(backends),
             "min_seconds": min_seconds, "max_seconds": max_seconds, "block": block, "default_budget": default_budget}
    kind = source_kind(source)
    if kind == "bundle" and record:
        raise UsageError("--record applies to a run directory; a bundle's bench is written to --out")
    if baseline is not None and source_kind(baseline) == "run":
        baseline = baseline / "bundle"
    say = lambda msg: typer.echo(msg, err=True)  # noqa: E731
    if kind == "bundle":  # the device side: no run directory, no torch
        from edgekd.benchmark.bench import run_bench

        _, files = run_bench(source, models=_csv(models), out=out, progress=say, baseline=baseline,
                             **{k: v for k, v in given.items() if v is not None})
        path = files["json"]
    else:
        from edgekd.pipeline import open_run, session
        from edgekd.stages.bench import bench_run_dir, settings

        with (session(source, echo=typer.echo) if record else nullcontext(open_run(source))) as run_:
            _, path = bench_run_dir(run_, record=record, data_root=data_root, out=out, progress=say,
                                    baseline=baseline, models=_csv(models), **settings(run_, **given))
    md = path.parent / "bench.md"
    typer.echo(md.read_text() if md.is_file() else "")
    typer.echo(f"bench JSON: {path}")
    if pick_default:
        from edgekd.benchmark.defaults import write_defaults

        for line in write_defaults(path, source if kind == "bundle" else source / "bundle"):
            typer.echo(line)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
           budget: Annotated[Optional[Path], typer.Option("--budget", help="A gate budget file: its verdict on the "
                                                          "newest bench goes into the summary.")] = None,
           open_: Annotated[bool, typer.Option("--open", help="Open report.html in a browser where one exists.")] = False):
    """Write runs/<name>/report/report.md and report.html: the answer first (what ships, accuracy, speed-up,
    size, INT8, gate), then the accuracy budget, baselines, latency, search, pruning, curves, parity, recipe."""
    from edgekd.report import render_report

    path = render_report(run_dir, budget)
    typer.echo(f"report: {path} and {path.with_suffix('.html')}")
    if open_:
        import webbrowser

        if not webbrowser.open(path.with_suffix(".html").resolve().as_uri()):
            typer.echo("no browser found here: open report.html by hand (it is one self-contained file)")


@app.command("predict")
def predict_(bundle: Annotated[Path, typer.Argument(help="A bundle directory (runs/<name>/bundle).")],
             image: Annotated[Optional[str], typer.Option("--image", help="png/jpg for the image input.")] = None,
             audio: Annotated[Optional[str], typer.Option("--audio", help="Audio file for the audio input (wav of any PCM or float width, flac, ogg, mp3).")] = None,
             text: Annotated[Optional[str], typer.Option("--text", help="Text for the text input.")] = None,
             vector: Annotated[Optional[str], typer.Option("--vector", help="Numbers for the vector input, e.g. 0.1,2,3.")] = None,
             inputs: Annotated[Optional[list[str]], typer.Option("--input", help="NAME=VALUE for any input by name "
                                                                 "(repeatable), e.g. --input photo=cat.png.")] = None,
             model: Annotated[Optional[str], typer.Option("--model", help="Model key in the bundle (default: its default_model).")] = None,
             threads: Annotated[int, typer.Option("--threads", min=1, help="onnxruntime intra-op threads.")] = 1,
             backend: Annotated[str, typer.Option("--backend", help="onnxruntime or tensorrt (an engine built by `edgekd build`).")] = "onnxruntime",
             as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False):
    """Classify one sample from raw files with a bundle (onnxruntime + numpy; torch is never imported)."""
    from edgekd.runtime.predict import predict, route

    given = route(bundle, {"image": image, "audio": audio, "text": text, "vector": vector}, inputs, model)
    result = predict(bundle, **given, model=model, threads=threads, backend=backend)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    top = sorted(result["probabilities"].items(), key=lambda kv: -kv[1])[:3]
    typer.echo(f"{result['label']}  ({result['model']}; " + ", ".join(f"{k}: {p:.3f}" for k, p in top) + ")")


@app.command("eval")
def eval_(run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
          model: Annotated[str, typer.Option("--model", help="teacher, student or baseline.")] = "student",
          data_root: DataRoot = None, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False):
    """Evaluate a trained model of a run on the test split (accuracy, per class, modality ablations)."""
    from edgekd.evaluation import eval_lines, evaluate_run

    result = evaluate_run(run_dir, model, data_root)
    typer.echo(json.dumps(result, indent=2) if as_json else "\n".join(eval_lines(result)))


@app.command()
def doctor(path: Annotated[Path, typer.Argument(help="A run directory or a bundle directory.")],
           clean: Annotated[bool, typer.Option("--clean", help="Remove temp files left by interrupted writes.")] = False,
           as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False):
    """Check that every file a run directory's (or bundle's) manifest points at is whole, and say what --resume would do. Exit 1 when something recorded is missing or changed."""
    from edgekd.doctor import check
    from edgekd.doctor import clean as remove_temp

    report = check(path)
    if clean and report.temp_files:
        removed = remove_temp(report)
        report = check(path)
        report.notes.append(f"removed {removed} temp file(s)")
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for kind, lines in (("error", report.errors), ("warning", report.warnings), ("info", report.notes)):
            for line in lines:
                typer.echo(f"{kind}: {line}")
        verdict = "whole" if report.ok else "NOT whole"
        typer.echo(f"{report.kind} {path}: {verdict} ({len(report.errors)} errors, {len(report.warnings)} warnings)")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def models():
    """List every registered teacher and student."""
    from edgekd.models import list_models

    for e in list_models():
        typer.echo(f"{e.name:<16} {e.role:<8} {e.description}")


@data_app.command("fetch")
def data_fetch(name: Annotated[str, typer.Argument(help="Dataset to download (avdigits).")] = "avdigits",
               data_root: DataRoot = None,
               mirror: Annotated[Optional[str], typer.Option("--mirror", help="Base URL or folder holding the same files.")] = None):
    """Download a built-in dataset from its public origin, verified against pinned sha256."""
    from edgekd.data.download import fetch_avdigits
    from edgekd.data.root import data_root as resolve

    if name != "avdigits":
        raise UsageError(f"unknown dataset '{name}'; the built-in dataset is 'avdigits'")
    root = resolve(data_root)
    with _progress(quiet=False) as bar:
        tasks: dict[str, int] = {}

        def report(done: int, total: int | None, label: str) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(f"downloading {label}", total=total)
            bar.update(tasks[label], completed=done)

        result = fetch_avdigits(root, mirror=mirror, progress=report)
    for item in result["downloaded"]:
        typer.echo(f"downloaded {item}")
    for item in result["skipped"]:
        typer.echo(f"{item}: already present and verified")
    typer.echo(f"data root: {root}")


@data_app.command("info")
def data_info(target: Annotated[str, typer.Argument(help="'avdigits' or a recipe YAML.")] = "avdigits",
              data_root: DataRoot = None, set_: Sets = None,
              as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False):
    """Describe a dataset: counts per split and class, modalities and shapes."""
    from edgekd.evaluation import dataset_lines, describe_dataset

    info = describe_dataset(target, data_root, set_ or [])
    typer.echo(json.dumps(info, indent=2) if as_json else "\n".join(dataset_lines(info)))


INTERRUPTED = ("edgekd: interrupted; nothing half-written was recorded (training stages keep their finished "
               "epochs: continue with --resume)")


TRAINING_MODULES = {"torch", "transformers", "modelopt", "safetensors", "matplotlib"}


def _join_torchrun() -> None:
    """Under torchrun: join the process group; ranks other than 0 print errors only."""
    from edgekd import distributed

    if distributed.world_size() > 1:
        distributed.setup()
        if not distributed.is_main():
            sys.stdout = open(os.devnull, "w")


_register_device(app)  # gate, serve, triton
_register_data(data_app)  # prepare, verify


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors print one line and exit non-zero (traceback: EDGEKD_DEBUG=1)."""
    debug = os.environ.get("EDGEKD_DEBUG") == "1"
    try:
        _join_torchrun()
        rc = app(args=argv, prog_name="edgekd", standalone_mode=False)
    except EdgekdError as e:
        if debug:
            raise
        typer.echo(f"edgekd: error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo(INTERRUPTED, err=True)
        sys.exit(130)
    except ModuleNotFoundError as e:  # a device install (no [train] extra) running a training command
        if debug or (e.name or "").split(".")[0] not in TRAINING_MODULES:
            raise
        typer.echo(f"edgekd: error: this command needs {e.name}, which a device install leaves out; "
                   "install the training extras: pip install 'edgekd[train]' (torch first, see README)", err=True)
        sys.exit(1)
    except OSError as e:  # an OS error no writer turned into a FileWriteError: still one line
        if debug:
            raise
        from edgekd.files import os_error

        err = os_error(e, e.filename or "a file")
        typer.echo(f"edgekd: error: {err}", err=True)
        sys.exit(err.exit_code)
    except Exception as e:
        # Typer ships its own copy of click's exceptions, so match them by shape, not by class:
        # usage errors (exit 2) can show themselves, Exit carries a code, Abort is Ctrl-C at a prompt.
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            command = getattr(getattr(e, "ctx", None), "command_path", "") or "edgekd"
            typer.echo(f"edgekd: error: {e.format_message()} (see `{command} -h`)", err=True)
            sys.exit(e.exit_code)
        if type(e).__name__ == "Exit":
            sys.exit(getattr(e, "exit_code", 0))
        if type(e).__name__ == "Abort":
            sys.exit(130)
        if debug:  # an edgekd bug, not a user error: still one line unless debugging
            raise
        typer.echo(f"edgekd: internal error: {type(e).__name__}: {e} (set EDGEKD_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)
    from edgekd import distributed

    distributed.teardown()
    # Typer turns Ctrl-C into a returned 130 when not in standalone mode
    if rc == 130:
        typer.echo(INTERRUPTED, err=True)
    if isinstance(rc, int) and rc:
        sys.exit(rc)


if __name__ == "__main__":
    main()
