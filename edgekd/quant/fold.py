"""BatchNorm folding before quantization.

TensorRT folds BatchNorm into the preceding convolution at build time, so the weights it
quantizes are the folded ones; quantizing the unfolded weights would calibrate scales for
weights that never run. Folding first makes fake-quant training see what the engine will run.
"""
from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_CONV = (nn.Conv1d, nn.Conv2d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold each BatchNorm that directly follows a convolution inside an nn.Sequential into that
    convolution (using its running statistics) and put an Identity in its place. Works on any
    weights, so a freshly built model gets the same structure as the one that was quantized.
    Returns how many were folded."""
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, _CONV) and isinstance(bn, _BN):
                seq[i] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                seq[i + 1] = nn.Identity()
                folded += 1
    return folded


def unfolded_batchnorms(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, _BN)]
