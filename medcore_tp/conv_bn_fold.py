"""Inference-time folding of each ``BatchNorm2d`` into the ``Conv2d`` that feeds it.

In eval mode a batch norm is a fixed per-channel affine map, so ``bn(conv(x))`` equals one convolution
whose weights are scaled by ``gamma / sqrt(var + eps)`` and whose bias absorbs the shift (torch's
``fuse_conv_bn_eval`` does the arithmetic). LiteMedSAM's TinyViT holds 27 such pairs (``Conv2d_BN``:
patch embedding, MBConv stage, patch merging, every block's depthwise ``local_conv``), none of them
pruned, and on a CPU in eager PyTorch their batch norms cost about a tenth of the encoder's time over
full-resolution feature maps while adding almost no FLOPs: folding them removes that time from the
dense and the pruned model alike (13% of each with one thread on the 2-core CPU, so the pruned / dense
ratio stays where it was; README "Deployment"). ONNX Runtime folds the same pairs itself when it optimises a graph, so exports gain nothing from it.

A folded model is for inference only: its batch norms become ``nn.Identity`` (state-dict keys change)
and the running statistics are no longer there to train. SAM's ViT has no batch norm (nothing to fold).
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["conv_bn_pairs", "fold_conv_bn"]


def conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Sequential, int]]:
    """Every (container, index) where ``container[index]`` is a ``Conv2d`` directly followed by a
    ``BatchNorm2d`` of as many channels, in an ``nn.Sequential`` (or a subclass) of ``model``."""
    pairs = []
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module)
        for i in range(len(children) - 1):
            conv, bn = children[i], children[i + 1]
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                    and bn.num_features == conv.out_channels and bn.track_running_stats):
                pairs.append((module, i))
    return pairs


def fold_conv_bn(model: nn.Module) -> int:
    """Fold every ``Conv2d`` -> ``BatchNorm2d`` pair of :func:`conv_bn_pairs` into one convolution, in
    place; the batch norm becomes ``nn.Identity``. Returns how many pairs were folded (0: nothing to do).

    ``model`` must be in eval mode, its convolutions and batch norms alike (a training-mode batch norm
    normalises by the batch, which no fixed convolution reproduces): raises ``ValueError`` naming
    ``model`` otherwise. Outputs stay equal to
    float rounding (about 1e-6 of their scale in fp32)."""
    pairs = conv_bn_pairs(model)
    # torch's fusion also asserts on a convolution left in training mode: refuse either, in one line
    if any(container[i].training or container[i + 1].training for container, i in pairs):
        raise ValueError("fold_conv_bn: model is in training mode; call model.eval() first "
                         "(folding freezes the batch norms' running statistics)")
    for container, i in pairs:
        keys = list(container._modules)
        conv, bn = container[i], container[i + 1]
        container._modules[keys[i]] = fuse_conv_bn_eval(conv, bn)
        # a new module starts in training mode; the folded model stays wholly in eval mode
        container._modules[keys[i + 1]] = nn.Identity().eval()
    return len(pairs)
