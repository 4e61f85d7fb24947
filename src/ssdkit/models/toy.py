"""Toy SSD (reference section 5, the MNIST-digits-on-a-canvas tutorial): BN conv blocks and three
predictor layers at strides 4, 8 and 16.

Blocks (``width`` = w, default 16): ``block1`` 3x3/2 w, ``block2`` 3x3/2 2w + 3x3 2w (stride 4,
predictor 1), ``block3`` 3x3/2 4w + 3x3 4w (stride 8, predictor 2), ``block4`` 3x3/2 8w + 3x3 8w
(stride 16, predictor 3); every conv is conv-BN-ReLU. At the default 128x128 input the maps are
32, 16, 8 and the model has about 0.4M parameters: it trains in minutes on a CPU.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import nn

from ..errors import ConfigError
from .registry import BackboneParts
from .ssd import TappedSequential

__all__ = ["load_pretrained", "make_backbone"]


def _conv_bn_relu(layers: OrderedDict[str, nn.Module], name: str, cin: int, cout: int, stride: int) -> None:
    layers[name] = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
    layers[f"{name}_bn"] = nn.BatchNorm2d(cout)
    layers[f"{name}_relu"] = nn.ReLU(inplace=True)


def make_backbone(name: str, head_kernel: int = 3, width: int = 16) -> BackboneParts:
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 256:
        raise ConfigError(f"{name}: width must be an int in 1..256, got {width!r}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    _conv_bn_relu(layers, "block1_conv", 3, width, 2)
    cin = width
    for k, mult in ((2, 2), (3, 4), (4, 8)):
        _conv_bn_relu(layers, f"block{k}_conv1", cin, width * mult, 2)
        _conv_bn_relu(layers, f"block{k}_conv2", width * mult, width * mult, 1)
        cin = width * mult
    backbone = TappedSequential(layers, taps=["block2_conv2_relu", "block3_conv2_relu", "block4_conv2_relu"])
    return BackboneParts(backbone, head="conv", backbone_init="he", head_init="he")


def load_pretrained(parts: BackboneParts, weights: str, name: str, **options: Any) -> dict[str, Any] | None:
    if weights == "imagenet":
        raise ConfigError(f"{name} has no ImageNet weights; use backbone_weights=None or a local weights file")
    from .weights import load_local_weights

    load_local_weights(parts.backbone, weights, name)
    return None
