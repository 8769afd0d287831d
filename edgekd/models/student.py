"""Small fused students: one light encoder per modality, a fusion block, a linear head.

Only export-friendly ops (Conv/BN/ReLU/Linear/Embedding/matmul/softmax, integer Mul/Add/Mod for
hashed bigrams): no EmbeddingBag, no data-dependent shapes, so the ONNX graph is static apart from the batch axis.
"""
from __future__ import annotations

import torch
from torch import nn

from edgekd.data.base import ModalitySpec
from edgekd.models.registry import ModelOutput, register_model


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ConvEncoder(nn.Module):
    """Depthwise-separable CNN: stem, then `depth` (depthwise 3x3 + pointwise 1x1) blocks."""

    def __init__(self, in_ch: int, width: int, depth: int, dim: int, stem_stride: int = 1):
        super().__init__()
        layers, c = [_conv_bn(in_ch, width, 3, stem_stride)], width
        for i in range(depth):
            cout = min(c * 2, width * 4)
            layers += [_conv_bn(c, c, 3, stride=2 if i < 3 else 1, groups=c), _conv_bn(c, cout, 1)]
            c = cout
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(c, dim)

    def features(self, x):  # (B, C, H, W) -> (B, c), before the projection
        # global pooling (not .mean: ReduceMean) so onnxruntime runs it as an INT8 kernel in NHWC
        return nn.functional.adaptive_avg_pool2d(self.body(x), 1).flatten(1)

    @property
    def proj(self) -> nn.Linear:
        return self.out

    def forward(self, x):
        return self.out(self.features(x))  # (B, dim)


def _conv1d_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm1d(cout), nn.ReLU(inplace=True))


class AudioEncoder(nn.Module):
    """Temporal CNN over log-mel frames with mel bands as channels (TC-ResNet style): pooling a 2-D
    CNN over frequency threw away the band layout and generalised far worse to unseen speakers."""

    def __init__(self, n_mels: int, width: int, depth: int, dim: int, stem_stride: int = 1):
        super().__init__()
        c = 2 * width
        layers = [_conv1d_bn(n_mels, c, 3, stem_stride)]
        for _ in range(depth):
            cout = min(c * 2, width * 8)
            layers += [_conv1d_bn(c, c, 3, stride=2, groups=c), _conv1d_bn(c, cout, 1)]
            c = cout
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(c, dim)

    def features(self, x):  # (B, T, n_mels) -> (B, c), before the projection
        return nn.functional.adaptive_avg_pool1d(self.body(x.transpose(1, 2)), 1).flatten(1)

    @property
    def proj(self) -> nn.Linear:
        return self.out

    def forward(self, x):
        return self.out(self.features(x))  # (B, dim)


HASH_PRIME = 1_000_003  # bigram (a, b) -> (a * P + b) mod buckets: ids stay far below 2**63 / P


class TextEncoder(nn.Module):
    """Embedding + masked mean (EmbeddingBag exports as a slow ONNX Loop). With `kernel`, each
    token's embedding also gets a ReLU'd convolution over its neighbours (word pairs and triples:
    "arrow" next to "left"), still averaged over the real tokens only. With `ngrams` 2, every pair
    of neighbouring tokens is hashed (in the graph, from the same token ids: Mul, Add, Mod, Gather)
    into `buckets` rows of a second table, and the bag averages tokens and pairs together: the
    fastText classifier, which is what a linear model over word bigrams is in a network."""

    def __init__(self, vocab: int, dim: int, kernel: int | None = None, ngrams: int = 1, buckets: int = 2048):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        self.conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2) if kernel else None
        self.pairs = nn.Embedding(buckets, dim) if ngrams == 2 else None
        if self.pairs is not None:
            nn.init.normal_(self.pairs.weight, std=dim**-0.5)

    def features(self, ids):  # (B, L) int64, 0 = padding
        mask = (ids != 0).float()[..., None]
        e = self.emb(ids) * mask  # padding rows are zero, like the convolution's own edge padding
        if self.conv is not None:
            e = e + torch.relu(self.conv(e.transpose(1, 2))).transpose(1, 2) * mask
        total, count = e.sum(1), mask.sum(1)
        if self.pairs is not None and ids.shape[1] > 1:
            a, b = ids[:, :-1], ids[:, 1:]
            both = ((a != 0) & (b != 0)).float()[..., None]
            total = total + (self.pairs(torch.remainder(a * HASH_PRIME + b, self.pairs.num_embeddings)) * both).sum(1)
            count = count + both.sum(1)
        return self.out[0](total / count.clamp(min=1.0))

    @property
    def proj(self) -> nn.Linear:
        return self.out[1]

    def forward(self, ids):
        return self.out[1](self.features(ids))


