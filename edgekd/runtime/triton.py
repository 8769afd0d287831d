"""A bundle as an NVIDIA Triton Inference Server model repository (`edgekd triton BUNDLE OUT`).

One Triton model per bundle model: ONNX files run on Triton's onnxruntime backend, TensorRT engines
on its tensorrt backend. config.pbtxt is written as text by hand (a small formatter below) so
neither tritonclient nor protobuf is needed on the machine that writes it; the tests parse every
config with Triton's own ModelConfig proto. Inputs and outputs come from the ONNX graph itself,
since io_spec.json describes the students only (a teacher has its own `<m>__teacher` inputs and
embedding width); an engine is described by the ONNX it was built from.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from edgekd.contract import OUTPUTS
from edgekd.errors import BundleError, UsageError
from edgekd.files import building_dir, sha256_file
from edgekd.runtime.bundle import FIX, MANIFEST, load_bundle

MARKER = "edgekd-triton.json"  # how a later run knows OUT is ours to replace
FORMAT = "edgekd.triton"
DEFAULT_TARGET = "x86-gpu"
# export/targets/x86-gpu.yaml's batch profile: the runtime layer may not import edgekd.trt to read it
# (tests/test_triton.py holds the two equal); the CLI passes the loaded Target instead
DEFAULT_BATCH = {"min": 1, "opt": 8, "max": 32}
DEFAULT_QUEUE_DELAY_US = 100  # a tenth of a millisecond of waiting buys batches under load
# ONNX TensorProto element type -> (numpy dtype name as io_spec.json writes it, Triton data type)
_TYPES = {1: ("float32", "TYPE_FP32"), 2: ("uint8", "TYPE_UINT8"), 3: ("int8", "TYPE_INT8"),
          4: ("uint16", "TYPE_UINT16"), 5: ("int16", "TYPE_INT16"), 6: ("int32", "TYPE_INT32"),
          7: ("int64", "TYPE_INT64"), 8: ("object", "TYPE_STRING"), 9: ("bool", "TYPE_BOOL"),
          10: ("float16", "TYPE_FP16"), 11: ("float64", "TYPE_FP64"), 12: ("uint32", "TYPE_UINT32"),
          13: ("uint64", "TYPE_UINT64"), 16: ("bfloat16", "TYPE_BF16")}
_BY_NUMPY = {np_name: t for np_name, t in _TYPES.values()}


class Enum(str):
    """A protobuf enum value: written bare (TYPE_FP32), where a plain str is quoted."""


def pbtxt(fields: dict, indent: int = 0) -> str:
    """Protobuf text format of nested dicts/lists; keys starting with '#' are comment lines."""
    pad, lines = "  " * indent, []
    for key, value in fields.items():
        if key.startswith("#"):
            lines += [f"{pad}# {line}".rstrip() for line in str(value).splitlines()]
        elif isinstance(value, dict):
            lines += [f"{pad}{key} {{", pbtxt(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            items = [f"{pad}  {{\n{pbtxt(v, indent + 2)}\n{pad}  }}" for v in value]
            lines += [f"{pad}{key} [", ",\n".join(items), f"{pad}]"]
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [{' ' + ', '.join(_scalar(v) for v in value) + ' ' if value else ''}]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(lines)


def _scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, Enum)):
        return str(v)
    text = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def model_io(bundle, key: str) -> dict:
    """{"inputs"|"outputs": [{"name", "dtype" (numpy name), "triton" (TYPE_*), "shape" (None: a
    dynamic axis)}], "batched": first axis dynamic everywhere} of one bundle model, from its ONNX graph
    (for an engine, the ONNX it was built from; io_spec.json when that is not in the bundle)."""
    meta = bundle.models[key]
    onnx_file = meta["file"] if meta["file"].endswith(".onnx") else bundle.models.get(meta.get("source"), {}).get("file")
    if onnx_file and onnx_file.endswith(".onnx"):
        io = _graph_io(bundle.path / onnx_file, key)
    else:  # an engine whose source ONNX was left out of the bundle: io_spec describes the student
        io = {side: [{"name": s["name"], "dtype": s["dtype"], "shape": [None if isinstance(d, str) else int(d)
                                                                         for d in s["shape"]]}
                     for s in bundle.io_spec.get(side, [])] for side in ("inputs", "outputs")}
        io["external"] = []
    spec = {s["name"]: s for s in bundle.io_spec.get("inputs", [])}
    for t in io["inputs"] + io["outputs"]:
        if t["dtype"] not in _BY_NUMPY:
            raise BundleError(f"model {key}: '{t['name']}' has dtype {t['dtype']!r}, which Triton cannot serve; {FIX}")
        t["triton"] = _BY_NUMPY[t["dtype"]]
    for t in io["inputs"]:  # preprocessing makes what io_spec says: the graph must take exactly that
        s = spec.get(t["name"])
        if s and (s.get("dtype") != t["dtype"] or len(s.get("shape", [])) != len(t["shape"]) or any(
                isinstance(a, int) and b is not None and a != b for a, b in zip(s["shape"][1:], t["shape"][1:]))):
            raise BundleError(f"model {key}: input '{t['name']}' is {t['dtype']}{_dims(t['shape'])} in the model but "
                              f"{s.get('dtype')}{_dims(s.get('shape', []))} in io_spec.json; {FIX}")
    io["batched"] = all(t["shape"] and t["shape"][0] is None for t in io["inputs"] + io["outputs"])
    return io


def _dims(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _graph_io(path: Path, key: str) -> dict:
    import onnx  # ~0.3 s to import: only describing a model needs it, not `import edgekd.runtime`

    try:
        graph = onnx.load(str(path), load_external_data=False).graph  # weights stay on disk
    except Exception as e:  # onnx raises DecodeError and friends for a damaged file
        raise BundleError(f"model {key}: {path.name} is not a readable ONNX model ({str(e)[:120]}); {FIX}") from None
    weights = {i.name for i in graph.initializer}
    out = {}
    for side, values in (("inputs", [v for v in graph.input if v.name not in weights]), ("outputs", graph.output)):
        out[side] = []
        for v in values:
            t = v.type.tensor_type
            if not t.HasField("shape"):
                raise BundleError(f"model {key}: '{v.name}' has no known rank in {path.name}; {FIX}")
            shape = [int(d.dim_value) if d.HasField("dim_value") else None for d in t.shape.dim]
            out[side].append({"name": v.name, "dtype": _TYPES.get(t.elem_type, (f"onnx type {t.elem_type}",))[0],
                              "shape": shape})
    # a model over 2 GB keeps its weights in files beside it, which must travel with model.onnx
    out["external"] = sorted({e.value for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                              for e in t.external_data if e.key == "location"})
    return out


def _batch_of(target) -> tuple[str, dict]:
    """(name, {min, opt, max}) of an edgekd.trt.targets.Target, a target dict, or None (x86-gpu)."""
    if target is None:
        return DEFAULT_TARGET, dict(DEFAULT_BATCH)
    get = target.get if isinstance(target, dict) else lambda k, d=None: getattr(target, k, d)
    b = get("batch")
    b = b if isinstance(b, dict) else {k: getattr(b, k, None) for k in ("min", "opt", "max")}
    if not all(isinstance(b.get(k), int) and b[k] >= 1 for k in ("min", "opt", "max")):
        raise UsageError(f"target {get('name', '?')!r} has no batch {{min, opt, max}}: give a target from export/targets")
    return str(get("name", "custom")), {k: b[k] for k in ("min", "opt", "max")}


def _engine_batch(bundle, key: str) -> dict | None:
    """The batch profile an engine was built with (its build.json), the most a plan accepts."""
    from edgekd.runtime.trt_runner import _build_json  # reads only a build.json the manifest lists

    try:
        return _batch_of(_build_json(bundle, key)["target_spec"])[1]
    except (BundleError, TypeError, KeyError, UsageError):
        return None


def _config(bundle, key: str, io: dict, engine: bool, max_batch: int, batch: dict, delay_us: int, labels: bool,
            kind: str) -> dict:
    meta = bundle.models[key]
    note = f"written by edgekd from bundle {bundle.manifest.get('name')} ({bundle.manifest.get('created')}), " \
           f"model {key} ({meta['file']})"
    if engine:
        note += (f"\nA TensorRT plan runs only on the GPU it was built on ({meta.get('device', '?')}, compute "
                 f"capability {meta.get('compute_capability', '?')}) with TensorRT {meta.get('tensorrt_version', '?')};"
                 "\nuse a tritonserver release with that TensorRT, or rebuild the engine there (`edgekd build`).")
    cfg: dict = {"#": note}
    cfg.update(name=key, platform="tensorrt_plan" if engine else "onnxruntime_onnx", max_batch_size=max_batch)
    for side, entry in (("inputs", "input"), ("outputs", "output")):
        cfg[entry] = []
        for t in io[side]:
            shape = t["shape"][1:] if max_batch else t["shape"]
            item = {"name": t["name"], "data_type": Enum(t["triton"]), "dims": [-1 if d is None else d for d in shape]}
            if not shape:  # one number per sample: Triton wants dims, so [1] reshaped to the model's scalar
                item.update(dims=[1], reshape={"shape": []})
            if labels and side == "outputs" and t["name"] == OUTPUTS[0]:
                item["label_filename"] = "labels.txt"  # Triton's classification extension names the top classes
            cfg[entry].append(item)
    if max_batch:
        preferred = sorted({min(b, max_batch) for b in (batch["opt"], batch["max"])})
        cfg["dynamic_batching"] = {"preferred_batch_size": preferred, "max_queue_delay_microseconds": delay_us}
    cfg["instance_group"] = [{"count": 1, "kind": Enum(kind)}]
    params = {"edgekd_bundle": bundle.manifest.get("name", ""), "edgekd_model_file": meta["file"]}
    if engine:  # machine-readable too: Triton shows parameters in the model's config endpoint
        params.update({k: str(meta.get(k, "")) for k in ("tensorrt_version", "device", "compute_capability",
                                                          "engine_target")})
    cfg["parameters"] = [{"key": k, "value": {"string_value": v}} for k, v in params.items()]
    return cfg


def _check_out(out: Path, bundle_path: Path, force: bool) -> None:
    b, o = bundle_path.resolve(), out.resolve()
    if o == b or o in b.parents or b in o.parents:
        raise UsageError(f"{out} overlaps the bundle {bundle_path}: write the Triton repository to another folder")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file: give a folder for the Triton model repository")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file() and not force:
        raise UsageError(f"{out} exists and is not an edgekd Triton repository: choose an empty folder, "
                         "or pass --force to replace it")


def write_repository(bundle_dir, out_dir, *, models=None, max_batch_size=None, max_queue_delay_us=None,
                     target=None, force=False) -> dict:
    """Write a Triton model repository for `bundle_dir` at `out_dir` (replaced whole, once complete).
    `models`: bundle keys (default: all); `target`: a Target or dict whose batch profile sets
    max_batch_size and the preferred batch sizes (default x86-gpu); returns a summary dict."""
    bundle = load_bundle(bundle_dir)  # verifies every file before anything is copied
    out = Path(out_dir)
    keys = list(dict.fromkeys(models)) if models else list(bundle.models)
    unknown = [k for k in keys if k not in bundle.models]
    if unknown:
        raise UsageError(f"unknown model '{unknown[0]}': this bundle has {', '.join(bundle.models)}")
    for key in keys:  # the manifest itself is not hashed: a key becomes a folder name, so keep it plain
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", key):
            raise BundleError(f"model key {key!r} is not a plain name; {FIX}")
    if any("\n" in label or "\r" in label for label in bundle.labels):
        raise BundleError(f"labels.json has a label with a line break, which labels.txt cannot hold; {FIX}")
    target_name, batch = _batch_of(target)
    if max_batch_size is not None and int(max_batch_size) < 0:
        raise UsageError("--max-batch-size must be 0 (no batching) or more")
    _check_out(out, bundle.path, force)
    delay = DEFAULT_QUEUE_DELAY_US if max_queue_delay_us is None else int(max_queue_delay_us)
    manifest_sha = sha256_file(bundle.path / MANIFEST)
    summary = {"out": str(out), "bundle": bundle.manifest.get("name"), "bundle_path": str(bundle.path),
               "manifest_sha256": manifest_sha, "created": bundle.manifest.get("created"), "target": target_name,
               "models": {}, "notes": []}
    with building_dir(out) as tmp:
        for key in keys:
            meta = bundle.models[key]
            src = bundle.path / meta["file"]
            engine = meta.get("backend") == "tensorrt" or src.suffix in (".engine", ".plan", ".trt")
            io = model_io(bundle, key)
            mb = (batch["max"] if max_batch_size is None else int(max_batch_size)) if io["batched"] else 0
            model_batch = batch
            if not io["batched"] and max_batch_size:
                summary["notes"].append(f"{key}: its graph has a fixed batch axis, so max_batch_size is 0 (no batching)")
            if engine and mb:
                model_batch = _engine_batch(bundle, key) or batch
                if model_batch is batch:
                    summary["notes"].append(f"{key}: no build.json records the engine's batch profile; max_batch_size "
                                            f"follows target {target_name} (lower it if Triton refuses the plan)")
                if mb > model_batch["max"]:  # Triton would refuse to load a plan asked for more than its profile
                    summary["notes"].append(f"{key}: max_batch_size {mb} lowered to {model_batch['max']}, the "
                                            "largest batch its engine was built for")
                    mb = model_batch["max"]
            logits = next((t for t in io["outputs"] if t["name"] == OUTPUTS[0]), None)
            classes = logits["shape"][-1] if logits and logits["shape"] else None
            labels = classes == len(bundle.labels)
            if classes is not None and not labels:
                raise BundleError(f"model {key} gives {classes} logits but labels.json has "
                                  f"{len(bundle.labels)} labels; {FIX}")
            kind = "KIND_CPU" if meta.get("target") == "cpu" else "KIND_GPU"  # ORT's INT8 CPU kernels
            version = tmp / key / "1"
            version.mkdir(parents=True)
            dest = version / ("model.plan" if engine else "model.onnx")
            shutil.copyfile(src, dest)
            for rel in [] if engine else io["external"]:
                if rel not in bundle.manifest["files"]:  # only verified files go out
                    raise BundleError(f"model {key} needs {rel}, which the bundle does not list; {FIX}")
                (version / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(bundle.path / rel, version / rel)
            if engine and meta.get("build") in bundle.manifest["files"]:
                shutil.copyfile(bundle.path / meta["build"], tmp / key / "build.json")
            if labels:
                (tmp / key / "labels.txt").write_text("".join(f"{x}\n" for x in bundle.labels), encoding="utf-8")
            cfg = _config(bundle, key, io, engine, mb, model_batch, delay, labels, kind)
            (tmp / key / "config.pbtxt").write_text(pbtxt(cfg) + "\n", encoding="utf-8")
            summary["models"][key] = {"platform": cfg["platform"], "path": f"{key}/1/{dest.name}",
                                      "config": f"{key}/config.pbtxt", "max_batch_size": mb, "kind": kind,
                                      **({"tied_to": {k: meta.get(k) for k in ("device", "compute_capability",
                                                                             "tensorrt_version")}} if engine else {})}
        (tmp / "README.txt").write_text(_readme(summary), encoding="utf-8")
        (tmp / MARKER).write_text(json.dumps({"format": FORMAT, **{k: v for k, v in summary.items() if k != "out"}},
                                             indent=2) + "\n", encoding="utf-8")
    return summary


def _readme(s: dict) -> str:
    rows = "\n".join(f"  {k:<28} {m['platform']:<17} {m['kind']:<9} max_batch_size {m['max_batch_size']}"
                     for k, m in s["models"].items())
    ties = "\n".join(f"  {k}: built for {m['tied_to']['device']} (compute capability {m['tied_to']['compute_capability']}) "
                     f"with TensorRT {m['tied_to']['tensorrt_version']}; it loads only there, in a tritonserver "
                     "release with that TensorRT" for k, m in s["models"].items() if "tied_to" in m)
    return (f"NVIDIA Triton model repository written by edgekd from bundle '{s['bundle']}'\n"
            f"  bundle created {s['created']}, manifest.json sha256 {s['manifest_sha256']}\n"
            f"  batch profile of target {s['target']}\n\nModels:\n{rows}\n"
            + (f"\nTensorRT plans:\n{ties}\n" if ties else "")
            + "".join(f"\nNote: {n}" for n in s["notes"])
            + "\n\nServe it (from this folder; KIND_GPU models need --gpus all, a CPU-only host loads the CPU ones with\n"
              "  --model-control-mode=explicit --load-model=NAME):\n\n"
              "  docker run --rm --gpus all -p8000:8000 -p8001:8001 -p8002:8002 -v \"$(pwd)\":/models \\\n"
              "    nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models\n\n"
              "Query it with KServe v2 (POST /v2/models/NAME/infer); see docs/triton.md and examples/triton_client.py.\n"
              "Do not edit the files here: `edgekd triton` rewrites this folder whole.\n")
