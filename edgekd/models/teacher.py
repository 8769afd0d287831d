"""The teacher: one transformers encoder per modality, then fusion and a classifier.

ViT for images, a Whisper-style encoder (convolutional front end + transformer) or AST for log-mel
spectrograms, a BERT-style encoder for token ids (all built
from a config, so nothing is downloaded, or loaded from a local Hugging Face model directory),
and an MLP for vectors. Fusion is concatenation of the pooled encodings, a learned query that
cross-attends over every modality's tokens, or late fusion (summed per-modality logits).
"""
from __future__ import annotations

import torch
from torch import nn

from edgekd.contract import modality_of
from edgekd.data.base import ModalitySpec
from edgekd.errors import CheckpointError
from edgekd.models.registry import ModelOutput, register_model


def _load_pretrained(source: dict, modality: str):
    from edgekd.models.pretrained import load_encoder, resolve_dir

    where = f"recipe.teacher.encoders.{modality}.pretrained"
    return load_encoder(resolve_dir(source["pretrained"], where, source.get("sha256")), where)


def _from_config(config, auto: bool):
    """Rebuild an encoder from its stored HF config (no weights, no network)."""
    from transformers import AutoModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    if config.model_type == "whisper":
        return WhisperEncoder(config)
    if auto or config.model_type in ("audio-spectrogram-transformer", "convnext"):  # no optional pooling layer
        return AutoModel.from_config(config)
    return AutoModel.from_config(config, add_pooling_layer=False)


