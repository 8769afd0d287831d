"""The recipe: one YAML file describes one run. Typed, strict, and loaded with safe_load only.

Unknown keys and misspelt registry names fail with the field path and the closest valid name.
"""
from __future__ import annotations

import hashlib
import reprlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from edgekd.errors import RecipeError
from edgekd.recipe_data import AudioFeatures, AVDigitsData, DataConfig, FolderData  # noqa: F401  (re-exported)
from edgekd.recipe_deploy import BenchConfig, BuildConfig, ExportConfig  # noqa: F401  (re-exported)
from edgekd.recipe_search import (  # noqa: F401  (re-exported)
    BUDGET_BACKENDS,
    LatencyBudget,
    SearchConfig,
    StudentBudget,
    _percentage,
)
from edgekd.schema import Strict, apply_overrides, read_yaml, suggest  # noqa: F401  (suggest: re-exported)

# --------------------------------------------------------------------------- training


class Optim(Strict):
    epochs: int = Field(10, ge=1, description="Passes over the train split.")
    batch_size: int = Field(64, ge=1, description="Samples per step.")
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate (cosine decay, linear warm-up).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    warmup_epochs: float = Field(0.5, ge=0, description="Linear warm-up length in epochs.")
    modality_dropout: float = Field(
        0.2, ge=0, lt=1, description="Chance per sample and modality of training with that modality absent."
    )
    augment: bool = Field(False, description="Audio time shift + SpecAugment masks and image shifts during training.")
    group_by_length: bool = Field(True, description="Where a pretrained text encoder cuts padding: each run of 8 "
                                  "shuffled batches sorted by text length (~1.4x faster steps); false: plain shuffle.")


class EncoderSource(Strict):
    pretrained: str | None = Field(
        None, description="Local Hugging Face model directory to load instead of building from config, or "
        "pkg:PACKAGE/SUBDIR for a model directory an installed package ships. A text encoder brings its own "
        "tokenizer from the same directory.")
    max_length: int | None = Field(
        None, gt=0, description="Text: the teacher tokenizer's token count per text (default: its "
        "model_max_length, at most 128).")
    sha256: dict[str, str] | None = Field(
        None, description="Pinned sha256 of files in the pretrained directory, e.g. {model.safetensors: ...}; "
        "a file that differs is refused.")


class TeacherConfig(Optim):
    name: str = Field("mm_transformer", description="Registered teacher model (see `edgekd models`).")
    fusion: Literal["concat", "cross_attention", "late"] = Field("cross_attention", description="How encoders meet.")
    audio_encoder: Literal["whisper", "ast"] = Field(
        "whisper", description="Audio transformer: Whisper's encoder (conv front end) or AST (patches)."
    )
    image_encoder: Literal["vit", "convnext"] = Field(
        "vit", description="Image encoder from transformers: ViT (patches + transformer) or ConvNeXt (convolutional)."
    )
    image_patch: int = Field(7, gt=0, description="ViT patch size / ConvNeXt stem stride in pixels (must divide the image size).")
    hidden: int = Field(192, gt=0, description="Transformer width.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout inside the transformer encoders.")
    layers: int = Field(4, ge=1, description="Transformer layers per encoder.")
    heads: int = Field(4, ge=1, description="Attention heads.")
    encoders: dict[str, EncoderSource] = Field(
        default_factory=dict, description="Per-modality overrides, e.g. {image: {pretrained: DIR}}."
    )
    checkpoint: str | None = Field(
        None, description="An existing teacher directory (model.safetensors + config.json); skips fitting."
    )
    pretrained: str | None = Field(
        None, description="A whole pretrained Hugging Face model as the teacher (a directory or pkg:): a dual "
        "encoder (CLIP-style get_image_features/get_text_features: its towers, fused by a trained head) or a "
        "fine-tuned *For{Sequence,Image,Audio}Classification model used as is (its id2label matched to the labels).")
    sha256: dict[str, str] | None = Field(None, description="teacher.pretrained: pinned sha256 of its files.")
    train: Literal["head", "all", "none"] | None = Field(
        None, description="With pretrained encoders: `head` freezes them, computes their embeddings once into the "
        "run directory and fits the rest; `all` fine-tunes end to end (pretrained encoders at encoder_lr_scale x "
        "lr); `none`: a pretrained classifier used as is. Default: none for a classifier, else head when any "
        "encoder is pretrained.")
    encoder_lr_scale: float = Field(0.1, gt=0, le=1, description="train: all -- the pretrained encoders' lr / lr.")
    baselines: bool = Field(True, description="Also fit scikit-learn linear baselines (TF-IDF / pixels / mel "
                            "statistics + logistic regression, and their late fusion) and report them beside the "
                            "teacher and the student.")

    @model_validator(mode="after")
    def _heads(self):
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if self.pretrained and self.checkpoint:
            raise ValueError("give teacher.pretrained (a Hugging Face model) or teacher.checkpoint (an edgekd "
                             "teacher), not both")
        return self


