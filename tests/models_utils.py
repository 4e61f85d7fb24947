"""Helpers shared by the model, checkpoint and resampling tests."""

from __future__ import annotations

import torch
from torch import nn


def images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """``[b, 3, h, w]`` uint8 noise, reproducible."""
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


class TwoMapBackbone(nn.Module):
    """A minimal backbone for :meth:`SSD.from_backbone`: two feature maps at strides ``stride`` and
    ``2 * stride`` with ``c1`` and ``c2`` channels."""

    def __init__(self, c1: int = 4, c2: int = 6, stride: int = 8) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, c1, 3, stride=stride, padding=1)
        self.b = nn.Conv2d(c1, c2, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = self.a(x).relu()
        return [y, self.b(y).relu()]
