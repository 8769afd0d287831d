"""Deployment targets as data: one YAML per device under export/targets/.

Strict like recipes: unknown keys, bad values and unknown target names fail with the field path
and the closest valid name. Targets are looked up in $EDGEKD_TARGETS, then the source tree's
export/targets/ (an editable install or a checkout), then ./export/targets/.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from edgekd.errors import RecipeError
from edgekd.schema import Strict, read_yaml, suggest

ENV = "EDGEKD_TARGETS"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"  # becomes part of bundle model keys and file names


class Batch(Strict):
    min: int = Field(ge=1, description="Smallest batch the engine accepts.")
    opt: int = Field(ge=1, description="The batch TensorRT tunes kernels for.")
    max: int = Field(ge=1, description="Largest batch the engine accepts.")

    @model_validator(mode="after")
    def _order(self):
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"need min <= opt <= max, got {self.min}/{self.opt}/{self.max}")
        return self


class Serving(Strict):
    """`edgekd serve` and Triton's dynamic batcher on this target (each overridable on the command line)."""

    max_batch: int = Field(16, ge=1, description="Most requests the server runs as one batch.")
    max_delay_ms: float = Field(2.0, ge=0, le=1000, description="Longest a request waits for others to join its batch.")
    queue: int = Field(256, ge=1, description="Requests waiting at most; beyond it the server answers 503.")


class Target(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="Target name; equals the file name without .yaml.")
    description: str = Field("", description="One line for people.")
    platform: Literal["x86", "jetson"] = Field(description="x86: discrete GPU host; jetson: an Orin module.")
    batch: Batch = Field(description="Optimization profile of the dynamic batch axis.")
    fp16_fallback: bool = Field(description="Allow FP16 for layers the model leaves unquantized (TensorRT 10 "
                                            "weak typing); false builds strongly typed.")
    workspace_mib: int = Field(gt=0, description="Builder workspace memory-pool limit in MiB.")
    dla_core: int | None = Field(None, ge=0, description="DLA core to run on (Jetson AGX Orin: 0 or 1); null: GPU.")
    builder_optimization_level: int = Field(3, ge=0, le=5, description="TensorRT builder optimization level 0-5.")
    timing_cache: Literal["per-device", "none"] = Field(
        "per-device", description="per-device: load and save a timing cache per target and GPU; none: no cache.")
    channel_divisor: int = Field(16, ge=1, description="Channel counts pruning keeps to (INT8 tensor-core kernels want "
                                 "16-byte aligned channels: 16 INT8 values).")
    serve: Serving = Field(default_factory=Serving, description="Dynamic batching of `edgekd serve` and Triton.")

    @model_validator(mode="after")
    def _dla(self):
        if self.dla_core is not None and self.platform != "jetson":
            raise ValueError("dla_core: DLA cores exist only on Jetson modules (platform: jetson)")
        if self.dla_core is not None and not self.fp16_fallback:
            raise ValueError("dla_core needs fp16_fallback: true (the DLA runs FP16/INT8 layers only)")
        return self


def precision_plan(target: Target, quantized: bool, trt_major: int = 10) -> dict:
    """How a build honours the target's precision policy on TensorRT `trt_major` (shared by the
    Python builder and the trtexec script, so both build the same engine).

    Strongly typed (types come from the ONNX: INT8 where the Q/DQ nodes are, FP32 elsewhere) unless
    the target allows FP16 fallback and this TensorRT still has the FP16 builder flag (10.x). INT8
    never comes from a calibrator: only from the model's Q/DQ (explicit quantization)."""
    notes = []
    if trt_major >= 11 or not target.fp16_fallback:
        if target.fp16_fallback:
            notes.append("TensorRT 11 has no FP16 builder flag: layers the model leaves unquantized stay FP32 "
                         "(convert the ONNX with ModelOpt AutoCast for FP16)")
        return {"strongly_typed": True, "flags": [], "notes": notes}
    # weak typing: FP16 lets TensorRT choose FP16 where faster; INT8 must be enabled for Q/DQ to
    # be honoured, and only then (without Q/DQ, INT8 would need calibration scales)
    return {"strongly_typed": False, "flags": ["FP16", *(["INT8"] if quantized else [])], "notes": notes}


# --------------------------------------------------------------------------- finding and loading


def target_dirs() -> list[Path]:
    dirs = []
    if os.environ.get(ENV):
        dirs.append(Path(os.environ[ENV]))
    dirs += [Path(__file__).resolve().parents[2] / "export" / "targets", Path.cwd() / "export" / "targets"]
    out = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def available_targets() -> dict[str, Path]:
    """Target name -> YAML file; the first directory of target_dirs() that has a name wins."""
    found: dict[str, Path] = {}
    for d in target_dirs():
        for f in sorted(d.glob("*.yaml")):
            found.setdefault(f.stem, f)
    return found


def _format(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = tuple(e["loc"])
    where = "target." + ".".join(str(x) for x in loc) if loc else "target"
    if e["type"] == "extra_forbidden":
        parent = Batch if loc[:1] == ("batch",) else Target
        return f"{where}: unknown key '{loc[-1]}'{suggest(loc[-1], parent.model_fields)}"
    if e["type"] == "literal_error":
        allowed = e.get("ctx", {}).get("expected", "")
        options = [o.strip() for o in allowed.replace(" or ", ",").replace("'", "").split(",")]
        return f"{where}: {e['input']!r} is not allowed (expected {allowed}){suggest(e['input'], options)}"
    if e["type"] == "value_error":
        return f"{where}: {e['msg'].removeprefix('Value error, ')}"
    if e["type"] == "missing":
        return f"{where}: missing (every target sets it; see export/targets/README.md)"
    return f"{where}: {e['msg']} (got {e.get('input')!r})"


def target_from_dict(raw, source: str = "target") -> Target:
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a target is a YAML mapping (see export/targets/README.md)")
    try:
        return Target.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(f"{source}: {_format(e)}") from e


def load_target(name_or_path: str | Path) -> Target:
    """A target by name (export/targets/<name>.yaml) or by YAML path."""
    text = str(name_or_path)
    path = Path(text)
    by_path = text.endswith((".yaml", ".yml")) or os.sep in text or "/" in text
    if not by_path:
        known = available_targets()
        if text not in known:
            names = ", ".join(known) or "none found"
            raise RecipeError(f"unknown target '{text}'{suggest(text, known)} (available: {names}; or give a "
                              f"YAML path, or set {ENV} to a directory of targets)")
        path = known[text]
    if not path.is_file():
        raise RecipeError(f"target file {path} not found: give a name from export/targets/ or a YAML path")
    target = target_from_dict(read_yaml(path, "target"), source=str(path))
    if target.name != path.stem:
        raise RecipeError(f"{path}: target.name '{target.name}' differs from the file name '{path.stem}'; "
                          "make them equal (the name is how builds and engines refer to it)")
    return target