class StudentConfig(Strict):
    name: str = Field("fusion_small", description="Registered student model (see `edgekd models`), or auto: "
                      "searched under student.budget (docs/search.md).")
    fusion: Literal["concat", "gated", "attention", "late"] = Field("gated", description="Fusion block.")
    width: int | None = Field(None, gt=0, description="Channel width (default: the model's preset).")
    depth: int | None = Field(None, ge=1, description="Blocks per encoder (default: the model's preset).")
    dim: int | None = Field(None, ge=4, description="Embedding width of every encoder and the fusion (default: the preset's).")
    text_kernel: Literal[3, 5] | None = Field(None, description="Text: also a convolution over neighbouring tokens.")
    text_ngrams: Literal[1, 2] = Field(1, description="Text: 2 adds a hashed bag of token bigrams (fastText-style, "
                                       "hashed in the graph from the token ids) to the token mean.")
    text_buckets: int = Field(2048, ge=16, le=2**20, description="text_ngrams 2: hash buckets of the bigram table.")
    budget: StudentBudget | None = Field(None, description="student.name: auto -- what the searched student must "
                                         "fit (latency, params, size).")
    modalities: list[str] | None = Field(
        None, min_length=1,
        description="Modalities the student sees (default all; a subset is cross-modal distillation).",
    )
    text_tokenizer: Literal["own", "teacher"] = Field(
        "own", description="own: edgekd's small WordPiece vocabulary trained on the train texts; teacher: the "
        "pretrained teacher's tokenizer, its vocabulary pruned to the tokens seen in the train split.")

    @model_validator(mode="after")
    def _budget_for_auto(self):
        if self.budget is not None and self.name != "auto":
            raise ValueError("student.budget applies to student.name: auto (the search); drop it or set name: auto")
        return self


class DistillConfig(Optim):
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the label loss; 1 - alpha goes to KD.")
    temperature: float = Field(4.0, gt=0, description="Softmax temperature of the KD term.")
    beta: float = Field(1.0, ge=0, description="Weight of the fused-feature loss.")
    beta_modality: float = Field(0.0, ge=0, description="Weight of the per-modality feature losses.")
    baseline: bool = Field(True, description="Also train the same student without distillation.")
    cache: bool = Field(True, description="Cache teacher outputs once per pairing instead of running it live.")
    views: int = Field(1, ge=1, le=32, description="Train views: K > 1 adds K-1 seeded copies of the train split "
                       "whose texts lose words, cycled over epochs, each with the teacher's own (cached) targets.")
    word_dropout: float = Field(0.2, ge=0, lt=1, description="views > 1: chance of dropping each word of a text.")
    seed: int | None = Field(
        None, ge=0, le=2**32 - 1, description="Seed for the students' initial weights, batch order and modality "
        "masks (default: the recipe's seed). Vary it with one teacher to measure the KD gain across seeds.")

    @model_validator(mode="after")
    def _augment_needs_live_teacher(self):
        if self.augment and self.cache:
            raise ValueError("augment: true needs cache: false (cached teacher outputs are for un-augmented inputs)")
        return self