def _new_encoder(spec: ModalitySpec, hidden: int, layers: int, heads: int, audio_encoder: str, image_patch: int,
                 dropout: float, image_encoder: str = "vit"):
    """A fresh transformers encoder for one modality, sized by the recipe."""
    from transformers import ASTConfig, ASTModel, BertConfig, BertModel, ViTConfig, ViTModel, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=4 * hidden, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    if spec.kind == "image" and image_encoder == "convnext":
        from transformers import ConvNextConfig, ConvNextModel

        # three stages of two blocks, widths hidden/2 -> hidden -> 2*hidden; the stem's patch is
        # image_patch (2 keeps 14x14 positions for a 28x28 digit)
        widths = [max(8, hidden // 2), hidden, 2 * hidden]
        return ConvNextModel(ConvNextConfig(num_channels=spec.shape[0], patch_size=image_patch, num_stages=3,
                                            hidden_sizes=widths, depths=[2, 2, 2], drop_path_rate=dropout,
                                            image_size=spec.shape[1]))
    if spec.kind == "image":
        c, h, _ = spec.shape
        patch = image_patch if h % image_patch == 0 else 1
        return ViTModel(ViTConfig(image_size=h, patch_size=patch, num_channels=c, **common), add_pooling_layer=False)
    if spec.kind == "audio" and audio_encoder == "whisper":
        frames, mels = spec.shape
        return WhisperEncoder(WhisperConfig(
            num_mel_bins=mels, d_model=hidden, encoder_layers=layers, encoder_attention_heads=heads,
            encoder_ffn_dim=4 * hidden, max_source_positions=(frames + 1) // 2, decoder_layers=1,
            dropout=dropout, attention_dropout=dropout))
    if spec.kind == "audio":
        frames, mels = spec.shape
        patch = min(16, mels, frames)
        return ASTModel(ASTConfig(num_mel_bins=mels, max_length=frames, patch_size=patch,
                                  frequency_stride=max(1, patch // 2), time_stride=max(1, patch // 2), **common))
    return BertModel(BertConfig(vocab_size=max(spec.vocab_size, 8), max_position_embeddings=max(64, spec.shape[0]),
                                **common), add_pooling_layer=False)


# a dual encoder's towers: the method that gives one modality's embedding, and the submodules of it
# (an encoder keeps its own tower and drops the others, so each modality's weights are stored once)
TOWERS = {"text": ("get_text_features", ("text_model", "text_projection")),
          "image": ("get_image_features", ("vision_model", "visual_projection")),
          "audio": ("get_audio_features", ("audio_model", "audio_projection"))}


def keep_tower(model, kind: str):
    for other, (_, parts) in TOWERS.items():
        for part in parts if other != kind else ():
            if getattr(model, part, None) is not None:
                setattr(model, part, None)
    return model


class HFEncoder(nn.Module):
    """Wraps a transformers encoder: input tensor -> (tokens (B, L, H), padding mask (B, L) or None).

    A pretrained encoder gives one embedding per sample (B, 1, H) -- what the frozen-encoder cache
    stores and what a cached embedding in place of the raw input stands for. Its inputs are either
    its own processor's (`native`: pixel_values, input_features, ...) or edgekd's (older teachers)."""

    def __init__(self, spec: ModalitySpec, hidden: int, layers: int, heads: int, audio_encoder: str = "whisper",
                 source: dict | None = None, image_patch: int = 7, dropout: float = 0.1, image_encoder: str = "vit"):
        super().__init__()
        from transformers import AutoConfig

        self.kind = spec.kind
        source = source or {}
        # `auto`: the encoder came from a user's model directory and keeps its own head layout
        self.auto = bool(source.get("pretrained") or source.get("auto"))
        self.tower = source.get("tower")  # a dual encoder's tower (CLIP-style get_<kind>_features)
        self.native = bool(source.get("native"))  # inputs from the model's own processor
        # text: mean of the token states, as sentence-transformers pools; image/audio: the model's own pooling
        self.pooled = bool(source.get("pooled", self.tower or (self.auto and (spec.kind == "text" or self.native))))
        self.pad_id = int(source.get("pad_id", 0))
        self.pad_is_eos = bool(source.get("pad_is_eos"))
        self.fixed_length = bool(source.get("fixed_length"))  # SigLIP: every text its full length, no mask
        self.input_shape = tuple(spec.shape)
        if source.get("hf_config"):  # rebuilding a saved teacher
            self.net = _from_config(AutoConfig.for_model(**source["hf_config"]), self.auto)
        elif source.get("pretrained"):
            self.net = _load_pretrained(source, modality_of(spec.name))
        else:
            self.net = _new_encoder(spec, hidden, layers, heads, audio_encoder, image_patch, dropout, image_encoder)
        if self.tower:
            keep_tower(self.net, self.tower)
        cfg = self.net.config
        self.model_type = cfg.model_type
        if spec.kind == "audio" and not self.native and getattr(cfg, "num_mel_bins", spec.shape[1]) != spec.shape[1]:
            raise CheckpointError(f"audio encoder expects {cfg.num_mel_bins} mel bins but the data has "
                                  f"{spec.shape[1]}; set data.audio.n_mels: {cfg.num_mel_bins}")
        out = self.out_dim()
        self.proj = nn.Identity() if out == hidden else nn.Linear(out, hidden)

    def out_dim(self) -> int:
        cfg = self.net.config
        if self.tower:
            sub = getattr(cfg, f"{'vision' if self.tower == 'image' else self.tower}_config", None)
            return getattr(cfg, "projection_dim", None) or sub.hidden_size
        return getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None) or cfg.hidden_sizes[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pooled:  # (B, 1, H): a cached embedding (B, D) in place of the input, or the input to embed
            cached = x.is_floating_point() and (self.kind == "text" or tuple(x.shape[1:]) != self.input_shape)
            return self.proj(x if cached else self.embed(x))[:, None], None
        cfg = self.net.config
        if self.kind == "image":
            if getattr(cfg, "num_channels", 1) != x.shape[1]:
                x = x.expand(-1, cfg.num_channels, -1, -1)
            if self.model_type == "convnext":  # (B, C, H, W) feature map -> (B, H*W, C) tokens
                return self.proj(self.net(pixel_values=x).last_hidden_state.flatten(2).transpose(1, 2)), None
            size = getattr(cfg, "image_size", x.shape[-1])
            tokens = self.net(pixel_values=x, interpolate_pos_encoding=size != x.shape[-1]).last_hidden_state
            return self.proj(tokens), None
        if self.kind == "audio":  # x: (B, T, n_mels)
            # both audio encoders have a fixed frame count (position tables): pad or cut to it
            want = 2 * cfg.max_source_positions if self.model_type == "whisper" else cfg.max_length
            x = nn.functional.pad(x, (0, 0, 0, max(0, want - x.shape[1])))[:, :want]
            if self.model_type == "whisper":
                return self.proj(self.net(input_features=x.transpose(1, 2)).last_hidden_state), None
            return self.proj(self.net(input_values=x).last_hidden_state), None
        pad = x == self.pad_id  # token id 0 is [PAD] in edgekd's own vocabularies
        tokens = self.net(input_ids=x, attention_mask=(~pad).long()).last_hidden_state
        return self.proj(tokens), pad

    @property
    def cuts_padding(self) -> bool:
        """Whether a batch of texts runs only to its longest text (embed below), so that batches of
        similar lengths cost less (edgekd.distill.lengths)."""
        return self.kind == "text" and self.pooled and not self.fixed_length

    def text_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """Which token ids are real. Where the pad token is also end-of-text (CLIP), the first one is."""
        pad = (ids == self.pad_id).long()
        return (pad.cumsum(1) - pad) == 0 if self.pad_is_eos else pad == 0

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D): one embedding per sample, pooled as the pretrained model pools."""
        if self.kind == "text":
            keep = self.text_mask(x)
            if not self.fixed_length and not torch.onnx.is_in_onnx_export() and keep.any():  # right-padded: cut
                width = int(keep.sum(1).max())  # (the graph an export traces keeps the full width)
                x, keep = x[:, :width], keep[:, :width]
        if self.tower:
            get = getattr(self.net, TOWERS[self.tower][0])
            if self.kind != "text":
                out = get(x)
            else:
                out = get(input_ids=x) if self.fixed_length else get(input_ids=x, attention_mask=keep.long())
            return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 returns an output
        if self.kind == "text":
            tokens = self.net(input_ids=x, attention_mask=keep.long()).last_hidden_state
            w = keep.to(tokens.dtype)[..., None]
            return (tokens * w).sum(1) / w.sum(1).clamp(min=1.0)
        out = self.net(x)
        if self.model_type == "convnext":  # its own pooled, layer-normed feature
            return out.pooler_output
        return _pool(out.last_hidden_state, None, self.model_type)


class VectorEncoder(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.LayerNorm(hidden))

    def forward(self, x):
        return self.net(x)[:, None], None  # (B, 1, H)


def _pool(tokens: torch.Tensor, pad: torch.Tensor | None, kind: str) -> torch.Tensor:
    if kind == "audio-spectrogram-transformer":  # AST: mean of the [CLS] and distillation tokens
        return (tokens[:, 0] + tokens[:, 1]) / 2
    if kind == "vit":
        return tokens[:, 0]
    if pad is None:
        return tokens.mean(dim=1)
    w = (~pad).float()[..., None]
    return (tokens * w).sum(1) / w.sum(1).clamp(min=1.0)


class MultimodalTeacher(nn.Module):
    def __init__(self, modalities: dict[str, ModalitySpec], num_classes: int, hidden: int = 192,
                 layers: int = 4, heads: int = 4, fusion: str = "cross_attention", encoders: dict | None = None,
                 audio_encoder: str = "whisper", image_patch: int = 7, dropout: float = 0.1,
                 image_encoder: str = "vit"):
        super().__init__()
        encoders = encoders or {}
        self.names = list(modalities)
        self.kinds = {n: s.kind for n, s in modalities.items()}
        self.fusion = fusion
        self.encoders = nn.ModuleDict({
            n: VectorEncoder(s.shape[0], hidden) if s.kind == "vector"
            else HFEncoder(s, hidden, layers, heads, audio_encoder, encoders.get(n), image_patch, dropout, image_encoder)
            for n, s in modalities.items()
        })
        if fusion == "concat":
            self.fuse = nn.Sequential(nn.Linear(hidden * len(self.names), hidden), nn.GELU(), nn.LayerNorm(hidden))
        elif fusion == "late":  # per-modality classifiers whose logits are summed (product of experts)
            self.late_heads = nn.ModuleDict({n: nn.Linear(hidden, num_classes) for n in self.names})
        else:
            self.query = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
            self.type_emb = nn.Parameter(torch.zeros(len(self.names), hidden))
            # a learned key that is never masked: a sample whose every token is padding or absent
            # (empty text with the other modality dropped) would otherwise attend to nothing -> NaN
            self.null_kv = nn.Parameter(torch.zeros(1, 1, hidden))
            self.attn = nn.MultiheadAttention(hidden, heads, dropout=0.1, batch_first=True)
            self.ffn = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, 2 * hidden), nn.GELU(),
                                     nn.Linear(2 * hidden, hidden))
            self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, num_classes) if fusion != "late" else nn.Identity()
        self.embed_dim = hidden
        self.encoder_lr_scale = 1.0

    def encoder_sources(self) -> dict:
        """What rebuilds each transformers encoder offline (stored in the teacher's config.json)."""
        return {n: {"hf_config": e.net.config.to_dict(), "auto": e.auto, "pooled": e.pooled, "pad_id": e.pad_id,
                    **{k: v for k, v in (("tower", e.tower), ("native", e.native), ("pad_is_eos", e.pad_is_eos),
                                                    ("fixed_length", e.fixed_length)) if v}}
                for n, e in self.encoders.items() if isinstance(e, HFEncoder)}

    def pretrained(self) -> list[str]:
        """The inputs whose encoder came from a user's model directory."""
        return [n for n, e in self.encoders.items() if isinstance(e, HFEncoder) and e.auto]

    def freeze(self, names: list[str]) -> None:
        """teacher.train: head -- these encoders keep their pretrained weights."""
        for n in names:
            self.encoders[n].net.requires_grad_(False)

    def param_groups(self, lr: float) -> list[dict]:
        """teacher.train: all -- pretrained encoders at `encoder_lr_scale` x lr, the rest at lr."""
        slow = [p for n in self.pretrained() for p in self.encoders[n].net.parameters() if p.requires_grad]
        ids = {id(p) for p in slow}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": rest}] + ([{"params": slow, "lr": lr * self.encoder_lr_scale}] if slow else [])

    def forward(self, inputs: dict[str, torch.Tensor], keep: torch.Tensor | None = None) -> ModelOutput:
        """`keep` (B, M) marks which modalities each sample has (1) or lacks (0); None = all."""
        pooled, all_tokens, all_pads = {}, [], []
        for i, name in enumerate(self.names):
            tokens, pad = self.encoders[name](inputs[name])  # (B, L, H), (B, L) or None
            enc = self.encoders[name]  # a pooled encoder's one token is its embedding already
            pooled[name] = _pool(tokens, pad, "mlp" if getattr(enc, "pooled", True) else enc.model_type)
            if pad is None:
                pad = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
            if keep is not None:
                pad = pad | (keep[:, i : i + 1] < 0.5)
                pooled[name] = pooled[name] * keep[:, i : i + 1]
            all_tokens.append(tokens + self.type_emb[i] if self.fusion == "cross_attention" else tokens)
            all_pads.append(pad)
        if self.fusion == "concat":
            fused = self.fuse(torch.cat([pooled[n] for n in self.names], dim=-1))
        elif self.fusion == "late":
            logits = sum(self.late_heads[n](pooled[n]) * (1.0 if keep is None else keep[:, i : i + 1])
                         for i, n in enumerate(self.names))
            return ModelOutput(logits, torch.stack([pooled[n] for n in self.names], 1).mean(1), pooled)
        else:
            b = all_tokens[0].shape[0]
            kv = torch.cat([self.null_kv.expand(b, -1, -1)] + all_tokens, dim=1)  # (B, 1 + sum L, H)
            all_pads = [torch.zeros(b, 1, dtype=torch.bool, device=kv.device)] + all_pads
            q = self.query.expand(kv.shape[0], -1, -1)
            attended, _ = self.attn(q, kv, kv, key_padding_mask=torch.cat(all_pads, dim=1))
            h = q + attended
            fused = self.norm(h + self.ffn(h))[:, 0]  # (B, H)
        return ModelOutput(self.head(fused), fused, pooled)


@register_model("mm_transformer", "teacher",
                "ViT or ConvNeXt (image) / Whisper-encoder or AST (audio log-mel) / BERT (text) / MLP (vector) encoders "
                "from transformers; concat, cross-attention or late fusion")
def mm_transformer(modalities, num_classes, hidden=192, layers=4, heads=4, fusion="cross_attention", encoders=None,
                   audio_encoder="whisper", image_patch=7, dropout=0.1, image_encoder="vit"):
    return MultimodalTeacher(modalities, num_classes, hidden, layers, heads, fusion, encoders, audio_encoder,
                             image_patch, dropout, image_encoder)
