"""`edgekd serve BUNDLE`: the bundle behind HTTP (Starlette on uvicorn), torch-free.

    POST /v1/predict   multipart (a file part per image/audio input, fields for text and vectors)
                       or JSON {"inputs": {...}} with files as base64 -> label, probabilities, latency
    GET  /v1/model     the served model: inputs, outputs, labels, bundle hash, versions, batching
    GET  /healthz      alive;  GET /readyz  model loaded and warmed (503 before)
    GET  /metrics      Prometheus text format (edgekd.serve.metrics)

Requests are read with a size limit and a read timeout, decoded concurrently in worker threads,
and queued for the dynamic batcher (edgekd.serve.batcher). Anything wrong with a request is a 4xx
JSON {"error": "..."}; the process keeps serving and logs no traceback unless debug is on.
"""
from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import logging
import os
import signal
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgekd import __version__
from edgekd.runtime.bundle import load_bundle
from edgekd.runtime.predict import softmax
from edgekd.runtime.runner import make_runner
from edgekd.serve.batcher import Batcher, QueueFull
from edgekd.serve.decode import Decoder, Limits, RequestError, from_form, from_json
from edgekd.serve.metrics import Metrics

log = logging.getLogger("edgekd.serve")
ROUTES = ("/v1/predict", "/v1/model", "/healthz", "/readyz", "/metrics")
INLINE_BYTES = 64 * 1024  # bodies up to this size may be decoded on the event loop when alone


@dataclass
class Settings:
    model: str | None = None
    backend: str = "onnxruntime"
    threads: int = 1
    max_batch: int = 16
    max_delay_ms: float = 2.0
    queue: int = 256
    max_body_bytes: int = 16 * 2**20
    read_timeout_s: float = 10.0
    token: str | None = None
    limits: Limits = field(default_factory=Limits)
    drift_window: int = 1000
    drift_min_samples: int = 300  # at 100, unshifted windows averaged PSI 0.10 (docs/monitoring.md)
    debug: bool = False


