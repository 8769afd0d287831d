"""Save and rebuild models as safetensors + a JSON config (no pickles, no network).

The config carries everything needed to rebuild the architecture: registry name, constructor
options, modality specs, class names, and for transformers encoders their full HF config.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from edgekd.data.base import ModalitySpec
from edgekd.errors import CheckpointError, RecipeError
from edgekd.files import atomic_path, atomic_write_json
from edgekd.models import create_model

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save_model(model, directory: Path, *, role: str, name: str, options: dict, modalities: dict[str, ModalitySpec],
               classes: list[str], data_fingerprint: str | None = None, processors: dict | None = None) -> dict[str, Path]:
    """Weights + config.json. `processors`: the teacher's own input processors (modality -> the
    parameters edgekd.data.teacher_inputs encodes with), so later stages feed it the same inputs."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    config = {"format": "edgekd-model/1", "role": role, "name": name, "options": options,
              "modalities": {n: asdict(s) for n, s in modalities.items()}, "classes": classes,
              "data_fingerprint": data_fingerprint}
    if processors:
        config["processors"] = processors
    if hasattr(model, "encoder_sources"):
        config["options"] = {**options, "encoders": model.encoder_sources()}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    atomic_write_json(directory / CONFIG, config)
    return {"weights": directory / WEIGHTS, "config": directory / CONFIG}


def read_config(path: Path) -> dict:
    problem = (f"{path} is not an edgekd model config; point at a directory written by "
               "`edgekd teacher` (model.safetensors + config.json)")
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(problem) from e
    if not isinstance(config, dict) or config.get("format") != "edgekd-model/1":
        raise CheckpointError(problem)
    return config


def load_model(weights: Path, config_path: Path):
    """Rebuild and load a saved model; returns (model, config)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_config(config_path)
    try:
        modalities = {n: ModalitySpec(**{**s, "shape": tuple(s["shape"])}) for n, s in config["modalities"].items()}
        model = create_model(config["name"], config["role"], modalities=modalities,
                             num_classes=len(config["classes"]), **config["options"])
    except (KeyError, TypeError, ValueError, RecipeError) as e:
        raise CheckpointError(f"{config_path} describes a model this edgekd cannot rebuild ({e}); "
                              "re-create it with this version") from e
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is not a readable safetensors file ({e}); re-create it") from e
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # strict=False still refuses tensors of another shape
        first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e).splitlines()[0])
        raise CheckpointError(f"{weights} does not match {config_path} ({first[:200]}); re-create the model") from e
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not match {config_path} (missing {list(missing)[:3]}, "
                              f"unexpected {list(unexpected)[:3]}); re-create the model")
    model.eval()
    return model, config


def load_model_dir(directory: Path):
    directory = Path(directory).expanduser()
    if not (directory / WEIGHTS).is_file() or not (directory / CONFIG).is_file():
        raise CheckpointError(f"{directory} is not an edgekd model directory (needs {WEIGHTS} and {CONFIG})")
    return load_model(directory / WEIGHTS, directory / CONFIG)
