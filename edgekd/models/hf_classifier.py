"""Whole pretrained Hugging Face models as teachers (`teacher.pretrained: DIR`).

A fine-tuned `*For{Sequence,Image,Audio}Classification` model is the teacher as it is: its
`id2label` names are matched to the dataset's labels, and its logits, cut to those columns in the
dataset's class order, are the teacher's logits (nothing is fitted). A dual encoder (CLIP-style:
`get_image_features` / `get_text_features`; `get_audio_features` by the same lookup) is not a model
class of its own: each tower becomes one of the multimodal teacher's encoders (models.teacher).
"""
from __future__ import annotations

import re

import torch
from torch import nn

from edgekd.errors import CheckpointError
from edgekd.models.registry import ModelOutput, register_model

# architecture suffix -> (the modality kind it reads, the transformers auto class)
CLASSIFIERS = {"ForSequenceClassification": ("text", "AutoModelForSequenceClassification"),
               "ForImageClassification": ("image", "AutoModelForImageClassification"),
               "ForAudioClassification": ("audio", "AutoModelForAudioClassification")}


def _norm(label: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(label)).strip().lower()


def match_labels(id2label: dict, classes: list[str], where: str) -> list[int]:
    """For each dataset class, the classifier output that names it (case, '_' and '-' ignored)."""
    by_name = {}
    for i, name in sorted(id2label.items(), key=lambda kv: int(kv[0])):
        by_name.setdefault(_norm(name), int(i))
    missing = [c for c in classes if _norm(c) not in by_name]
    if missing:
        theirs = ", ".join(str(v) for _, v in sorted(id2label.items(), key=lambda kv: int(kv[0]))[:12])
        raise CheckpointError(f"{where}: the classifier has no label for {', '.join(missing[:12])}"
                              f"{' …' if len(missing) > 12 else ''} (its id2label: {theirs}"
                              f"{' …' if len(id2label) > 12 else ''}); rename the data's labels or fix id2label "
                              "in its config.json")
    return [by_name[_norm(c)] for c in classes]


def classifier_kind(config) -> tuple[str, str] | None:
    """(modality kind, auto class name) when `config` describes a fine-tuned classifier."""
    for arch in getattr(config, "architectures", None) or []:
        for suffix, found in CLASSIFIERS.items():
            if arch.endswith(suffix):
                return found
    return None


def _auto(name: str):
    import transformers

    return getattr(transformers, name)


class PretrainedClassifier(nn.Module):
    """One input (the classifier's modality, through its own processor) -> its logits, reordered."""

    def __init__(self, modalities: dict, num_classes: int, encoders: dict, columns: list[int], **_):
        super().__init__()
        (self.input, source), = encoders.items()
        self.names = [self.input]
        self.kinds = {self.input: modalities[self.input].kind}
        self.auto_class = source["auto_class"]
        if source.get("hf_config"):  # rebuilding a saved teacher
            from transformers import AutoConfig

            self.net = _auto(self.auto_class).from_config(AutoConfig.for_model(**source["hf_config"]))
        else:
            self.net = _load(source, self.auto_class)
        if len(columns) != num_classes or max(columns) >= self.net.config.num_labels:
            raise CheckpointError(f"the classifier's columns {columns[:8]} do not fit its {self.net.config.num_labels} "
                                  f"labels and the {num_classes} classes; re-run the teacher stage")
        self.columns = list(columns)
        self.pad_id, self.pad_is_eos = int(source.get("pad_id", 0)), bool(source.get("pad_is_eos"))
        self.embed_dim = num_classes  # its features are its logits: the classifier has no shared embedding
        self.encoder_lr_scale = 1.0

    def encoder_sources(self) -> dict:
        return {self.input: {"hf_config": self.net.config.to_dict(), "auto_class": self.auto_class,
                             "pad_id": self.pad_id, **({"pad_is_eos": True} if self.pad_is_eos else {})}}

    def pretrained(self) -> list[str]:
        return list(self.names)

    def freeze(self, names: list[str]) -> None:
        self.net.requires_grad_(False)

    def forward(self, inputs: dict[str, torch.Tensor], keep: torch.Tensor | None = None) -> ModelOutput:
        x = inputs[self.input]
        if self.kinds[self.input] == "text":
            pad = (x == self.pad_id).long()
            mask = (pad.cumsum(1) - pad) == 0 if self.pad_is_eos else pad == 0
            logits = self.net(input_ids=x, attention_mask=mask.long()).logits
        else:
            logits = self.net(x).logits
        logits = logits[:, self.columns]
        if keep is not None:  # its one modality missing: no opinion (uniform)
            logits = logits * keep[:, :1]
        return ModelOutput(logits, logits, {self.input: logits})


def _load(source: dict, auto_class: str):
    from transformers.utils import logging

    from edgekd.models.pretrained import resolve_dir

    where = "recipe.teacher.pretrained"
    logging.disable_progress_bar()
    path = resolve_dir(source["pretrained"], where, source.get("sha256"))
    try:
        return _auto(auto_class).from_pretrained(str(path), local_files_only=True, trust_remote_code=False,
                                                 use_safetensors=True)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{where}: cannot load {path} as {auto_class} ({first})") from None


@register_model("hf_classifier", "teacher",
                "a fine-tuned Hugging Face *For{Sequence,Image,Audio}Classification model used as is "
                "(set by teacher.pretrained)")
def hf_classifier(modalities, num_classes, encoders, columns, **options):
    return PretrainedClassifier(modalities, num_classes, encoders, columns, **options)
