"""`edgekd serve` and `edgekd triton`: the commands that put a bundle behind a network endpoint.
Device side: the core install plus the [serve] extra; no torch, no run directory."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgekd.errors import UsageError

TOKEN_ENV = "EDGEKD_SERVE_TOKEN"


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
                        token=os.environ.get(token_env) or None, debug=debug or os.environ.get("EDGEKD_DEBUG") == "1")
    typer.echo(f"edgekd serve: loading {bundle}; http://{host}:{port} once warmed "
               f"(bearer token {'required' if settings.token else 'off'})", err=True)
    run_server(bundle, settings, host=host, port=port)


def register(app: typer.Typer) -> None:
    app.command()(serve)
