"""Typed YAML configuration shared by recipes, deployment targets and budget files (torch-free).

`Strict` models refuse unknown keys and NaN/inf; `read_yaml` is `yaml.safe_load` only, with a
one-line error; `suggest` gives the "did you mean" hint for a misspelt name; `apply_overrides` applies
`--set a.b=c` items, typed as YAML would type them.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from edgekd.errors import RecipeError


class Strict(BaseModel):
    # allow_inf_nan=False: `.inf` / `.nan` in YAML are floats, and a NaN slips through every gt/ge bound
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def suggest(word: str, options) -> str:
    """The "; did you mean 'x'?" hint for the closest option, or "" when none is close."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def read_yaml(path: Path, what: str = "recipe") -> Any:
    """`yaml.safe_load` of a file; a syntax error is a one-line RecipeError naming `what` and the file."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise RecipeError(f"{what} {path} is not UTF-8 text (byte {e.object[e.start]:#04x} on line {line}); "
                          "save it as UTF-8") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RecipeError(f"{what} {path} is not valid YAML ({first}); fix the syntax") from e


def parse_value(text: str) -> Any:
    """A --set value, typed the way YAML would type it."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set distill.epochs=3")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p, {}), dict):
                raise RecipeError(f"--set {key}: '{p}' is not a section; set it whole, e.g. --set {p}=VALUE")
            node = node.setdefault(p, {})
        node[parts[-1]] = parse_value(value)
    return raw
