"""Load test of `edgekd serve` on loopback: N concurrent clients, a fixed number of requests, bounded
in time. Reports throughput, p50/p99 latency, errors and the server's RSS after warm-up and after
the run, for dynamic batching on and off, and the serving overhead at one client against the same
preprocessing + model call measured in-process.

    python bench/serve_load.py runs/avdigits/bundle --requests 20000 --clients 16
    python bench/serve_load.py /tmp/icons/bundle --model teacher_fp32 --requests 2000 --clients 16 --compare-batching

The server is a child process (the same `edgekd serve` a device runs); the clients are one asyncio
process with httpx. On a 2-core machine both share the cores, so absolute numbers are a floor.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sample_request(bundle, input_names) -> tuple[dict, dict]:
    """(multipart files, form fields) of one plausible sample per input kind."""
    import soundfile as sf
    from PIL import Image

    from edgekd.runtime.predict import input_kinds

    kinds, files, data = input_kinds(bundle), {}, {}
    rng = np.random.default_rng(0)
    for name in input_names:
        p, kind = bundle.preprocess[name], kinds[name]
        if kind == "image":
            b = io.BytesIO()
            Image.fromarray((rng.random((int(p["size"]),) * 2) * 255).astype("uint8")).save(b, "PNG")
            files[name] = ("x.png", b.getvalue(), "image/png")
        elif kind == "audio":
            b = io.BytesIO()
            t = np.arange(int(p["sample_rate"])) / p["sample_rate"]
            sf.write(b, 0.2 * np.sin(2 * np.pi * 440 * t), int(p["sample_rate"]), format="WAV", subtype="PCM_16")
            files[name] = ("x.wav", b.getvalue(), "audio/wav")
        elif kind == "text":
            data[name] = "a small arrow pointing up and to the right"
        else:
            data[name] = ",".join(["0.5"] * len(p["mean"]))
    return files, data


def in_process_ms(bundle_dir, model, files, data, n=300) -> dict:
    """Median preprocess and model time of one request's sample, in this process (no HTTP)."""
    from edgekd.runtime.bundle import load_bundle
    from edgekd.runtime.runner import make_runner
    from edgekd.serve.decode import Decoder

    bundle = load_bundle(bundle_dir)
    runner = make_runner(bundle, bundle.resolve_key(model, "onnxruntime"))
    decoder = Decoder(bundle, list(runner.input_names))
    given = {**{k: v[1] for k, v in files.items()}, **data}
    pre, run = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        x = decoder.sample(given)
        t1 = time.perf_counter()
        runner.run({k: v[None] for k, v in x.items()})
        run.append(time.perf_counter() - t1)
        pre.append(t1 - t0)
    return {"preprocess_ms": 1000 * float(np.median(pre)), "model_ms": 1000 * float(np.median(run))}


class Server:
    def __init__(self, bundle, args: list[str]):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "edgekd", "serve", str(bundle), "--port", str(self.port),
                                      *args], stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.url = f"http://127.0.0.1:{self.port}"

    async def ready(self, client) -> None:
        for _ in range(600):
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {self.proc.stderr.read()}")
            try:
                if (await client.get(self.url + "/readyz")).status_code == 200:
                    return
            except Exception:  # noqa: BLE001 -- not listening yet
                pass
            await asyncio.sleep(0.1)
        raise SystemExit("server not ready in 60 s")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=60)
        return self.proc.returncode


async def load(url, files, data, requests: int, clients: int, deadline_s: float) -> dict:
    import httpx

    # the multipart body is encoded once: the clients' own encoding is not the server's latency
    encoded = httpx.Request("POST", url, files=files, data=data)
    body, headers = encoded.read(), {"content-type": encoded.headers["content-type"]}

    latencies, errors, batches = [], [], []
    counter = iter(range(requests))
    stop_at = time.perf_counter() + deadline_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        async def worker():
            for _ in counter:
                if time.perf_counter() > stop_at:
                    return
                t0 = time.perf_counter()
                try:
                    r = await client.post(url + "/v1/predict", content=body, headers=headers)
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text[:100]}")
                    else:
                        batches.append(r.json()["batch"])
                except Exception as e:  # noqa: BLE001 -- every failure is counted, none stops the run
                    errors.append(type(e).__name__)
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1000
    return {"requests": len(latencies), "errors": len(errors), "error_examples": errors[:3], "seconds": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 1), "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3), "mean_batch": round(float(np.mean(batches)), 2)
            if batches else None, "complete": len(latencies) == requests}