class PruneConfig(Optim):
    """Channel pruning with ModelOpt FastNAS, then recovery by distillation (off unless enabled)."""

    enabled: bool = Field(False, description="Run the prune stage between distill and qat.")
    flops: str | float | None = Field(None, description='FLOPs bound: "50%" of the distilled student, or a number.')
    params: str | float | None = Field(None, description='Parameter bound: "60%" or a number.')
    constraint: LatencyBudget | None = Field(
        None, description="A latency budget instead of a FLOPs/parameter bound: candidates are pruned, recovered, "
        "exported and measured on the named backend; the most accurate one that meets it wins.")
    candidates: list[str] = Field(
        ["85%", "70%", "55%", "40%", "25%"], min_length=1,
        description="FLOPs ratios tried under a latency budget (the unpruned student is always a candidate).")
    candidate_epochs: int = Field(3, ge=1, description="Short recovery epochs per candidate before it is scored.")
    channel_divisor: int | None = Field(
        None, ge=1, description="Channel counts in multiples of this; null: 8 on a CPU backend, else the build "
        "target's channel_divisor (export/targets/*.yaml).")
    calib_batches: int = Field(8, ge=1, description="Train batches of 64 that re-estimate BatchNorm per candidate.")
    epochs: int = Field(10, ge=1, description="Recovery distillation epochs (the chosen candidate's, under a budget).")

    @model_validator(mode="after")
    def _bound(self):
        given = [(k, v) for k, v in (("flops", self.flops), ("params", self.params), ("constraint", self.constraint))
                 if v is not None]
        if self.enabled and len(given) != 1:
            raise ValueError("give exactly one of prune.flops, prune.params or prune.constraint (e.g. flops: 50%)")
        for k, v in given:
            if isinstance(v, str):
                _percentage(f"prune.{k}", v)
            elif isinstance(v, float | int) and v <= 0:
                raise ValueError(f"prune.{k}: {v} must be a positive bound")
        for v in self.candidates:
            _percentage("prune.candidates", v)
        return self


class QatConfig(Optim):
    """Fold BatchNorm, quantize to INT8 with ModelOpt (TensorRT's explicit-quantization form),
    calibrate, then fine-tune with the teacher still teaching (QAD) or with labels only (QAT)."""

    epochs: int = Field(4, ge=1, description="Fine-tuning passes over the train split.")
    lr: float = Field(3e-4, gt=0, description="Peak AdamW learning rate (about a tenth of the distill lr).")
    warmup_epochs: float = Field(0.0, ge=0, description="Linear warm-up length in epochs.")
    method: Literal["qad", "qat"] = Field(
        "qad", description="qad: distillation loss against the cached teacher outputs plus labels; qat: labels only."
    )
    teacher: Literal["distill", "student"] = Field(
        "distill", description="QAD targets: `distill` = the distill stage's cached teacher outputs; `student` = the "
        "FP32 student itself on the same batch and modality mask (ModelOpt's QAD: the INT8 model learns to "
        "reproduce its FP32 self).")
    compare: bool = Field(True, description="Also fine-tune with the other method and report both side by side.")
    algorithm: Literal["max", "mse", "smoothquant"] = Field(
        "max", description="ModelOpt INT8 calibration algorithm (smoothquant acts on Linear layers only)."
    )
    calib_batches: int = Field(16, ge=1, description="Real train batches (of batch_size) used for calibration.")
    exclude: list[str] = Field(default_factory=list, description="Module-name patterns (fnmatch, e.g. "
                               "'encoders.image.body.0.*' or '*.out') kept unquantized.")
    quantize_embeddings: bool = Field(False, description="Quantize nn.Embedding layers too (off: kept in FP32).")
    alpha: float | None = Field(None, ge=0, le=1, description="QAD: weight of the label loss (default: distill.alpha).")
    temperature: float | None = Field(None, gt=0, description="QAD: KD temperature (default: distill.temperature).")
    beta: float | None = Field(
        None, ge=0, description="QAD: weight of the fused-feature loss through the distill stage's trained projector "
        "(default: distill.beta).")

    @model_validator(mode="after")
    def _no_augment(self):
        if self.augment:
            raise ValueError("qat.augment must be false (the cached teacher outputs are for un-augmented inputs)")
        return self


