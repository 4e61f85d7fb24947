"""SSD300 on MobileNetV1 (reference section 5, the tf.keras fork), MobileNetV1 written out by hand.

MobileNetV1 follows ``keras.applications.MobileNet`` layer for layer and name for name (``conv1``,
``conv1_bn``, ``conv_dw_K``, ``conv_dw_K_bn``, ``conv_pw_K``, ``conv_pw_K_bn``...), so the Keras
ImageNet file ``mobilenet_1_0_224_tf_no_top.h5`` loads by layer name (``backbone_weights=<that file>``).
As in Keras, strided convs pad only bottom/right (``ZeroPadding2D(((0, 1), (0, 1)))`` + "valid"),
which gives 150, 75, 37, 18, 9 at 300x300 -- the fork's 18x18 and 9x9 predictor maps (symmetric
padding would give 19 and 10). Activations are ReLU6, BN epsilon 1e-3.

Predictors on ``conv_pw_11`` (512 channels, stride 16) and ``conv_pw_13`` (1024, stride 32), then four
extra blocks ``convK_1`` 1x1 conv-BN-ReLU -> ``convK_2`` 3x3/2 conv-BN-ReLU (K = 14..17; widths
256->512, 128->256, 128->256, 64->128): feature maps 18, 9, 5, 3, 2, 1 at 300x300. No L2Norm.
``head_kernel`` 3 (default) or 1; ``width`` is the MobileNet width multiplier (alpha) of the base.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import nn

from ..errors import ConfigError
from .registry import BackboneParts
from .ssd import TappedSequential

__all__ = ["EXTRA_BLOCKS", "MOBILENET_V1_BLOCKS", "load_pretrained", "make_backbone"]

#: (pointwise channels, depthwise stride) of blocks 1..13
MOBILENET_V1_BLOCKS = [
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
]  # fmt: skip
#: (1x1 channels, 3x3/2 channels) of extra blocks 14..17
EXTRA_BLOCKS = [(256, 512), (128, 256), (128, 256), (64, 128)]

_BN_EPS = 1e-3  # Keras default
_BN_MOMENTUM = 0.01  # Keras momentum 0.99


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=_BN_EPS, momentum=_BN_MOMENTUM)


def _mobilenet_layers(width: float) -> OrderedDict[str, nn.Module]:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    c = int(32 * width)
    layers["conv1_pad"] = nn.ZeroPad2d((0, 1, 0, 1))
    layers["conv1"] = nn.Conv2d(3, c, 3, stride=2, bias=False)
    layers["conv1_bn"] = _bn(c)
    layers["conv1_relu"] = nn.ReLU6(inplace=True)
    for k, (pw, stride) in enumerate(MOBILENET_V1_BLOCKS, start=1):
        if stride == 2:
            layers[f"conv_pad_{k}"] = nn.ZeroPad2d((0, 1, 0, 1))
            layers[f"conv_dw_{k}"] = nn.Conv2d(c, c, 3, stride=2, groups=c, bias=False)
        else:
            layers[f"conv_dw_{k}"] = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        layers[f"conv_dw_{k}_bn"] = _bn(c)
        layers[f"conv_dw_{k}_relu"] = nn.ReLU6(inplace=True)
        cout = int(pw * width)
        layers[f"conv_pw_{k}"] = nn.Conv2d(c, cout, 1, bias=False)
        layers[f"conv_pw_{k}_bn"] = _bn(cout)
        layers[f"conv_pw_{k}_relu"] = nn.ReLU6(inplace=True)
        c = cout
    for k, (mid, out) in enumerate(EXTRA_BLOCKS, start=14):
        layers[f"conv{k}_1"] = nn.Conv2d(c, mid, 1, bias=False)
        layers[f"conv{k}_1_bn"] = _bn(mid)
        layers[f"conv{k}_1_relu"] = nn.ReLU(inplace=True)
        layers[f"conv{k}_2"] = nn.Conv2d(mid, out, 3, stride=2, padding=1, bias=False)
        layers[f"conv{k}_2_bn"] = _bn(out)
        layers[f"conv{k}_2_relu"] = nn.ReLU(inplace=True)
        c = out
    return layers


def make_backbone(name: str, head_kernel: int = 3, width: float = 1.0) -> BackboneParts:
    if not isinstance(width, int | float) or not 0 < float(width) <= 4:
        raise ConfigError(f"{name}: width (MobileNet alpha) must be in (0, 4], got {width!r}")
    taps = ["conv_pw_11_relu", "conv_pw_13_relu"] + [f"conv{k}_2_relu" for k in range(14, 18)]
    backbone = TappedSequential(_mobilenet_layers(float(width)), taps=taps)
    return BackboneParts(backbone, head="conv", backbone_init="he", head_init="he")


def load_pretrained(parts: BackboneParts, weights: str, name: str, **options: Any) -> dict[str, Any] | None:
    """Keras ImageNet MobileNet ``.h5`` (``mobilenet_1_0_224_tf_no_top.h5``) by layer name, or a state dict.

    torchvision has no MobileNetV1, so ``'imagenet'`` needs that Keras file; its preprocessing
    (``x / 127.5 - 1``, RGB) is this model's default normalisation.
    """
    if weights == "imagenet":
        raise ConfigError(
            f"{name}: torchvision has no ImageNet MobileNetV1; pass the Keras file "
            "(e.g. backbone_weights='mobilenet_1_0_224_tf_no_top.h5'), which loads by layer name"
        )
    from .weights import load_local_weights

    load_local_weights(parts.backbone, weights, name)
    return None