def one_client(port: int, files, data, n: int) -> dict:
    """One client, one request at a time, on a kept-alive connection with the stdlib's http.client:
    the leanest client there is, so the latency is the server's, not an async client's."""
    import http.client

    import httpx

    encoded = httpx.Request("POST", "http://x/v1/predict", files=files, data=data)
    body, ctype = encoded.read(), encoded.headers["content-type"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    lat, server_ms = [], []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            conn.request("POST", "/v1/predict", body=body, headers={"content-type": ctype})
            r = conn.getresponse()
            payload = r.read()
            lat.append(time.perf_counter() - t0)
            if r.status == 200:
                server_ms.append(json.loads(payload)["latency_ms"]["total"])
    finally:
        conn.close()
    return {"p50_ms": round(1000 * float(np.median(lat)), 3), "server_p50_ms": round(float(np.median(server_ms)), 3)}


async def one_setting(bundle, args, files, data, requests, clients, deadline_s, warmup=200) -> dict:
    import httpx

    server = Server(bundle, args)
    try:
        async with httpx.AsyncClient(timeout=30) as c:
            await server.ready(c)
        await load(server.url, files, data, warmup, clients, deadline_s)
        rss_warm = rss_mb(server.proc.pid)
        result = await load(server.url, files, data, requests, clients, deadline_s)
        rss_after = rss_mb(server.proc.pid)
        one = one_client(server.port, files, data, min(1000, requests))
    finally:
        code = server.stop()
    return {"server_args": args, **result, "rss_mb_after_warmup": round(rss_warm, 1),
            "rss_mb_after_run": round(rss_after, 1), "rss_growth": round(rss_after / rss_warm - 1, 4),
            "one_client_p50_ms": one["p50_ms"], "one_client_server_p50_ms": one["server_p50_ms"], "exit_code": code}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--model", default=None)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-delay-ms", type=float, default=2.0)
    ap.add_argument("--deadline", type=float, default=600.0, help="Stop sending after this many seconds per setting.")
    ap.add_argument("--compare-batching", action="store_true", help="Also run with --max-batch 1 (batching off).")
    ap.add_argument("--out", type=Path, default=None, help="Write the results as JSON here.")
    a = ap.parse_args()

    from edgekd.runtime.bundle import load_bundle
    from edgekd.runtime.runner import make_runner

    bundle = load_bundle(a.bundle)
    key = bundle.resolve_key(a.model, "onnxruntime")
    runner = make_runner(bundle, key)
    files, data = sample_request(bundle, list(runner.input_names))
    runner.close()
    base = ["--model", key, "--queue", str(max(256, 4 * a.clients))]
    settings = {"batching": base + ["--max-batch", str(a.max_batch), "--max-delay-ms", str(a.max_delay_ms)]}
    if a.compare_batching:
        settings["no_batching"] = base + ["--max-batch", "1", "--max-delay-ms", "0"]
    out = {"bundle": str(a.bundle), "model": key, "clients": a.clients, "in_process": in_process_ms(a.bundle, key, files, data)}
    for name, args in settings.items():
        out[name] = asyncio.run(one_setting(a.bundle, args, files, data, a.requests, a.clients, a.deadline))
        r = out[name]
        print(f"{name}: {r['requests']} requests, {r['errors']} errors, {r['throughput_rps']} req/s, p50 {r['p50_ms']} ms, "
              f"p99 {r['p99_ms']} ms, mean batch {r['mean_batch']}, RSS {r['rss_mb_after_warmup']} -> "
              f"{r['rss_mb_after_run']} MB ({100 * r['rss_growth']:+.1f}%), one client p50 {r['one_client_p50_ms']} ms "
              f"(in the server {r['one_client_server_p50_ms']} ms)",
              flush=True)
    ip = out["in_process"]
    overhead = out["batching"]["one_client_p50_ms"] - ip["preprocess_ms"] - ip["model_ms"]
    out["one_client_overhead_ms"] = round(overhead, 3)
    print(f"in process: preprocess {ip['preprocess_ms']:.3f} ms + model {ip['model_ms']:.3f} ms; "
          f"serving overhead at one client (p50, batching on) {overhead:.3f} ms")
    if a.compare_batching:
        ratio = out["batching"]["throughput_rps"] / out["no_batching"]["throughput_rps"]
        out["batching_speedup"] = round(ratio, 2)
        print(f"batching on / off throughput: {ratio:.2f}x")
    if a.out:
        a.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
