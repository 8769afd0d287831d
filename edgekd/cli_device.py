"""`edgekd gate`, `edgekd profile`, `edgekd serve` and `edgekd triton`: the commands that judge and
profile a bundle and put it behind a network endpoint. Device side: the core install (plus the [serve] extra for
serve); no torch, no run directory."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgekd.errors import UsageError

TOKEN_ENV = "EDGEKD_SERVE_TOKEN"


def gate(bench_json: Annotated[Path, typer.Argument(help="A bench.json written by `edgekd bench`.")],
         budget: Annotated[Path, typer.Option("--budget", help="Budget YAML (see bench/budgets/).")],
         baseline: Annotated[Optional[Path], typer.Option("--baseline", help="An older bench.json for regression budgets.")] = None):
    """Check a bench against latency/accuracy budgets with confidence bounds: exit 0 pass, 1 fail, 3 inconclusive (re-run)."""
    from edgekd.benchmark.gate import gate as evaluate

    code, lines = evaluate(bench_json, budget, baseline)
    for line in lines:
        typer.echo(line)
    if code:
        raise typer.Exit(code)


def _serving_defaults(target: str | None):
    from edgekd.trt.targets import Serving, load_target

    return load_target(target).serve if target else Serving()


def serve(bundle: Annotated[Path, typer.Argument(help="A bundle directory (runs/<name>/bundle).")],
          host: Annotated[str, typer.Option("--host", help="Address to bind (0.0.0.0: every interface).")] = "127.0.0.1",
          port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8000,
          model: Annotated[Optional[str], typer.Option("--model", help="Model key (default: the bundle's default for --backend, as the bench picked it).")] = None,
          backend: Annotated[str, typer.Option("--backend", help="onnxruntime or tensorrt.")] = "onnxruntime",
          threads: Annotated[int, typer.Option("--threads", min=1, help="Intra-op threads of the model.")] = 1,
          target: Annotated[Optional[str], typer.Option("--target", help="Take the batching defaults from this target's `serve` section (export/targets/).")] = None,
          max_batch: Annotated[Optional[int], typer.Option("--max-batch", min=1, help="Most requests per model call (1: batching off; default: target, else 16).")] = None,
          max_delay_ms: Annotated[Optional[float], typer.Option("--max-delay-ms", min=0, max=1000, help="Longest a request waits for its batch to fill (default: target, else 2).")] = None,
          queue: Annotated[Optional[int], typer.Option("--queue", min=1, help="Requests waiting at most; beyond: 503 + Retry-After (default: target, else 256).")] = None,
          max_body_mib: Annotated[float, typer.Option("--max-body-mib", min=0.001, help="Largest request body accepted.")] = 16.0,
          read_timeout: Annotated[float, typer.Option("--read-timeout", min=0.1, help="Seconds a client has to send its body.")] = 10.0,
          token_env: Annotated[str, typer.Option("--token-env", help="Environment variable holding a bearer token; when set, /v1/* and /metrics require it.")] = TOKEN_ENV,
          drift_window: Annotated[int, typer.Option("--drift-window", min=10, help="Recent samples the drift PSI is computed over.")] = 1000,
          drift_min_samples: Annotated[int, typer.Option("--drift-min-samples", min=10, help="Samples before a drift PSI is reported.")] = 300,
          debug: Annotated[bool, typer.Option("--debug", help="Log every request and full tracebacks.")] = False):
    """Serve a bundle over HTTP: /v1/predict (dynamic batching), /v1/model, /healthz, /readyz, /metrics (Prometheus)."""
    try:
        from edgekd.serve.app import Settings
        from edgekd.serve.app import serve as run_server
    except ImportError as e:
        raise UsageError(f"`edgekd serve` needs the serve extra ({e.name} is missing): pip install 'edgekd[serve]'") \
            from None
    d = _serving_defaults(target)
    settings = Settings(model=model, backend=backend, threads=threads,
                        max_batch=max_batch or d.max_batch, queue=queue or d.queue,
                        max_delay_ms=d.max_delay_ms if max_delay_ms is None else max_delay_ms,
                        max_body_bytes=int(max_body_mib * 2**20), read_timeout_s=read_timeout,
                        token=serve_token(token_env), drift_window=drift_window,
                        drift_min_samples=min(drift_min_samples, drift_window), debug=debug or os.environ.get("EDGEKD_DEBUG") == "1")
    run_server(bundle, settings, host=host, port=port)


def serve_token(env: str) -> str | None:
    """The bearer token in `env`, without the trailing newline `$(cat file)` or an editor leaves;
    a variable that is set but blank is refused (it would make every request a 401)."""
    raw = os.environ.get(env)
    if raw is None or raw == "":
        return None
    if not raw.strip():
        raise UsageError(f"{env} is set but holds only whitespace: put the token in it, or unset it to serve "
                         "without one")
    return raw.strip()


def triton(bundle: Annotated[Path, typer.Argument(help="A bundle directory (runs/<name>/bundle).")],
           out: Annotated[Path, typer.Argument(help="The Triton model repository to write (a new or earlier `edgekd triton` folder).")],
           models: Annotated[Optional[str], typer.Option("--models", help="Comma list of model keys (default: every model).")] = None,
           target: Annotated[str, typer.Option("--target", help="Batch profile and batching delay from this target (export/targets/).")] = "x86-gpu",
           max_batch_size: Annotated[Optional[int], typer.Option("--max-batch-size", min=0, help="max_batch_size of every model (default: the target's batch.max).")] = None,
           max_queue_delay_us: Annotated[Optional[int], typer.Option("--max-queue-delay-us", min=0, help="dynamic_batching delay (default: the target's serve.max_delay_ms).")] = None,
           force: Annotated[bool, typer.Option("--force", help="Replace a non-empty OUT that is not an earlier edgekd Triton repository.")] = False,
           as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False):
    """Write an NVIDIA Triton model repository from a bundle: one model per ONNX model and engine, config.pbtxt from the graphs."""
    import json

    from edgekd.runtime.triton import write_repository
    from edgekd.trt.targets import load_target

    tgt = load_target(target)
    delay = max_queue_delay_us if max_queue_delay_us is not None else int(round(tgt.serve.max_delay_ms * 1000))
    summary = write_repository(bundle, out, models=[m for m in (models or "").split(",") if m] or None, target=tgt,
                               max_batch_size=max_batch_size, max_queue_delay_us=delay, force=force)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    for key, m in summary["models"].items():
        typer.echo(f"{key:<22} {m['platform']:<16} {m['kind']:<9} max_batch_size {m['max_batch_size']}")
    for note in summary.get("notes", []):
        typer.echo(f"note: {note}")
    typer.echo(f"repository: {summary['out']}\nrun it: docker run --rm -p8000:8000 -p8001:8001 -p8002:8002 "
               f"-v {Path(summary['out']).resolve()}:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 "
               "tritonserver --model-repository=/models")


def profile(bundle: Annotated[Path, typer.Argument(help="A bundle directory (runs/<name>/bundle).")],
            model: Annotated[Optional[str], typer.Option("--model", help="Model key (default: the bundle's).")] = None,
            batch: Annotated[int, typer.Option("--batch", min=1, help="Batch size of the profiled call.")] = 1,
            threads: Annotated[int, typer.Option("--threads", min=1, help="Intra-op threads.")] = 1,
            runs: Annotated[int, typer.Option("--runs", min=10, help="Profiled calls (after 20 untimed).")] = 200,
            out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: beside the bundle, "
                                                        "profile/<model>-b<batch>).")] = None):
    """Per-node and per-op-type time of a bundle's ONNX model from onnxruntime's profiler: profile.md + profile.json."""
    from edgekd.benchmark.profile import profile_bundle

    result, folder = profile_bundle(bundle, model, batch, runs=runs, threads=threads, out=out)
    top = ", ".join(f"{o['op']} {o['share']:.0%}" for o in result["op"][:4])
    typer.echo(f"profile: {result['model']} batch {batch}: {result['unprofiled_us']:.1f} µs per call unprofiled; "
               f"kernels {top}; table in {folder / 'profile.md'}")


def register(app: typer.Typer) -> None:
    app.command()(gate)
    app.command()(profile)
    app.command()(serve)
    app.command()(triton)
