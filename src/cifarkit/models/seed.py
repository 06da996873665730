"""The original Assignment 7 network (SeedNet, 467,098 parameters) and its two building blocks.

Blocks subclass ``nn.Sequential`` on purpose: torchsummary hooks every module that is not a
Sequential, so Sequential blocks keep the summary table a flat list of layers, row for row like the
seed's.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register


class ConvBlock(nn.Sequential):
    """The seed's unit: 3x3 conv (no bias: BatchNorm follows) -> ReLU -> BatchNorm -> Dropout.

    ``padding = dilation`` keeps height and width unchanged for a 3x3 kernel.
    """

    def __init__(self, cin: int, cout: int, dropout: float = 0.0, dilation: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
            nn.ReLU(),
            nn.BatchNorm2d(cout),
            nn.Dropout(dropout),
        )


class SeparableConv2d(nn.Sequential):
    """Depthwise-separable conv: a per-channel 3x3 conv (groups = channels) then a 1x1 pointwise
    conv.

    128 -> 256 channels costs 1,152 + 32,768 weights instead of 294,912 for a dense 3x3 conv.
    """

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),  # depthwise
            nn.Conv2d(cin, cout, 1, bias=False),  # pointwise
        )


@register("seed")
class SeedNet(nn.Module):
    """The original Assignment 7 network: 467,098 parameters, receptive field 84 before GAP.

    C1 (32x32) -> pool -> C2 (16x16) -> pool -> C3 (8x8) -> pool -> C4 (4x4: dilated conv,
    depthwise-separable conv) -> global average pool -> linear. Layer for layer it prints the same
    torchsummary table as the seed write-up.
    """

    def __init__(self, dropout: float = 0.0, num_classes: int = 10):
        super().__init__()
        self.c1 = nn.Sequential(ConvBlock(3, 16, dropout), ConvBlock(16, 32, dropout))
        self.pool1 = nn.MaxPool2d(2)
        self.c2 = nn.Sequential(ConvBlock(32, 64, dropout), ConvBlock(64, 64, dropout))
        self.pool2 = nn.MaxPool2d(2)
        self.c3 = nn.Sequential(ConvBlock(64, 128, dropout), ConvBlock(128, 128, dropout))
        self.pool3 = nn.MaxPool2d(2)
        self.c4 = nn.Sequential(
            ConvBlock(128, 128, dropout, dilation=2),  # dilated: RF grows by 4 steps of 8 px, not 2
            SeparableConv2d(128, 256),
            nn.ReLU(),
            nn.BatchNorm2d(256),
            nn.Dropout(dropout),
        )
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.c1(x))  # (N, 3, 32, 32) -> (N, 32, 32, 32) -> (N, 32, 16, 16)
        x = self.pool2(self.c2(x))  # -> (N, 64, 16, 16) -> (N, 64, 8, 8)
        x = self.pool3(self.c3(x))  # -> (N, 128, 8, 8) -> (N, 128, 4, 4)
        x = self.c4(x)  # -> (N, 256, 4, 4)
        x = self.gap(x).flatten(1)  # -> (N, 256)
        return self.fc(x)  # -> (N, 10) logits
