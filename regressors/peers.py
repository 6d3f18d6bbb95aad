"""Reference architectures for timing (random weights; never used to fit).

:func:`mobilenet_v1_3ddfa` is 3DDFA_V2's default regressor as its paper and code describe it:
MobileNetV1 with width multiplier 0.5 on 120 x 120 crops, 62 outputs (12 pose + 40 shape + 10
expression parameters). Built here from the published layer shapes: a 3 x 3 stride-2 convolution
to 32 channels, 13 depthwise-separable blocks (3 x 3 depthwise + 1 x 1 pointwise, BatchNorm and
ReLU after each) with output channels 64, 128, 128, 256, 256, 512 (x 6), 1024, 1024 and strides
1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, then global average pooling and one linear layer; every
channel count times the width. ``python -m regressors.bench`` and ``python -m benchmarks.speed``
time our networks beside it in the same run.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["mobilenet_v1_3ddfa"]

_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
           (512, 1), (1024, 2), (1024, 1))


def _bn_relu(c: int) -> list:
    return [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]


def mobilenet_v1_3ddfa(width: float = 0.5, outputs: int = 62) -> nn.Module:
    """3DDFA_V2's MobileNetV1 (x ``width``) with ``outputs`` parameters: (B, 3, 120, 120) -> (B, outputs)."""
    c = int(32 * width)
    layers: list = [nn.Conv2d(3, c, 3, 2, 1, bias=False), *_bn_relu(c)]
    for cout, stride in _BLOCKS:
        cout = int(cout * width)
        layers += [nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False), *_bn_relu(c),
                   nn.Conv2d(c, cout, 1, 1, 0, bias=False), *_bn_relu(cout)]
        c = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, outputs)]
    return nn.Sequential(*layers).eval()


if __name__ == "__main__":  # parameter count, as a check against the published 0.85 M (width 0.5)
    n = sum(p.numel() for p in mobilenet_v1_3ddfa().parameters())
    print(f"MobileNetV1 x0.5, 62 outputs: {n / 1e6:.2f} M parameters; output {tuple(mobilenet_v1_3ddfa()(torch.zeros(1, 3, 120, 120)).shape)}")