class Service:
    """The loaded model, its decoder, batcher, metrics and drift monitor: everything a request needs."""

    def __init__(self, bundle_dir, settings: Settings):
        self.settings = s = settings
        self.bundle = load_bundle(bundle_dir)
        # TensorRT without --model: the engine search (the bench's pick where it fits this GPU)
        key = s.model if s.backend == "tensorrt" else self.bundle.resolve_key(s.model, s.backend)
        self.runner = make_runner(self.bundle, key, backend=s.backend, threads=s.threads)
        self.key = getattr(self.runner, "key", None) or self.bundle.resolve_key(key)  # what actually runs
        limits = [hi for _, hi in getattr(self.runner, "_batch", {}).values()]  # an engine's batch profile
        if limits and s.max_batch > min(limits):
            log.warning("edgekd serve: --max-batch %d exceeds engine %s's profile; batches of at most %d",
                        s.max_batch, self.key, min(limits))
            s.max_batch = min(limits)
        # decoding a stranger's file can take a core for a while: at most this many at once
        self.limiter = anyio.CapacityLimiter(max(2, os.cpu_count() or 2))
        self.decoder = Decoder(self.bundle, list(self.runner.input_names), s.limits)
        self.output = "logits" if "logits" in self.runner.output_names else self.runner.output_names[0]
        self.metrics = Metrics(self.bundle.labels, list(self.decoder.kinds), self.key, self.bundle.manifest.get("name", ""))
        self.confidence_drift = False
        self.monitor = self._monitor()
        self.batcher: Batcher | None = None
        self.ready = False
        for kind in set(self.decoder.kinds.values()) & {"image", "audio"}:  # their decoders' imports: not on request 1
            __import__("PIL.PngImagePlugin" if kind == "image" else "soundfile")
        manifest = (self.bundle.path / "manifest.json").read_bytes()
        self.bundle_sha256 = hashlib.sha256(manifest).hexdigest()

    async def offload(self, fn, *args):
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    def stopping(self) -> None:
        """SIGTERM arrived: /readyz answers 503 at once, while in-flight requests drain."""
        self.ready = False
        self.metrics.ready.set(0)

    def _monitor(self):
        if "drift.json" not in self.bundle.manifest["files"]:
            return None
        from edgekd.runtime.drift import DriftMonitor, read_reference

        ref = read_reference(self.bundle.path / "drift.json")
        # confidence is a model's own: the reference's is the student's (INT8 and FP32 agree), not the teacher's
        roles = {self.bundle.models.get(k, {}).get("role") for k in (ref.get("model"), self.key)}
        self.confidence_drift = len(roles) == 1
        return DriftMonitor(ref, window=self.settings.drift_window, min_samples=self.settings.drift_min_samples)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {self.output: np.asarray(self.runner.run(inputs)[self.output])}

    def after_batch(self, stacked, outs, waits, model_s) -> None:
        probs = softmax(outs[self.output])
        self.metrics.observe_batch(probs, waits, model_s)
        if self.monitor is not None:
            try:
                self.monitor.observe(stacked, probs.max(axis=1) if self.confidence_drift else None)
            except Exception as e:  # noqa: BLE001 -- monitoring must never fail the requests it watches
                log.error("drift monitor: %s: %s", type(e).__name__, e)

    async def start(self) -> None:
        s = self.settings
        self.batcher = Batcher(self.run, max_batch=s.max_batch, max_delay_s=s.max_delay_ms / 1000, queue=s.queue,
                               after_batch=self.after_batch)
        for n in sorted({1, s.max_batch}):  # first calls allocate and pick kernels: not a client's cost
            await self.batcher.call(self._warm_inputs(n))
        self.batcher.start()
        gc.collect()
        gc.freeze()  # the model, tokenizers and imports are long-lived: the collector stops rescanning them
        self.ready = True
        self.metrics.ready.set(1)

    async def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        if self.batcher is not None:
            await self.batcher.stop()
        self.runner.close()

    def _warm_inputs(self, n: int) -> dict[str, np.ndarray]:
        specs = {i["name"]: (i["dtype"], i["shape"]) for i in self.bundle.io_spec.get("inputs", [])}
        specs = {**getattr(self.runner, "_specs", {}), **specs}  # a teacher's own inputs: from its model
        out = {}
        for name in self.runner.input_names:
            dtype, shape = specs[name]
            out[name] = np.zeros([n] + [d if isinstance(d, int) else 1 for d in shape[1:]], dtype=dtype)
        return out

    def describe(self) -> dict:
        import onnxruntime

        specs = {i["name"]: i for i in self.bundle.io_spec.get("inputs", [])}
        s = self.settings
        return {"model": self.key, "backend": s.backend, "labels": self.bundle.labels,
                "inputs": [{"name": n, "kind": self.decoder.kinds[n], "field": what, "dtype": specs.get(n, {}).get("dtype"),
                            "shape": specs.get(n, {}).get("shape")} for n, what in self.decoder.fields().items()],
                "outputs": [o for o in self.bundle.io_spec.get("outputs", []) if o["name"] == self.output],
                "bundle": {"name": self.bundle.manifest.get("name"), "created": self.bundle.manifest.get("created"),
                           "manifest_sha256": self.bundle_sha256, "edgekd_version": self.bundle.manifest.get("edgekd_version"),
                           "models": sorted(self.bundle.models), "default_models": {
                               b: d.get("model") for b, d in (self.bundle.manifest.get("default_models") or {}).items()}},
                "versions": {"edgekd": __version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
                "batching": {"max_batch": s.max_batch, "max_delay_ms": s.max_delay_ms, "queue": s.queue},
                "limits": {"max_body_bytes": s.max_body_bytes, "read_timeout_s": s.read_timeout_s},
                "drift": {"reference": self.monitor is not None, "window": s.drift_window,
                          "min_samples": s.drift_min_samples}}


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _read_body(request, limit: int, timeout: float) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise RequestError(400, f"Content-Length {length[:40]!r} is not a number")
        if int(length) > limit:
            raise RequestError(413, f"body is {int(length):,} bytes; this server takes at most {limit:,} "
                                    "(start it with a larger --max-body-mib)")
    chunks, size = [], 0

    async def read():
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"body exceeds {limit:,} bytes (start the server with a larger --max-body-mib)")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise RequestError(408, f"the body did not arrive within {timeout:g} s; send it in one go") from None
    except ClientDisconnect:
        raise RequestError(400, "the client disconnected before sending the whole body") from None
    return b"".join(chunks)


