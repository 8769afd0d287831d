"""`edgekd serve`: a real server process on 127.0.0.1, talked to with a real HTTP client (httpx).

The bundles are the tiny hand-made ONNX models of test_bundle (no torch, no run directory); the
server runs with the training packages blocked, as on a core + [serve] device install.
"""
from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import BLOCK_TRAINING
from test_bundle import AUDIO_P, AV_INPUTS, IMAGE_P, LABELS, TV_INPUTS, VECTOR_P, TinyModel, io_spec, tokenizer
from test_hostile_inputs import bomb_png

from edgekd.runtime import drift
from edgekd.runtime import preprocess as pp
from edgekd.runtime.bundle import write_bundle

httpx = pytest.importorskip("httpx", reason="the serve tests talk HTTP through httpx (pip install -e .[test])")
pytest.importorskip("starlette", reason="edgekd serve needs the [serve] extra")

META = {"role": "student", "precision": "fp32", "target": "any", "accuracy": None}


# --------------------------------------------------------------------------- inputs


def dark_image(rng) -> np.ndarray:
    """MNIST-like: dark background, one bright square (so an inverted image is a real shift)."""
    img = np.zeros((8, 8), np.uint8)
    y, x = rng.integers(0, 5, 2)
    img[y:y + 3, x:x + 3] = rng.integers(150, 256)
    return img


def tone(rng, amplitude=None) -> np.ndarray:
    a = rng.uniform(0.05, 0.15) if amplitude is None else amplitude
    return (a * np.sin(2 * np.pi * rng.uniform(200, 1200) * np.arange(64) / 8000)).astype(np.float32)


def png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(img, mode="L").save(b, "PNG")
    return b.getvalue()


def wav_bytes(x: np.ndarray) -> bytes:
    import soundfile as sf

    b = io.BytesIO()
    sf.write(b, x, 8000, format="WAV", subtype="PCM_16")
    return b.getvalue()


def av_files(seed=0, invert=False, louder=1.0) -> dict:
    rng = np.random.default_rng(seed)
    img = dark_image(rng)
    return {"image": ("x.png", png_bytes(255 - img if invert else img), "image/png"),
            "audio": ("x.wav", wav_bytes(np.clip(tone(rng) * louder, -1, 1)), "audio/wav")}