class VectorEncoder(nn.Module):
    def __init__(self, n: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))

    def features(self, x):
        return self.net[1](self.net[0](x))

    @property
    def proj(self) -> nn.Linear:
        return self.net[2]

    def forward(self, x):
        return self.net(x)


class ConcatFusion(nn.Module):
    def __init__(self, m: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(m * dim, dim), nn.ReLU(inplace=True))

    def forward(self, embs, keep):  # embs (B, M, D)
        if keep is not None:
            embs = embs * keep[..., None]
        return self.net(embs.flatten(1))


class GatedFusion(nn.Module):
    """Per-sample softmax weights over modalities, computed from the embeddings themselves."""

    def __init__(self, m: int, dim: int):
        super().__init__()
        self.gate = nn.Linear(m * dim, m)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True))

    def forward(self, embs, keep):
        if keep is not None:
            embs = embs * keep[..., None]
        logits = self.gate(embs.flatten(1))  # (B, M)
        if keep is not None:
            logits = logits.masked_fill(keep < 0.5, -1e4)
        w = torch.softmax(logits, dim=-1)
        return self.out((w[..., None] * embs).sum(1))


class AttentionFusion(nn.Module):
    """A learned query attends over the modality embeddings (one head, written with matmuls)."""

    def __init__(self, m: int, dim: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) * dim**-0.5)
        self.type_emb = nn.Parameter(torch.zeros(m, dim))
        self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU(inplace=True))

    def forward(self, embs, keep):
        embs = embs + self.type_emb
        scores = self.key(embs) @ self.query / embs.shape[-1] ** 0.5  # (B, M)
        if keep is not None:
            scores = scores.masked_fill(keep < 0.5, -1e4)
        w = torch.softmax(scores, dim=-1)
        return self.out((w[..., None] * self.value(embs)).sum(1))


class LateFusion(nn.Module):
    """Each modality votes with its own classifier; the votes are summed (a product of experts).

    Robust when one modality is near-perfect on the train split but shifts at test time (unseen
    speakers): no learned weight can come to trust it blindly. `classes` is set by the student."""

    def __init__(self, m: int, dim: int, classes: int = 0):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(dim, classes) for _ in range(m))

    def forward(self, embs: list[torch.Tensor], keep):  # embs: M tensors (B, D)
        if keep is None:  # inference: plain sums, no stack/gather nodes in the exported graph (same values)
            logits, fused = self.heads[0](embs[0]), embs[0]
            for h, e in zip(self.heads[1:], embs[1:]):
                logits, fused = logits + h(e), fused + e
            return fused / len(embs), logits
        logits = torch.stack([h(e) for h, e in zip(self.heads, embs)], dim=1)  # (B, M, C)
        embs = torch.stack(embs, dim=1) * keep[..., None]
        return embs.mean(1), (logits * keep[..., None]).sum(1)


FUSIONS = {"concat": ConcatFusion, "gated": GatedFusion, "attention": AttentionFusion, "late": LateFusion}


class FusedStudent(nn.Module):
    def __init__(self, modalities: dict[str, ModalitySpec], num_classes: int, width: int, depth: int,
                 dim: int, fusion: str = "gated", stem_stride: int = 1, text_kernel: int | None = None,
                 text_ngrams: int = 1, text_buckets: int = 2048):
        super().__init__()
        self.names = list(modalities)
        enc = {}
        for name, s in modalities.items():
            if s.kind == "image":
                enc[name] = ConvEncoder(s.shape[0], width, depth, dim, stem_stride)
            elif s.kind == "audio":
                enc[name] = AudioEncoder(s.shape[1], width, depth, dim, stem_stride)
            elif s.kind == "text":
                enc[name] = TextEncoder(max(s.vocab_size, 8), dim, text_kernel, text_ngrams, text_buckets)
            else:
                enc[name] = VectorEncoder(s.shape[0], dim)
        self.encoders = nn.ModuleDict(enc)
        self.late = fusion == "late"
        self.fuse = LateFusion(len(self.names), dim, num_classes) if self.late else FUSIONS[fusion](len(self.names), dim)
        self.head = nn.Identity() if self.late else nn.Linear(dim, num_classes)
        self.embed_dim = dim

    def forward(self, inputs: dict[str, torch.Tensor], keep: torch.Tensor | None = None) -> ModelOutput:
        per = {n: self.encoders[n](inputs[n]) for n in self.names}  # each (B, D)
        if self.late:
            fused, logits = self.fuse(list(per.values()), keep)
            return ModelOutput(logits, fused, per)
        embs = torch.stack([per[n] for n in self.names], dim=1)  # (B, M, D)
        fused = self.fuse(embs, keep)  # (B, D)
        return ModelOutput(self.head(fused), fused, per)


