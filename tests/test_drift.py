"""Input-drift math of the device server (edgekd/runtime/drift.py): PSI, quantile references, the
rolling monitor, field shifts (louder audio, inverted images, ...) crossing the alert threshold while
unshifted inputs stay below it, and the example Prometheus alert rules (deploy/prometheus/)."""
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgekd.errors import BundleError
from edgekd.runtime.drift import (
    THRESHOLDS,
    DriftMonitor,
    check_reference,
    features,
    level,
    max_softmax,
    metric_labels,
    psi,
    read_reference,
    reference,
)

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "runs" / "avdigits" / "bundle"
ALERT = THRESHOLDS["alert"]
# avdigits' preprocess.json values: the synthetic inputs below are normalised the same way
IMG = {"mean": 0.14031319527811123, "std": 0.2509386339438148}
AUD = {"mean": -6.509963512420654, "std": 4.073173999786377, "mel_floor": 1e-10}
KINDS = {"image": "image", "audio": "audio", "text": "text", "vector": "vector"}
UNK = 1


def synthetic(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Digit-like images (a varying share of bright strokes on black), speech-like log-mels (a varying
    level, then zero padding at the mel floor), token ids with some unknowns, and a confident model."""
    rng = np.random.default_rng(seed)
    ink = rng.uniform(0.08, 0.25, n)[:, None, None, None]
    pix = np.where(rng.random((n, 1, 28, 28)) < ink, rng.uniform(150, 255, (n, 1, 28, 28)), 0.0)
    frames = rng.integers(25, 64, n)[:, None, None]
    mel = rng.normal(-5, 0.7, n)[:, None, None] + rng.normal(0, 1.5, (n, 63, 40))
    mel = np.where(np.arange(63)[None, :, None] < frames, np.maximum(mel, -10.0), np.log10(AUD["mel_floor"]))
    length = rng.integers(3, 21, n)[:, None]
    ids = np.where(rng.random((n, 32)) < 0.03, UNK, rng.integers(2, 1000, (n, 32)))
    inputs = {"image": ((pix / 255 - IMG["mean"]) / IMG["std"]).astype(np.float32),
              "audio": ((mel - AUD["mean"]) / AUD["std"]).astype(np.float32),
              "text": np.where(np.arange(32)[None, :] < length, ids, 0).astype(np.int64),
              "vector": rng.standard_normal((n, 8)).astype(np.float32)}
    return inputs, 1.0 - rng.beta(1.0, 30.0, n)


def louder(audio: np.ndarray, p: dict, gain: float = 4.0) -> np.ndarray:
    """Normalised log-mel of the same audio `gain` times louder: power x gain**2 adds 2*log10(gain) to
    log10(mel), i.e. 2*log10(gain)/std normalised; bins at the mel floor (zero padding) stay there."""
    floor = (np.log10(p.get("mel_floor", 1e-10)) - p["mean"]) / p["std"]
    return np.where(np.isclose(audio, floor, atol=1e-5), audio, audio + 2 * np.log10(gain) / p["std"]).astype(np.float32)


def inverted(image: np.ndarray, p: dict) -> np.ndarray:
    """Normalised pixels of the inverted image: x = (q/255 - m)/s and q' = 255 - q give x' = (1 - 2m)/s - x."""
    return ((1 - 2 * p["mean"]) / p["std"] - image).astype(np.float32)


def monitor_psi(ref: dict, inputs: dict, conf: np.ndarray, **kw) -> dict:
    m = DriftMonitor(ref, **kw)
    m.observe(inputs, conf)
    return m.psi()


@pytest.fixture(scope="module")
def synth():
    ref_inputs, ref_conf = synthetic(1000, seed=0)
    live, live_conf = synthetic(1000, seed=1)
    return reference(ref_inputs, KINDS, ref_conf, unk_ids={"text": UNK}), live, live_conf


def test_psi_formula():
    assert psi([0.25] * 4, [0.25] * 4) == 0.0
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4 * np.log(1.8) - 0.4 * np.log(0.2))
    assert psi([0.0, 1.0], [0.0, 1.0]) == 0.0  # an empty bin on both sides adds nothing
    assert np.isfinite(psi([0.0, 1.0], [1.0, 0.0]))  # empty on one side: large, never inf
    assert [level(v) for v in (None, 0.05, 0.15, 0.25)] == ["unknown", "stable", "warn", "alert"]
    assert metric_labels("image/mean") == {"input": "image", "feature": "mean"}
    assert metric_labels("confidence") == {"input": "confidence", "feature": "top_probability"}


def test_features_per_kind():
    x, _ = synthetic(5, seed=2)
    assert set(features("image", x["image"])) == {"mean", "std"}
    assert set(features("audio", x["audio"])) == {"energy", "std"}
    assert set(features("vector", x["vector"])) == {"mean", "norm"}
    assert set(features("text", x["text"])) == {"length"}  # no unk id: no 'unknown' feature
    text = features("text", np.array([[5, UNK, 7, 0], [0, 0, 0, 0]]), unk_id=UNK)
    assert text["length"].tolist() == [3, 0] and text["unknown"].tolist() == pytest.approx([1 / 3, 0])
    assert features("vector", np.array([[3.0, 4.0]]))["norm"].tolist() == [5.0]
    with pytest.raises(ValueError, match="unknown input kind"):
        features("video", x["image"])
    with pytest.raises(ValueError, match="batch"):
        features("image", np.zeros(4, np.float32))


def test_unshifted_inputs_stay_below_the_alert_and_shifts_cross_it(synth):
    ref, live, conf = synth
    same = monitor_psi(ref, live, conf)
    assert set(same) == {"image/mean", "image/std", "audio/energy", "audio/std", "text/length", "text/unknown",
                         "vector/mean", "vector/norm", "confidence"}
    assert max(same.values()) < ALERT, same
    shifted = {"image": inverted(live["image"], IMG), "audio": louder(live["audio"], AUD),
               "text": np.where((live["text"] > 0) & (np.arange(32) % 2 == 1), UNK, live["text"]),  # half unknown
               "vector": live["vector"] * 2.0}
    got = monitor_psi(ref, shifted, 1.0 - np.random.default_rng(3).beta(2.0, 5.0, 1000))
    for key in ("image/mean", "audio/energy", "text/unknown", "vector/norm", "confidence"):
        assert got[key] > ALERT, (key, got)
    assert got["image/std"] < ALERT  # inversion keeps the contrast: only the mean moves


def test_constant_features_and_identical_inputs():
    blank = np.zeros((200, 1, 8, 8), np.float32)
    ref = reference({"image": blank}, {"image": "image"}, np.ones(200))
    assert ref["inputs"]["image"]["features"]["mean"] == {"cuts": [0.0], "fracs": [0.0, 1.0]}
    assert monitor_psi(ref, {"image": blank}, np.ones(200)) == {"image/mean": 0.0, "image/std": 0.0, "confidence": 0.0}
    moved = monitor_psi(ref, {"image": blank - 1}, np.full(200, 0.5))
    assert moved["image/mean"] > ALERT and moved["image/std"] == 0.0 and moved["confidence"] > ALERT
    x, conf = synthetic(300, seed=4)
    ref = reference(x, KINDS, conf)
    assert max(monitor_psi(ref, x, conf).values()) < 1e-9  # the reference sample itself: PSI 0


def test_min_samples_and_bounded_window(synth):
    ref, live, conf = synth
    m = DriftMonitor(ref, window=200, min_samples=50)
    m.observe({k: v[:49] for k, v in live.items()}, conf[:49])
    assert set(m.psi().values()) == {None}
    m.observe({k: v[49:50] for k, v in live.items()}, conf[49:50])
    assert None not in m.psi().values()
    for i in range(0, 1000, 37):  # uneven batches wrap the ring buffer at every offset
        m.observe({k: v[i:i + 37] for k, v in live.items()}, conf[i:i + 37])
    assert set(m.counts().values()) == {200}
    assert all(s.buf.size == 200 and s.counts.sum() == 200 for s in m._series.values())
    m.observe({"image": inverted(live["image"], IMG)}, None)  # 1000 shifted rows: only the last 200 stay
    assert m.psi()["image/mean"] > ALERT and m.psi()["audio/energy"] < ALERT
    m.observe({"image": live["image"][:200]})  # the shift scrolls out of the window
    assert m.psi()["image/mean"] < ALERT
    m.observe({"unknown_input": live["image"]}, conf[:0])  # names the reference lacks are ignored


def test_observe_from_threads(synth):
    ref, live, conf = synth
    m = DriftMonitor(ref, window=5000)

    def feed(k):
        for i in range(k, 1000, 100):
            m.observe({"image": live["image"][i:i + 10]}, conf[i:i + 10])

    threads = [threading.Thread(target=feed, args=(k,)) for k in range(0, 100, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.counts()["image/mean"] == m.counts()["confidence"] == 1000
    assert m._series["image/mean"].counts.sum() == 1000


def test_reference_json_round_trip(synth, tmp_path):
    ref, live, conf = synth
    path = tmp_path / "drift.json"
    path.write_text(json.dumps(ref, allow_nan=False))  # strict JSON: no inf/NaN in the file
    loaded = read_reference(path)
    assert loaded == ref
    assert monitor_psi(loaded, live, conf) == monitor_psi(ref, live, conf)
    assert ref["n"] == 1000 and ref["inputs"]["text"]["unk_id"] == UNK


def _broken(ref: dict, how: str) -> dict:
    r = json.loads(json.dumps(ref))
    feat = r["inputs"]["image"]["features"]["mean"]
    if how == "schema":
        r["schema"] = "other"
    elif how == "n":
        r["n"] = 0
    elif how == "kind":
        r["inputs"]["image"]["kind"] = "video"
    elif how == "feature":
        r["inputs"]["image"]["features"]["energy"] = feat
    elif how == "fracs":
        feat["fracs"] = feat["fracs"][:-1]
    elif how == "cuts":
        feat["cuts"] = feat["cuts"][::-1]
    elif how == "sum":
        feat["fracs"] = [1.0] * len(feat["fracs"])
    elif how == "unk":
        del r["inputs"]["text"]["unk_id"]
    elif how == "confidence":
        del r["confidence"]
    elif how == "list":
        return [r]
    return r


@pytest.mark.parametrize("how", ["schema", "n", "kind", "feature", "fracs", "cuts", "sum", "unk", "confidence", "list"])
def test_malformed_reference_is_refused_in_one_line(synth, how):
    with pytest.raises(BundleError) as e:
        DriftMonitor(_broken(synth[0], how))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("drift reference: ") and "edgekd export RUN_DIR" in msg


def test_unreadable_reference_file(tmp_path):
    (tmp_path / "drift.json").write_text("{not json")
    with pytest.raises(BundleError, match="not JSON"):
        read_reference(tmp_path / "drift.json")
    with pytest.raises(BundleError, match="cannot read"):
        read_reference(tmp_path / "missing.json")
    assert check_reference(reference({"v": np.ones((3, 2))}, {"v": "vector"}, np.ones(3)))["n"] == 3


def test_real_avdigits_test_split():
    """Reference from every other test row (the split is sorted by label: halves would hold different
    digits), the real model's confidence; the other rows stay below the alert, shifts cross it."""
    if not (BUNDLE / "testset.npz").is_file():
        pytest.skip(f"no real bundle at {BUNDLE} (made by `edgekd run recipes/avdigits.yaml`)")
    from edgekd.benchmark.runners import load_testset
    from edgekd.runtime.runner import make_runner

    inputs, _ = load_testset(BUNDLE / "testset.npz")
    p = json.loads((BUNDLE / "preprocess.json").read_text())
    kinds = {s["name"]: s["kind"] for s in json.loads((BUNDLE / "io_spec.json").read_text())["inputs"]}
    runner = make_runner(BUNDLE)

    def conf(x):
        return max_softmax(runner.run({k: np.ascontiguousarray(v) for k, v in x.items()})["logits"])

    ref_x, live = ({k: v[i::2] for k, v in inputs.items()} for i in (0, 1))
    ref = reference(ref_x, kinds, conf(ref_x))
    same = monitor_psi(ref, live, conf(live))
    assert max(same.values()) < ALERT, same
    loud = dict(live, audio=louder(live["audio"], p["audio"]))
    assert monitor_psi(ref, loud, conf(loud))["audio/energy"] > ALERT
    inv = dict(live, image=inverted(live["image"], p["image"]))
    assert monitor_psi(ref, inv, conf(inv))["image/mean"] > ALERT


def test_alert_rules_file_parses():
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "edgekd-alerts.yml").read_text())
    groups = rules["groups"]
    assert groups and all(g["name"] and g["rules"] for g in groups)
    alerts = [r for g in groups for r in g["rules"]]
    for r in alerts:
        assert {"alert", "expr", "for", "labels", "annotations"} <= set(r), r
        assert r["labels"].get("severity") and r["annotations"].get("summary")
    exprs = " ".join(r["expr"] for r in alerts)
    for metric in ("edgekd_drift_psi", "edgekd_requests_total", "edgekd_request_seconds_bucket",
                   "edgekd_rejected_total", "edgekd_ready"):
        assert metric in exprs
