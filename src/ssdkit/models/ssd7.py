"""SSD7 (reference section 5; Keras ``keras_ssd7``): a small, fast SSD for tests and toy data.

Seven blocks ``convK -> bnK -> eluK`` (widths 32 (5x5), 48, 64, 64, 48, 48, 32 (3x3), "same" padding),
``poolK`` 2x2 max-pool ("valid", floor) after blocks 1-6; predictors (3x3 convs ``classesK`` /
``boxesK``) on blocks 4-7. Keras BatchNormalization defaults: epsilon 1e-3, momentum 0.99 (PyTorch
momentum 0.01). At the traffic example's 300x480 input the predictor maps are 37x60, 18x30, 9x15, 4x7.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import nn

from ..errors import ConfigError
from .registry import BackboneParts
from .ssd import TappedSequential, keras_head_names

__all__ = ["SSD7_WIDTHS", "load_pretrained", "make_backbone"]

#: (out channels, kernel) of conv1..conv7
SSD7_WIDTHS = [(32, 5), (48, 3), (64, 3), (64, 3), (48, 3), (48, 3), (32, 3)]


def make_backbone(name: str, head_kernel: int = 3) -> BackboneParts:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    cin = 3
    for k, (cout, ks) in enumerate(SSD7_WIDTHS, start=1):
        layers[f"conv{k}"] = nn.Conv2d(cin, cout, ks, padding=ks // 2)  # Keras Conv2D keeps its bias before BN
        layers[f"bn{k}"] = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)
        layers[f"elu{k}"] = nn.ELU(inplace=True)
        if k < 7:
            layers[f"pool{k}"] = nn.MaxPool2d(2, 2)
        cin = cout
    backbone = TappedSequential(layers, taps=["elu4", "elu5", "elu6", "elu7"])
    keras = keras_head_names(["4", "5", "6", "7"], "classes{}", "boxes{}")  # classes4/boxes4 ... classes7/boxes7
    return BackboneParts(backbone, head="conv", backbone_init="he", head_init="he", keras_names=dict(keras))


def load_pretrained(parts: BackboneParts, weights: str, name: str, **options: Any) -> dict[str, Any] | None:
    """SSD7 has no ImageNet weights; a Keras ``.h5`` (by layer name) or a state dict of the backbone loads."""
    if weights == "imagenet":
        raise ConfigError("ssd7 has no ImageNet weights; use backbone_weights=None or a local weights file")
    from .weights import load_local_weights

    load_local_weights(parts.backbone, weights, name)
    return None