class FoldedLateStudent(nn.Module):
    """A late-fusion student for inference, its linear tail folded into one matrix product.

    Trained, the tail is per modality: projection `out_i`, vote `head_i`, then sums. Both are
    linear in the pooled features p_i, so logits = sum_i head_i(out_i(p_i)) and embedding =
    mean_i out_i(p_i) are one Linear over concat(p_i) whose rows are [head_i . out_i] and
    [out_i / M]. Same outputs to float rounding, 3 kernels instead of 2M + 3: at batch 1 on a CPU
    this student is bound by kernel launches, not arithmetic (see README: CPU INT8 latency).
    Export only; training and the TensorRT QDQ model (whose quantizers belong to each Linear) use
    the unfolded student."""

    def __init__(self, student: FusedStudent):
        super().__init__()
        if not student.late:
            raise ValueError("only a late-fusion student folds")
        self.names, self.encoders, self.embed_dim = student.names, student.encoders, student.embed_dim
        m, rows_logits, rows_emb, b_logits, b_emb = len(self.names), [], [], 0.0, 0.0
        with torch.no_grad():
            for name, head in zip(self.names, student.fuse.heads):
                proj = self.encoders[name].proj
                rows_logits.append(head.weight @ proj.weight)
                rows_emb.append(proj.weight / m)
                b_logits = b_logits + head.weight @ proj.bias + head.bias
                b_emb = b_emb + proj.bias / m
            self.num_classes = rows_logits[0].shape[0]
            weight = torch.cat([torch.cat(rows_logits, 1), torch.cat(rows_emb, 1)], 0)
            self.tail = nn.Linear(weight.shape[1], weight.shape[0])
            self.tail.weight.copy_(weight)
            self.tail.bias.copy_(torch.cat([b_logits, b_emb]))

    def forward(self, inputs: dict[str, torch.Tensor], keep: torch.Tensor | None = None) -> ModelOutput:
        pooled = torch.cat([self.encoders[n].features(inputs[n]) for n in self.names], dim=1)
        logits, fused = torch.split(self.tail(pooled), [self.num_classes, self.embed_dim], dim=1)
        return ModelOutput(logits, fused, {})


def inference_form(model: nn.Module) -> nn.Module:
    """What the export stage writes to ONNX for `model`: late-fusion students folded, others as they are."""
    return FoldedLateStudent(model) if isinstance(model, FusedStudent) and model.late else model


def _preset(default_width: int, default_depth: int, default_dim: int, stem_stride: int):
    def factory(modalities, num_classes, fusion="gated", width=None, depth=None, dim=None, text_kernel=None,
                text_ngrams=1, text_buckets=2048):
        return FusedStudent(modalities, num_classes, width or default_width, depth or default_depth, dim or default_dim,
                            fusion, stem_stride, text_kernel, text_ngrams, text_buckets)

    return factory


# (width, depth, embedding, stem stride). fusion_lean is for batch-1 latency on a CPU, where every
# kernel launch counts: stride-2 stems (a quarter of the image stem's work at full resolution),
# one block fewer, channel counts that are multiples of 8 (onnxruntime's blocked NCHWc kernels).
PRESETS = {"fusion_tiny": (8, 2, 32, 1), "fusion_small": (16, 3, 64, 1), "fusion_base": (32, 3, 128, 1),
           "fusion_lean": (16, 2, 64, 2)}
for _name, (_w, _d, _dim, _s) in PRESETS.items():
    register_model(_name, "student",
                   f"depthwise-separable CNN / embedding-mean / MLP encoders (width {_w}, depth {_d}, "
                   f"embedding {_dim}{', stride-2 stems' if _s > 1 else ''}); fusion concat|gated|attention|late")(
        _preset(_w, _d, _dim, _s))