def build_app(bundle_dir, settings: Settings) -> Starlette:
    svc = Service(bundle_dir, settings)

    def authorized(request) -> bool:
        if not settings.token:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), settings.token.encode())

    def guarded(handler, protected: bool = True):
        async def endpoint(request):
            if protected and not authorized(request):
                return _error(401, "missing or wrong bearer token: send Authorization: Bearer <token>",
                              {"WWW-Authenticate": "Bearer"})
            try:
                return await handler(request)
            except RequestError as e:
                return _error(e.status, e.message, {"Retry-After": "1"} if e.status == 503 else None)
            except Exception as e:  # noqa: BLE001 -- a bug must cost one request, not the server
                if settings.debug:
                    log.exception("request failed")
                else:
                    log.error("request failed: %s: %s", type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
                return _error(500, f"internal error ({type(e).__name__}); the server keeps running")
        return endpoint

    async def predict(request):
        t0 = time.perf_counter()
        if not svc.ready:
            raise RequestError(503, "the model is not ready yet (warming up or shutting down); retry shortly")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ("multipart/form-data", "application/json", "application/x-www-form-urlencoded"):
            raise RequestError(415, f"content type {ctype or 'none'!r} is not accepted: send multipart/form-data "
                                    "(files + fields) or application/json ({\"inputs\": {...}})")
        if svc.batcher.depth >= settings.queue:  # full: say so before reading and decoding anything
            svc.metrics.rejected.labels(reason="queue_full").inc()
            raise RequestError(503, f"the request queue is full ({settings.queue} waiting); retry after a second")
        svc.batcher.arriving += 1  # the batcher may wait for this one while it is read and decoded
        try:
            body = await _read_body(request, settings.max_body_bytes, settings.read_timeout_s)
            # small and alone: parse and decode right here (a thread hop costs ~0.3 ms); otherwise in
            # a bounded pool of worker threads, so the event loop keeps serving (health checks included)
            inline = len(body) <= INLINE_BYTES and svc.batcher.arriving == 1 and not svc.batcher.depth
            if ctype == "application/json":
                fields = (from_json(body, svc.decoder.field_kinds) if inline
                          else await svc.offload(from_json, body, svc.decoder.field_kinds))
            else:
                request._body = body  # starlette's form parser reads the body already read, with our limits
                fields = await from_form(request, svc.decoder.field_kinds, max_part_size=settings.max_body_bytes)
            fields = svc.decoder.rename(fields)
            for name in svc.decoder.kinds:
                if name not in fields:
                    svc.metrics.missing.labels(input=name).inc()
            inputs = svc.decoder.sample(fields) if inline else await svc.offload(svc.decoder.sample, fields)
        finally:
            svc.batcher.arriving -= 1
        try:
            done = await svc.batcher.submit(inputs)
        except QueueFull:
            svc.metrics.rejected.labels(reason="queue_full").inc()
            raise RequestError(503, f"the request queue is full ({settings.queue} waiting); retry after a second") \
                from None
        probs = softmax(done.outputs[svc.output])
        index = int(probs.argmax())
        return JSONResponse({
            "model": svc.key, "label": svc.bundle.labels[index], "index": index,
            "probabilities": {label: float(p) for label, p in zip(svc.bundle.labels, probs)},
            "batch": done.batch,
            "latency_ms": {"total": round(1000 * (time.perf_counter() - t0), 3), "queue": round(1000 * done.queue_s, 3),
                           "model": round(1000 * done.model_s, 3)}})

    async def model(request):
        return JSONResponse(svc.describe())

    async def healthz(request):
        return JSONResponse({"status": "alive"})

    async def readyz(request):
        if svc.ready:
            return JSONResponse({"status": "ready", "model": svc.key})
        return _error(503, "not ready: the model is warming up or the server is shutting down")

    async def metrics(request):
        psi = svc.monitor.psi() if svc.monitor is not None else {}
        depth = svc.batcher.depth if svc.batcher is not None else 0
        return Response(svc.metrics.render(depth, psi), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def not_found(request, exc: HTTPException):
        # the exception's headers carry `Allow` on a 405, which RFC 9110 requires in the response
        return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}; endpoints are "
                                        f"{', '.join(ROUTES)}", headers=getattr(exc, "headers", None))

    @asynccontextmanager
    async def lifespan(app):
        await svc.start()
        log.warning("edgekd serve: ready (batches of up to %d requests, waiting at most %g ms)",
                    settings.max_batch, settings.max_delay_ms)
        yield
        await svc.stop()

    routes = [Route("/v1/predict", guarded(predict), methods=["POST"]),
              Route("/v1/model", guarded(model), methods=["GET"]),
              Route("/healthz", guarded(healthz, protected=False), methods=["GET"]),
              Route("/readyz", guarded(readyz, protected=False), methods=["GET"]),
              Route("/metrics", guarded(metrics), methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: not_found})
    app.state.service = svc
    return Observed(app, svc.metrics)


class Observed:
    """ASGI wrapper counting every HTTP response by endpoint and status, 404s included."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics
        self.state = app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]

        async def observe(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            endpoint = scope["path"] if scope["path"] in ROUTES else "other"
            self.metrics.requests.labels(endpoint=endpoint, status=str(status[0])).inc()
            self.metrics.request_seconds.labels(endpoint=endpoint, status=str(status[0])).observe(
                time.perf_counter() - t0)


def serve(bundle_dir, settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Load, warm and serve until SIGTERM/SIGINT, which drains in-flight requests before exiting."""
    import uvicorn

    logging.basicConfig(level=logging.INFO if settings.debug else logging.WARNING, format="%(message)s")
    app = build_app(bundle_dir, settings)  # a bad bundle or argument fails here, before anything is bound
    svc = app.state.service
    log.warning("edgekd serve: model %s of %s on http://%s:%d once warmed (bearer token %s)", svc.key, svc.bundle.path,
                host, port, "required" if settings.token else "off")
    config = uvicorn.Config(app, host=host, port=port, lifespan="on", access_log=settings.debug,
                            log_level="info" if settings.debug else "warning",
                            # beyond the queue plus the requests being decoded: 503 before any memory is spent
                            limit_concurrency=settings.queue + 64, timeout_keep_alive=5,
                            timeout_graceful_shutdown=30)
    _uvicorn_server(svc)(config).run()


def _uvicorn_server(svc: Service):
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            svc.stopping()
            # uvicorn re-raises a caught SIGTERM once drained, so the exit status would read "killed";
            # a drained shutdown is a clean one: exit 0 (SIGINT still ends as an interrupt, 130)
            if isinstance(getattr(self, "_captured_signals", None), list):
                self._captured_signals[:] = [s for s in self._captured_signals if s != signal.SIGTERM]

    return Server
