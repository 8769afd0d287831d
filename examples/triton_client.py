"""Classify one sample with a bundle model served by Triton (see docs/triton.md).

    python examples/triton_client.py runs/avdigits/bundle image=seven.png audio=seven.wav
    python examples/triton_client.py runs/avdigits/bundle image=seven.png audio=seven.wav \
        --model student_int8_cpu --url http://localhost:8000

Raw files become tensors here, with the bundle's preprocess.json and edgekd.runtime.preprocess (the
numbers training used), because Triton serves the bare ONNX/TensorRT model. The request is
KServe v2 JSON over the standard library's urllib: no tritonclient, no torch.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

import numpy as np

from edgekd.contract import OUTPUTS
from edgekd.runtime import preprocess as pp
from edgekd.runtime.bundle import load_bundle
from edgekd.runtime.triton import model_io


def prepare(bundle, name: str, value: str) -> np.ndarray:
    """One sample of input `name` (no batch axis) from a file path, a string or comma-separated numbers."""
    p = bundle.preprocess.get(name)
    if not isinstance(p, dict):
        raise SystemExit(f"bundle preprocess.json has no parameters for input '{name}'")
    if p.get("processor_class"):  # made by transformers, which this torch-free client does not run
        raise SystemExit(f"input '{name}' needs the teacher's {p['processor_class']}: query a student model instead")
    kind = p.get("kind")
    if kind == "image":
        return pp.image_from_file(value, p)
    if kind == "audio":
        return pp.audio_from_file(value, p)
    if kind == "vector":
        return pp.vector_array([float(v) for v in value.split(",")], p)
    if kind == "text":
        from tokenizers import Tokenizer

        return pp.text_ids(value, p, tokenizer=Tokenizer.from_file(str(bundle.path / p["tokenizer_file"])))
    raise SystemExit(f"input '{name}' has kind {kind!r}, expected image, audio, text or vector")


def build_request(bundle, values: dict[str, str], model: str | None = None) -> tuple[str, dict]:
    """(Triton model name, KServe v2 infer request body) for one sample: a batch of one.
    `bundle`: a bundle directory or a loaded Bundle."""
    bundle = bundle if hasattr(bundle, "manifest") else load_bundle(bundle)
    key = bundle.resolve_key(model)  # the Triton model name is the bundle key
    io = model_io(bundle, key)
    needed = [t["name"] for t in io["inputs"]]
    if sorted(values) != sorted(needed):
        raise SystemExit(f"model {key} takes {' '.join(f'{n}=...' for n in needed)}; got {' '.join(values) or 'none'}")
    inputs = []
    for t in io["inputs"]:
        try:
            x = np.asarray(prepare(bundle, t["name"], values[t["name"]]), dtype=t["dtype"])[None]
        except (OSError, ValueError) as e:  # a missing or unreadable file, a malformed vector
            raise SystemExit(f"{t['name']}={values[t['name']]}: {e}") from None
        inputs.append({"name": t["name"], "shape": list(x.shape), "datatype": t["triton"].removeprefix("TYPE_"),
                       "data": x.ravel().tolist()})
    return key, {"inputs": inputs, "outputs": [{"name": OUTPUTS[0]}]}


def infer(url: str, model: str, body: dict, timeout: float = 30.0) -> dict:
    request = urllib.request.Request(f"{url.rstrip('/')}/v2/models/{model}/infer", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:  # Triton explains a refused request in {"error": ...}
        detail = e.read().decode("utf-8", "replace")
        raise SystemExit(f"Triton refused the request ({e.code}): {detail[:300]}") from None
    except urllib.error.URLError as e:
        raise SystemExit(f"no Triton server at {url} ({e.reason}): start it as docs/triton.md shows") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", help="the bundle the Triton repository was written from")
    ap.add_argument("inputs", nargs="+", metavar="NAME=VALUE", help="image/audio: a file; text: a string; "
                                                                     "vector: comma-separated numbers")
    ap.add_argument("--model", help="bundle model key (default: the bundle's default model)")
    ap.add_argument("--url", default="http://localhost:8000", help="Triton's HTTP endpoint")
    args = ap.parse_args(argv)
    values = dict(item.split("=", 1) for item in args.inputs if "=" in item)
    if len(values) != len(args.inputs):
        ap.error("give every input as NAME=VALUE")
    bundle = load_bundle(args.bundle)  # verifies every file: the labels must be the served model's
    model, body = build_request(bundle, values, args.model)
    reply = infer(args.url, model, body)
    out = next(o for o in reply["outputs"] if o["name"] == OUTPUTS[0])
    logits = np.asarray(out["data"], np.float64).reshape(out["shape"])[0]
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    labels = bundle.labels
    best = int(probs.argmax())
    print(f"{labels[best]}\t(p={probs[best]:.3f}, model {model})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