class Recipe(Strict):
    name: str = Field(description="Run name; the run directory defaults to runs/<name>.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed for splits, pairings, init and batch order.")
    threads: int = Field(1, ge=1, description="PyTorch intra-op threads (1 is fastest on busy 2-core hosts).")
    data: DataConfig
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    distill: DistillConfig = DistillConfig()
    search: SearchConfig = SearchConfig()
    prune: PruneConfig = PruneConfig()
    qat: QatConfig = QatConfig()
    export: ExportConfig = ExportConfig()
    build: BuildConfig = BuildConfig()
    bench: BenchConfig = BenchConfig()

    @model_validator(mode="after")
    def _modality_names(self):
        known = ["image", "audio"] if self.data.name == "avdigits" else list(self.data.modalities)
        for m in self.student.modalities or []:
            if m not in known:
                raise ValueError(f"student.modalities: unknown modality '{m}'{suggest(m, known)} (the data has {known})")
        for m in self.teacher.encoders:
            if m not in known:
                raise ValueError(f"teacher.encoders: unknown modality '{m}'{suggest(m, known)} (the data has {known})")
            kind = m if self.data.name == "avdigits" else self.data.modalities[m]  # avdigits: image, audio
            if self.teacher.encoders[m].max_length is not None and kind != "text":
                raise ValueError(f"teacher.encoders.{m}.max_length: only text encoders take one ({m} is {kind})")
        texts = [] if self.data.name == "avdigits" else [m for m in self.student.modalities or known
                                                           if self.data.modalities[m] == "text"]
        if self.distill.views > 1 and not texts:
            raise ValueError(f"distill.views: {self.distill.views} augments the texts the student reads, and it reads "
                             "none (views need a text modality of a folder dataset): set views: 1")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\") or v.startswith("."):
            raise ValueError("must be a plain name (no slashes, not starting with '.')")
        return v


# --------------------------------------------------------------------------- loading


def _model_at(path: tuple, model=Recipe):
    """The pydantic model class a location in the recipe refers to (for suggestions)."""
    cls = model
    for part in path:
        if isinstance(part, int) or cls is None:
            return None
        field = cls.model_fields.get(part) if hasattr(cls, "model_fields") else None
        if field is None:
            return None
        ann = field.annotation
        cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return cls


_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict, _short.maxlevel = 60, 60, 4, 4, 2


def _format(err: ValidationError, raw: dict) -> str:
    e = err.errors()[0]
    loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x in ("avdigits", "folder")))
    where = "recipe." + ".".join(str(x) for x in loc) if loc else "recipe"
    if e["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        if parent is None and loc[:1] == ("data",):
            kind = (raw.get("data") or {}).get("name", "avdigits")
            parent = _model_at(loc[1:-1], FolderData if kind == "folder" else AVDigitsData)
        options = parent.model_fields if parent is not None else []
        return f"{where}: unknown key '{loc[-1]}'{suggest(loc[-1], options)}"
    if e["type"] == "union_tag_invalid":
        tag = (raw.get("data") or {}).get("name") if isinstance(raw.get("data"), dict) else None
        return (f"{where}: unknown dataset {_short.repr(tag)}: set data.name to avdigits or folder"
                + suggest(tag, ["avdigits", "folder"]))
    if e["type"] == "union_tag_not_found":
        return f"{where}.name: missing; set data.name to avdigits or folder"
    if e["type"] == "missing":
        return f"{where}: missing; add this field to the recipe (README: Recipes)"
    if e["type"] == "literal_error":
        allowed = e.get("ctx", {}).get("expected", "")
        options = [o.strip().strip("'") for o in allowed.replace(" or ", ",").split(",")]
        return f"{where}: {_short.repr(e['input'])} is not allowed (expected {allowed}){suggest(e['input'], options)}"
    if e["type"] == "value_error":  # our own validators: the message already names the fields
        msg = e["msg"].removeprefix("Value error, ")
        return f"{where}: {msg}" if loc else f"recipe.{msg}"
    return f"{where}: {e['msg']} (got {_short.repr(e.get('input'))})"


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} not found: pass a YAML file such as recipes/avdigits.yaml")
    return recipe_from_dict(read_yaml(path), overrides, source=str(path))


def recipe_from_dict(raw: Any, overrides: list[str] | None = None, source: str = "recipe") -> Recipe:
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping with name, data, teacher, student, distill")
    raw = apply_overrides(raw, list(overrides or []))
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(f"{source}: {_format(e, raw)}") from e
    return recipe


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def recipe_hash(recipe: Recipe) -> str:
    return hashlib.sha256(dump_recipe(recipe).encode()).hexdigest()
