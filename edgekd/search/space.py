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


@dataclass(frozen=True)
class Space:
    kinds: dict[str, str]  # the student's modalities -> kind (image, audio, text, vector)
    teacher_tokenizer: bool  # a pretrained teacher text encoder whose tokenizer the student may take
    max_epochs: int

    def sample(self, trial) -> dict:
        """{"student": {...}, "distill": {...}}: recipe fields, for trial `trial`."""
        kinds = set(self.kinds.values())
        text, conv, multi = "text" in kinds, bool(kinds & {"image", "audio"}), len(self.kinds) > 1
        s = {"name": trial.suggest_categorical("preset", PRESETS),
             "dim": trial.suggest_categorical("dim", (32, 48, 64, 96, 128))}
        if conv:
            s["width"] = trial.suggest_categorical("width", (8, 16, 24, 32))
        s["fusion"] = trial.suggest_categorical("fusion", FUSIONS) if multi else "gated"
        if text:
            s["text_kernel"] = trial.suggest_categorical("text_kernel", (None, 3, 5))
            s["text_ngrams"] = trial.suggest_categorical("text_ngrams", (1, 2))
            if s["text_ngrams"] == 2:
                s["text_buckets"] = trial.suggest_categorical("text_buckets", (1024, 2048, 4096, 8192))
            if self.teacher_tokenizer:
                s["text_tokenizer"] = trial.suggest_categorical("text_tokenizer", ("own", "teacher"))
        low = max(2, self.max_epochs // 4)
        d = {"epochs": trial.suggest_int("epochs", low, self.max_epochs),
             "lr": trial.suggest_float("lr", 1e-3, 1e-2, log=True),
             "alpha": trial.suggest_float("alpha", 0.1, 0.9),
             "temperature": trial.suggest_float("temperature", 1.0, 8.0, log=True),
             "beta": trial.suggest_float("beta", 0.0, 2.0)}
        if multi:
            d["modality_dropout"] = trial.suggest_float("modality_dropout", 0.0, 0.5)
        if text:
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