# --------------------------------------------------------------------------- bundles and servers


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    rng = np.random.default_rng(123)
    # the drift reference: 1000 "test split" samples through the bundle's own preprocessing
    ref_in = {"image": np.stack([pp.image_array(dark_image(rng), IMAGE_P) for _ in range(1000)]),
              "audio": np.stack([pp.log_mel(tone(rng), AUDIO_P) for _ in range(1000)])}
    model = TinyModel(AV_INPUTS, seed=0)
    conf = drift.max_softmax(model(ref_in))
    ref = drift.reference(ref_in, {"image": "image", "audio": "audio"}, conf, model="student_fp32")
    (root / "drift.json").write_text(json.dumps(ref))
    av = write_bundle(root / "av", name="av", models={"student_fp32": META},
                      model_files={"student_fp32": model.save(root / "av.onnx")}, io_spec=io_spec(AV_INPUTS),
                      preprocess={"image": IMAGE_P, "audio": AUDIO_P}, labels=LABELS,
                      extra_files={"drift.json": root / "drift.json"})
    pre = {"text": {"kind": "text", "max_length": 5, "tokenizer_json": tokenizer().to_str()}, "vector": VECTOR_P}
    tv = write_bundle(root / "tv", name="tv", models={"student_fp32": META},
                      model_files={"student_fp32": TinyModel(TV_INPUTS, seed=3).save(root / "tv.onnx")},
                      io_spec=io_spec(TV_INPUTS), preprocess=pre, labels=LABELS)
    return {"av": av, "tv": tv, "model": model}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`edgekd serve` in a child process with torch & co. blocked; stopped with SIGTERM."""

    def __init__(self, bundle: Path, *args: str, env: dict | None = None):
        self.port = free_port()
        code = BLOCK_TRAINING + "from edgekd.cli import main\nimport sys\nmain(sys.argv[1:])\n"
        self.proc = subprocess.Popen([sys.executable, "-c", code, "serve", str(bundle), "--port", str(self.port), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("server not ready within 60 s")

    def stop(self) -> tuple[int, str]:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err


@pytest.fixture(scope="module")
def av_server(bundles):
    s = Server(bundles["av"], "--max-batch", "16", "--max-delay-ms", "20", "--read-timeout", "1",
               "--max-body-mib", "0.25", "--drift-window", "300", "--drift-min-samples", "300")
    yield s
    code, err = s.stop()
    assert code == 0, err
    assert "Traceback" not in err, err


def expected_label(bundles, files: dict) -> str:
    x = {"image": pp.image_from_file(io.BytesIO(files["image"][1]), IMAGE_P)[None],
         "audio": pp.audio_from_file(io.BytesIO(files["audio"][1]), AUDIO_P)[None]}
    return LABELS[int(bundles["model"](x).argmax())]


# --------------------------------------------------------------------------- endpoints


def test_endpoints(av_server, bundles):
    c = av_server.client
    assert c.get("/healthz").json() == {"status": "alive"}
    assert c.get("/readyz").json()["status"] == "ready"
    files = av_files(1)
    r = c.post("/v1/predict", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] == expected_label(bundles, files)  # what `edgekd predict` answers
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-9
    assert set(body["latency_ms"]) == {"total", "queue", "model"} and body["model"] == "student_fp32"
    as_json = {"inputs": {k: base64.b64encode(v[1]).decode() for k, v in files.items()}}
    assert c.post("/v1/predict", json=as_json).json()["probabilities"] == body["probabilities"]
    mime = {"inputs": {k: base64.encodebytes(v[1]).decode() for k, v in files.items()}}  # 76-column lines
    assert c.post("/v1/predict", json=mime).json()["probabilities"] == body["probabilities"]
    info = c.get("/v1/model").json()
    assert info["labels"] == LABELS and [i["name"] for i in info["inputs"]] == ["image", "audio"]
    assert len(info["bundle"]["manifest_sha256"]) == 64 and info["drift"]["reference"] is True
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name for f in text_string_to_metric_families(c.get("/metrics").text)}
    for name in ("edgekd_requests", "edgekd_request_seconds", "edgekd_queue_wait_seconds", "edgekd_batch_size",
                 "edgekd_model_seconds", "edgekd_input_missing", "edgekd_predictions", "edgekd_confidence",
                 "edgekd_ready", "edgekd_queue_depth", "edgekd_rejected"):
        assert name in families, name


def test_text_and_vector_fields(bundles):
    s = Server(bundles["tv"])
    try:
        r = s.client.post("/v1/predict", data={"text": "hello edge", "vector": "3,0"})
        assert r.status_code == 200, r.text
        j = s.client.post("/v1/predict", json={"inputs": {"text": "hello edge", "vector": [3, 0]}})
        assert j.json()["probabilities"] == r.json()["probabilities"]
        bad = s.client.post("/v1/predict", content=b'{"inputs": {"text": "hi", "vector": [NaN, 1]}}',
                            headers={"content-type": "application/json"})
        assert bad.status_code == 422 and "finite" in bad.json()["error"]
        huge = s.client.post("/v1/predict", content=b'{"inputs": {"text": "hi", "vector": [1' + b"0" * 400 + b', 1]}}',
                             headers={"content-type": "application/json"})
        assert huge.status_code == 422 and "too large" in huge.json()["error"]
        assert s.client.post("/v1/predict", data={"text": "hi", "vector": "1e999999,1"}).status_code == 422
        long = s.client.post("/v1/predict", data={"text": "edge " * 5000, "vector": "1,2"})
        assert long.status_code == 413 and "characters" in long.json()["error"]
    finally:
        assert s.stop()[0] == 0


def test_concurrent_requests_share_batches(av_server):
    with ThreadPoolExecutor(16) as pool:
        rs = list(pool.map(lambda i: av_server.client.post("/v1/predict", files=av_files(i)), range(48)))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200][:3]
    assert max(r.json()["batch"] for r in rs) > 1


# --------------------------------------------------------------------------- hostile requests


def slow_body(total: int, pause: float):
    yield b"--x\r\n"
    time.sleep(pause)
    yield b"0" * total


HOSTILE = [
    ("no content type", dict(content=b"abc"), 415),
    ("text/plain", dict(content=b"abc", headers={"content-type": "text/plain"}), 415),
    ("xml", dict(content=b"<a/>", headers={"content-type": "application/xml"}), 415),
    ("malformed json", dict(content=b"{nope", headers={"content-type": "application/json"}), 400),
    ("json list", dict(json=[1, 2]), 422),
    ("json without inputs", dict(json={"image": "x"}), 422),
    ("json inputs not an object", dict(json={"inputs": [1]}), 422),
    ("json image not base64", dict(json={"inputs": {"image": "%%%", "audio": "AAAA"}}), 422),
    ("json image a number", dict(json={"inputs": {"image": 5, "audio": "AAAA"}}), 422),
    ("json missing audio", dict(json={"inputs": {"image": base64.b64encode(b"x").decode()}}), 422),
    ("json extra field", dict(json={"inputs": {"image": "AAAA", "audio": "AAAA", "text": "hi"}}), 422),
    ("json empty", dict(json={}), 422),
    ("utf-16 json without inputs", dict(content="{}".encode("utf-16"), headers={"content-type": "application/json"}),
     422),
    ("multipart without boundary", dict(content=b"abc", headers={"content-type": "multipart/form-data"}), 400),
    ("multipart garbage", dict(content=b"--x\r\ngarbage", headers={"content-type": "multipart/form-data; boundary=x"}),
     422),  # python-multipart reads it as a form without parts: the inputs are missing
    ("missing audio part", dict(files={"image": ("a.png", b"\x89PNG", "image/png")}), 422),
    ("extra part", dict(files={**{k: ("f", b"x") for k in ("image", "audio")}, "depth": ("d", b"x")}), 422),
    ("image as a text field", dict(data={"image": "abc", "audio": "abc"}), 422),
    ("image not an image", dict(files={"image": ("a.png", b"not a png"), "audio": ("a.wav", b"x")}), 422),
    ("truncated png", dict(files={"image": ("a.png", b"\x89PNG\r\n\x1a\n\0\0"), "audio": ("a.wav", b"RIFF")}), 422),
    ("empty files", dict(files={"image": ("a.png", b""), "audio": ("a.wav", b"")}), 422),
    ("truncated wav", dict(files={"image": ("a.png", None), "audio": ("a.wav", b"RIFF\x10\0\0\0WAVEfmt ")}), 422),
    ("decompression bomb", dict(files={"image": ("bomb.png", None), "audio": ("a.wav", None)}), 413),
    ("audio not audio", dict(files={"image": ("a.png", None), "audio": ("a.wav", b"\0" * 500)}), 422),
    ("png with a broken chunk (Pillow: SyntaxError)", dict(files={"image": ("broken.png", None), "audio": ("a.wav", None)}),
     422),
    ("tiff: not a format the server decodes", dict(files={"image": ("x.tiff", None), "audio": ("a.wav", None)}), 422),
    ("flac: 33 channels", dict(files={"image": ("a.png", None), "audio": ("wide.flac", None)}), 422),
    ("61 s of flac silence", dict(files={"image": ("a.png", None), "audio": ("long.flac", None)}), 413),
    ("duplicate part", dict(files=[("image", ("a.png", b"x")), ("image", ("b.png", b"x")), ("audio", ("a", b"x"))]),
     422),
    ("oversized body (content-length)", dict(files={"image": ("a.png", b"\0" * 300_000), "audio": ("a.wav", b"x")}),
     413),
    ("deeply nested json", dict(content=b"[" * 100_000, headers={"content-type": "application/json"}), 400),
    ("slow client", dict(content=slow_body(10, 1.5), headers={"content-type": "multipart/form-data; boundary=x"}),
     408),
    ("float wav of NaN", dict(files={"image": ("a.png", None), "audio": ("nan.wav", None)}), 422),
    ("float wav of infinity", dict(files={"image": ("a.png", None), "audio": ("inf.wav", None)}), 422),
    ("MAT5 audio: not a format the server decodes", dict(files={"image": ("a.png", None), "audio": ("x.mat", None)}),
     422),
    ("a text file as the image", dict(files={"image": ("hostname", b"myhost\n"), "audio": ("a.wav", None)}), 422),
    ("GET on predict", dict(method="GET"), 405),
    ("unknown path", dict(path="/v1/nope"), 404),
    ("unknown path 2", dict(path="/../../etc/passwd"), 404),
    ("PUT model", dict(method="PUT", path="/v1/model"), 405),
]


def broken_png() -> bytes:
    good = png_bytes(dark_image(np.random.default_rng(0)))
    return good[:37] + bytes([good[37] ^ 0xFF]) + good[38:]  # IHDR's data changed, its CRC not


def tiff_bytes() -> bytes:
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(dark_image(np.random.default_rng(0))).save(b, "TIFF")
    return b.getvalue()


def float_wav(value: float) -> bytes:
    import soundfile as sf

    b = io.BytesIO()
    sf.write(b, np.full(4000, value, np.float32), 8000, format="WAV", subtype="FLOAT")
    return b.getvalue()


def mat5_audio() -> bytes:
    import soundfile as sf

    b = io.BytesIO()
    sf.write(b, 0.1 * np.sin(np.arange(8000) / 5.0).astype(np.float32), 8000, format="MAT5", subtype="FLOAT")
    return b.getvalue()


def wide_wav() -> bytes:
    import soundfile as sf

    b = io.BytesIO()
    sf.write(b, np.zeros((80, 33), np.float32), 8000, format="WAV", subtype="PCM_16")
    return b.getvalue()


def long_flac() -> bytes:
    import soundfile as sf

    b = io.BytesIO()
    sf.write(b, np.zeros(61 * 8000, np.float32), 8000, format="FLAC")  # a few kB, 61 s once decoded
    return b.getvalue()


def _fill(kwargs: dict, good: dict, bomb: bytes) -> dict:
    files = kwargs.get("files")
    names = {v[0] for v in files.values()} if isinstance(files, dict) else set()
    makers = {"long.flac": long_flac, "broken.png": broken_png, "x.tiff": tiff_bytes, "wide.flac": wide_wav,
              "nan.wav": lambda: float_wav(np.nan), "inf.wav": lambda: float_wav(np.inf), "x.mat": mat5_audio}
    special = {"bomb.png": bomb, **{n: f() for n, f in makers.items() if n in names}}
    if isinstance(files, dict):  # None = the good file for that field (the other one is what is wrong)
        files = {k: (v[0], special.get(v[0]) or (good[k][1] if v[1] is None else v[1])) for k, v in files.items()}
        kwargs = {**kwargs, "files": files}
    return kwargs


def test_hostile_requests_are_4xx_and_the_server_keeps_serving(av_server, tmp_path):
    assert len(HOSTILE) >= 30
    c, good = av_server.client, av_files(7)
    bomb = bomb_png(tmp_path / "bomb.png").read_bytes()
    for name, kwargs, status in HOSTILE:
        kwargs = _fill(dict(kwargs), good, bomb)
        method, path = kwargs.pop("method", "POST"), kwargs.pop("path", "/v1/predict")
        r = c.request(method, path, **kwargs)
        assert r.status_code == status, f"{name}: {r.status_code} {r.text}"
        assert isinstance(r.json().get("error"), str) and r.json()["error"], name
        assert "Traceback" not in r.text, name
        assert "object at 0x" not in r.text, f"{name}: an object's repr in the error: {r.text}"
        if status == 405:  # RFC 9110: a 405 names the methods the resource takes
            assert r.headers.get("allow"), f"{name}: 405 without Allow"
        assert c.post("/v1/predict", files=good).status_code == 200, f"after {name}"
    metrics = c.get("/metrics").text
    assert 'edgekd_input_missing_total{input="audio"}' in metrics


def test_a_json_key_given_twice_is_refused_not_last_wins(av_server):
    good = av_files(7)
    b64 = {k: base64.b64encode(v[1]).decode() for k, v in good.items()}
    body = f'{{"inputs": {{"image": "!!", "image": "{b64["image"]}", "audio": "{b64["audio"]}"}}}}'.encode()
    r = av_server.client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "'image' is given twice" in r.json()["error"]


def test_a_model_file_swapped_after_the_bundle_was_verified_is_never_loaded(bundles, tmp_path):
    """Hash-then-reload: the runner loads the very bytes it checked, so a file replaced after
    load_bundle verified it is refused, and one replaced after the runner started changes nothing."""
    import shutil

    from edgekd.errors import BundleError
    from edgekd.runtime.bundle import load_bundle
    from edgekd.runtime.runner import make_runner

    root = tmp_path / "b"
    shutil.copytree(bundles["av"], root)
    bundle = load_bundle(root)
    model = bundle.model_path()
    original = model.read_bytes()
    runner = make_runner(bundle)
    x = {name: np.ones((1, *shape), np.float32) for name, _, shape in AV_INPUTS}
    before = runner.run(x)["logits"]
    other = TinyModel(AV_INPUTS, seed=9).save(tmp_path / "other.onnx").read_bytes()
    model.write_bytes(other)  # swapped while the server runs: the loaded session is the verified one
    np.testing.assert_array_equal(runner.run(x)["logits"], before)
    with pytest.raises(BundleError, match="changed since the bundle was opened"):
        make_runner(bundle)  # swapped between the check and the load
    model.write_bytes(original)
    np.testing.assert_array_equal(make_runner(bundle).run(x)["logits"], before)


def test_the_serve_token_is_stripped_and_a_blank_one_refused(monkeypatch):
    from edgekd.cli_device import serve_token
    from edgekd.errors import UsageError

    monkeypatch.setenv("TOK", "s3cret\n")  # what `export TOK=$(cat token.txt)` of an editor's file gives
    assert serve_token("TOK") == "s3cret"
    monkeypatch.setenv("TOK", "")
    assert serve_token("TOK") is None
    monkeypatch.delenv("TOK")
    assert serve_token("TOK") is None
    monkeypatch.setenv("TOK", " \n\t")
    with pytest.raises(UsageError, match="only whitespace"):
        serve_token("TOK")


def test_predict_refuses_non_finite_audio_in_one_line(bundles, tmp_path, capsys):
    from conftest import cli

    nan = tmp_path / "nan.wav"
    nan.write_bytes(float_wav(np.nan))
    img = tmp_path / "d.png"
    img.write_bytes(av_files(7)["image"][1])
    code, _, err = cli(capsys, "predict", bundles["av"], "--image", img, "--audio", nan)
    assert code == 2 and "non-finite samples" in err and len(err.strip().splitlines()) == 1  # as any unreadable --audio


# --------------------------------------------------------------------------- drift


def test_drift_crosses_the_threshold_only_for_shifted_inputs(av_server):
    from prometheus_client.parser import text_string_to_metric_families

    def psi() -> dict:
        text = av_server.client.get("/metrics").text
        return {(s.labels["input"], s.labels["feature"]): s.value for f in text_string_to_metric_families(text)
                if f.name == "edgekd_drift_psi" for s in f.samples}

    def send(n, **shift):
        with ThreadPoolExecutor(8) as pool:
            rs = list(pool.map(lambda i: av_server.client.post("/v1/predict", files=av_files(1000 + i, **shift)),
                               range(n)))
        assert all(r.status_code == 200 for r in rs)

    send(300)  # like the reference: every series below the alert threshold
    calm = psi()
    assert calm and max(calm.values()) < drift.THRESHOLDS["alert"], calm
    send(300, invert=True)  # a full window of inverted images
    assert psi()[("image", "mean")] > drift.THRESHOLDS["alert"]
    send(300, louder=4.0)  # four times louder audio
    loud = psi()
    assert max(loud[("audio", f)] for f in ("energy", "std")) > drift.THRESHOLDS["alert"], loud


# --------------------------------------------------------------------------- backpressure, token, shutdown


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        return sock.recv(65536)


def test_malformed_http_is_refused_and_the_server_keeps_serving(av_server):
    for head in (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n",
                 b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                 b"NONSENSE\r\n\r\n"):
        assert raw_request(av_server.port, head).split(b" ")[1].startswith(b"4"), head[:60]
    assert av_server.client.post("/v1/predict", files=av_files(2)).status_code == 200


def test_full_queue_answers_503_with_retry_after(bundles):
    s = Server(bundles["av"], "--max-batch", "1", "--max-delay-ms", "0", "--queue", "1")
    try:
        files = av_files(3)
        with ThreadPoolExecutor(32) as pool:
            rs = list(pool.map(lambda i: s.client.post("/v1/predict", files=files), range(256)))
        codes = {r.status_code for r in rs}
        assert codes <= {200, 503}, codes
        busy = [r for r in rs if r.status_code == 503]
        assert busy, "a queue of 1 never filled under 32 concurrent clients"
        assert busy[0].headers["retry-after"] == "1" and "queue is full" in busy[0].json()["error"]
        assert s.client.post("/v1/predict", files=files).status_code == 200
        assert 'edgekd_rejected_total{reason="queue_full"}' in s.client.get("/metrics").text
    finally:
        assert s.stop()[0] == 0


def test_bearer_token(bundles):
    s = Server(bundles["tv"], env={"EDGEKD_SERVE_TOKEN": "s3cret"})
    try:
        c = s.client
        assert c.get("/v1/model").status_code == 401
        assert c.get("/metrics").status_code == 401
        assert c.get("/v1/model", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/model", headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/v1/model", headers={"authorization": "bearer s3cret"}).status_code == 200  # scheme: any case
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200  # probes stay open
    finally:
        assert s.stop()[0] == 0


def test_sigterm_drains_in_flight_requests(bundles):
    s = Server(bundles["av"], "--read-timeout", "20")
    files = av_files(5)
    body = httpx.Request("POST", s.url, files=files)  # a multipart body, sent slowly below
    data, ctype = body.read(), body.headers["content-type"]
    results = []

    def slow_client():
        def chunks():
            yield data[:50]
            time.sleep(1.5)  # SIGTERM arrives while this request is being received
            yield data[50:]

        with httpx.Client(timeout=30) as c:
            results.append(c.post(s.url + "/v1/predict", content=chunks(), headers={"content-type": ctype}))

    t = threading.Thread(target=slow_client)
    t.start()
    try:
        time.sleep(0.5)
        s.proc.send_signal(signal.SIGTERM)
        t.join(30)
        s.proc.wait(30)  # it exits by itself once the request is answered
    finally:
        if s.proc.poll() is None:  # never leave a server behind a failed test
            s.proc.kill()
    code, err = s.stop()
    assert results and results[0].status_code == 200, results and results[0].text
    assert code == 0 and "Traceback" not in err, err


def test_serve_refuses_bad_arguments_in_one_line(bundles, tmp_path, capsys):
    from conftest import cli

    code, _, err = cli(capsys, "serve", tmp_path / "nothing")
    assert code != 0 and err.strip().count("\n") == 0 and "no bundle" in err
    code, _, err = cli(capsys, "serve", bundles["av"], "--model", "nope")
    assert code != 0 and "unknown model 'nope'" in err and err.strip().count("\n") == 0


def test_a_teachers_own_input_is_accepted_under_its_modality_name(tmp_path):
    from onnx import TensorProto

    from edgekd.runtime.bundle import load_bundle
    from edgekd.serve.decode import Decoder

    inputs = [("text__teacher", TensorProto.INT64, [5]), ("vector", TensorProto.FLOAT, [2])]
    tok = {"kind": "text", "max_length": 5, "tokenizer_json": tokenizer().to_str()}
    spec = {"inputs": [{"name": "text__teacher", "kind": "text", "dtype": "int64", "shape": ["batch", 5]},
                       {"name": "vector", "kind": "vector", "dtype": "float32", "shape": ["batch", 2]}],
            "outputs": io_spec(TV_INPUTS)["outputs"]}
    dest = write_bundle(tmp_path / "b", name="t", models={"teacher_fp32": {**META, "role": "teacher"}},
                        model_files={"teacher_fp32": TinyModel(inputs).save(tmp_path / "t.onnx")}, io_spec=spec,
                        preprocess={"text__teacher": tok, "vector": VECTOR_P}, labels=LABELS)
    d = Decoder(load_bundle(dest), ["text__teacher", "vector"])
    assert d.field_kinds["text"] == "text"
    x = d.sample({"text": "hello edge", "vector": "1,2"})
    assert set(x) == {"text__teacher", "vector"} and x["text__teacher"].tolist()[:2] == [2, 3]
