"""What `student: auto` searches: every student preset and its size, every fusion, the text branch,
and the distillation settings, sampled per Optuna trial.

Parameters that mean nothing for the data are not sampled (no fusion for one modality, no text
branch without text, no teacher tokenizer without a pretrained teacher text encoder), so the sampler
spends no trials on them. A sampled point is two recipe sections, `student` and `distill`: the
winner is trained by the distill stage exactly as if it had been written in the recipe.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

PRESETS = ("fusion_tiny", "fusion_small", "fusion_lean", "fusion_base")
FUSIONS = ("concat", "gated", "attention", "late")
ARCHITECTURE = ("name", "fusion", "width", "dim", "text_kernel", "text_ngrams", "text_buckets", "text_tokenizer")
# a generic first trial (the registry's lean preset, the recipe defaults' distillation): the sampler
# starts from a sound student instead of random ones only
FIRST = {"preset": "fusion_lean", "dim": 64, "width": 16, "fusion": "late", "text_kernel": None, "text_ngrams": 2,
         "text_buckets": 2048, "text_tokenizer": "own", "epochs": 30, "lr": 0.003, "alpha": 0.5, "temperature": 4.0,
         "beta": 1.0, "modality_dropout": 0.2, "views": 1}
TEXT = ("text_kernel", "text_ngrams", "text_buckets", "views", "word_dropout")


@dataclass(frozen=True)
class Space:
    kinds: dict[str, str]  # the student's modalities -> kind (image, audio, text, vector)
    teacher_tokenizer: bool  # a pretrained teacher text encoder whose tokenizer the student may take
    max_epochs: int

    def applies(self, param: str) -> bool:
        """Whether sampling `param` means anything for these modalities and this teacher."""
        kinds = set(self.kinds.values())
        if param in TEXT:
            return "text" in kinds
        if param == "text_tokenizer":
            return "text" in kinds and self.teacher_tokenizer
        if param in ("fusion", "modality_dropout"):
            return len(self.kinds) > 1
        return param != "width" or bool(kinds & {"image", "audio"})

    def first(self) -> dict:
        """FIRST's params that apply here, its epochs within this search's range."""
        params = {k: v for k, v in FIRST.items() if self.applies(k)}
        params["epochs"] = max(self.min_epochs, min(params["epochs"], self.max_epochs))
        return params

    @property
    def min_epochs(self) -> int:
        return max(2, self.max_epochs // 4)

    def sample(self, trial) -> dict:
        """{"student": {...}, "distill": {...}}: recipe fields, for trial `trial`."""
        s = {"name": trial.suggest_categorical("preset", PRESETS),
             "dim": trial.suggest_categorical("dim", (32, 48, 64, 96, 128))}
        if self.applies("width"):
            s["width"] = trial.suggest_categorical("width", (8, 16, 24, 32))
        s["fusion"] = trial.suggest_categorical("fusion", FUSIONS) if self.applies("fusion") else "gated"
        if self.applies("text_ngrams"):
            s["text_kernel"] = trial.suggest_categorical("text_kernel", (None, 3, 5))
            s["text_ngrams"] = trial.suggest_categorical("text_ngrams", (1, 2))
            if s["text_ngrams"] == 2:
                s["text_buckets"] = trial.suggest_categorical("text_buckets", (1024, 2048, 4096, 8192))
        if self.applies("text_tokenizer"):
            s["text_tokenizer"] = trial.suggest_categorical("text_tokenizer", ("own", "teacher"))
        d = {"epochs": trial.suggest_int("epochs", self.min_epochs, self.max_epochs),
             "lr": trial.suggest_float("lr", 1e-3, 1e-2, log=True),
             "alpha": trial.suggest_float("alpha", 0.1, 0.9),
             "temperature": trial.suggest_float("temperature", 1.0, 8.0, log=True),
             "beta": trial.suggest_float("beta", 0.0, 2.0)}
        if self.applies("modality_dropout"):
            d["modality_dropout"] = trial.suggest_float("modality_dropout", 0.0, 0.5)
        if self.applies("views"):
            d["views"] = trial.suggest_categorical("views", (1, 4))
            if d["views"] > 1:
                d["word_dropout"] = trial.suggest_categorical("word_dropout", (0.1, 0.2, 0.3))
        return {"student": s, "distill": d}


def architecture(point: dict) -> str:
    """The part of a point that decides latency and size (one measurement per architecture)."""
    s = point["student"]
    return json.dumps({k: s.get(k) for k in ARCHITECTURE}, sort_keys=True)


def describe(point: dict) -> str:
    """One short line: `fusion_lean w16 d64 late, text k3 +bigrams(2048) teacher-vocab`."""
    s = point["student"]
    parts = [s["name"], *([f"w{s['width']}"] if s.get("width") else []), f"d{s['dim']}", s["fusion"]]
    if "text_ngrams" in s:
        text = [f"k{s['text_kernel']}"] if s.get("text_kernel") else []
        text += [f"+bigrams({s['text_buckets']})"] if s["text_ngrams"] == 2 else []
        text += ["teacher-vocab"] if s.get("text_tokenizer") == "teacher" else []
        parts.append("text " + (" ".join(text) or "mean"))
    return " ".join(parts)
