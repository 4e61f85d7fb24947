"""SSD300 / SSD512 on the fc-reduced VGG16 (reference section 5; Keras ``keras_ssd300``/``keras_ssd512``).

Layer by layer, with the Keras layer names as module names (so Keras ``.h5`` files load by name):

- ``conv1_1`` .. ``conv5_3``: VGG16 3x3 convs + ReLU, "same" padding; ``pool1``-``pool4`` 2x2/2
  (TF "same" = ``ceil_mode=True``: 75 -> 38), ``pool5`` 3x3/1 pad 1;
- ``fc6``: 3x3 conv, dilation 6, 1024 channels; ``fc7``: 1x1, 1024 (fc6/fc7 of VGG16 subsampled into
  convolutions, "fc-reduced");
- extras: ``conv6_1`` 1x1 256 -> ``conv6_2`` 3x3/2 512; ``conv7_1`` 1x1 128 -> ``conv7_2`` 3x3/2 256;
  SSD300: ``conv8_x``, ``conv9_x`` 1x1 128 -> 3x3 valid 256; SSD512: ``conv8_2``/``conv9_2`` 3x3/2 pad 1
  and ``conv10_1`` 1x1 128 -> ``conv10_2`` 4x4 pad 1 valid 256;
- ``conv4_3_norm``: :class:`~ssdkit.models.ssd.L2Norm` (scale 20) on conv4_3.

Predictors on conv4_3_norm, fc7, conv6_2, conv7_2, conv8_2, conv9_2 (+ conv10_2). Keras SSD300 with 21
classes has 26,285,486 parameters; this module has exactly as many.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import Tensor, nn

from .registry import BackboneParts
from .ssd import Conv2dReLU, L2Norm, TappedSequential, keras_head_names

__all__ = ["VGG16SSDBackbone", "fc_to_conv", "load_pretrained", "make_backbone", "torchvision_vgg16_to_ssd"]

# (name, out channels) of the VGG16 convs; a None channel count marks a pooling layer
_VGG16 = [
    ("conv1_1", 64), ("conv1_2", 64), ("pool1", None),
    ("conv2_1", 128), ("conv2_2", 128), ("pool2", None),
    ("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256), ("pool3", None),
    ("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512), ("pool4", None),
    ("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512),
]  # fmt: skip

#: torchvision ``vgg16().features`` indices of the convs above (for ImageNet weights)
_TORCHVISION_VGG16_CONV_INDEX = {
    "conv1_1": 0, "conv1_2": 2, "conv2_1": 5, "conv2_2": 7, "conv3_1": 10, "conv3_2": 12, "conv3_3": 14,
    "conv4_1": 17, "conv4_2": 19, "conv4_3": 21, "conv5_1": 24, "conv5_2": 26, "conv5_3": 28,
}  # fmt: skip


def _base_layers() -> OrderedDict[str, nn.Module]:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    cin = 3
    for name, cout in _VGG16:
        if cout is None:
            # Keras MaxPooling2D(2, 2, padding='same') pads at the bottom/right: ceil mode
            layers[name] = nn.MaxPool2d(2, 2, ceil_mode=True)
        else:
            layers[name] = Conv2dReLU(cin, cout, 3, padding=1)
            cin = cout
    layers["pool5"] = nn.MaxPool2d(3, 1, padding=1)
    layers["fc6"] = Conv2dReLU(512, 1024, 3, padding=6, dilation=6)
    layers["fc7"] = Conv2dReLU(1024, 1024, 1)
    return layers


def _extra_layers(variant: int) -> tuple[OrderedDict[str, nn.Module], list[str]]:
    """Extra feature layers after fc7; returns the layers and the names of the predictor sources."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    # Keras: ZeroPadding2D(1) + 3x3 stride-2 'valid' conv == padding=1, stride 2
    layers["conv6_1"] = Conv2dReLU(1024, 256, 1)
    layers["conv6_2"] = Conv2dReLU(256, 512, 3, stride=2, padding=1)
    layers["conv7_1"] = Conv2dReLU(512, 128, 1)
    layers["conv7_2"] = Conv2dReLU(128, 256, 3, stride=2, padding=1)
    layers["conv8_1"] = Conv2dReLU(256, 128, 1)
    if variant == 300:
        layers["conv8_2"] = Conv2dReLU(128, 256, 3)  # valid: 5 -> 3
        layers["conv9_1"] = Conv2dReLU(256, 128, 1)
        layers["conv9_2"] = Conv2dReLU(128, 256, 3)  # valid: 3 -> 1
        return layers, ["conv6_2", "conv7_2", "conv8_2", "conv9_2"]
    layers["conv8_2"] = Conv2dReLU(128, 256, 3, stride=2, padding=1)
    layers["conv9_1"] = Conv2dReLU(256, 128, 1)
    layers["conv9_2"] = Conv2dReLU(128, 256, 3, stride=2, padding=1)
    layers["conv10_1"] = Conv2dReLU(256, 128, 1)
    layers["conv10_2"] = Conv2dReLU(128, 256, 4, padding=1)  # ZeroPadding2D(1) + 4x4 valid: 2 -> 1
    return layers, ["conv6_2", "conv7_2", "conv8_2", "conv9_2", "conv10_2"]


class VGG16SSDBackbone(nn.Module):
    """fc-reduced VGG16 + SSD extra layers + ``conv4_3_norm``.

    ``forward([B, 3, H, W] normalised input) -> [conv4_3_norm, fc7, conv6_2, ...]`` (6 maps for the
    300 variant: 38, 19, 10, 5, 3, 1 at 300x300; 7 for the 512 variant: 64 ... 1 at 512x512).
    """

    def __init__(self, variant: int = 300) -> None:
        super().__init__()
        if variant not in (300, 512):
            raise ValueError(f"variant must be 300 or 512, got {variant}")
        self.base = TappedSequential(_base_layers(), taps=("conv4_3", "fc7"))
        self.conv4_3_norm = L2Norm(512, scale=20.0)
        extras, taps = _extra_layers(variant)
        self.extras = TappedSequential(extras, taps=taps)
        self.source_names = ["conv4_3_norm", "fc7", *taps]

    def forward(self, x: Tensor) -> list[Tensor]:
        conv4_3, fc7 = self.base(x)
        return [self.conv4_3_norm(conv4_3), fc7, *self.extras(fc7)]


def make_backbone(name: str, head_kernel: int = 3) -> BackboneParts:
    variant = 512 if name.startswith("ssd512") else 300
    backbone = VGG16SSDBackbone(variant)
    return BackboneParts(
        backbone,
        head="conv",
        backbone_init="he",  # Keras he_normal
        head_init="he",
        keras_names=dict(keras_head_names(backbone.source_names, "{}_mbox_conf", "{}_mbox_loc")),
    )


# ---------------------------------------------------------------------------------------------- weights
def fc_to_conv(
    fc6_weight: Tensor,
    fc6_bias: Tensor,
    fc7_weight: Tensor,
    fc7_bias: Tensor,
    in_channels: int = 512,
    spatial: int = 7,
    out_step: int = 4,
    spatial_step: int = 3,
) -> dict[str, Tensor]:
    """VGG16 fully connected fc6/fc7 -> the SSD "fc-reduced" convolutions (SSD paper, DeepLab-LargeFOV).

    ``fc6 [4096, 512*7*7]`` is viewed as a ``[4096, 512, 7, 7]`` conv and decimated: every
    ``out_step``-th output (4096 -> 1024) and every ``spatial_step``-th tap (7x7 -> 3x3, rows/cols
    0, 3, 6), which the dilated 3x3 ``fc6`` then spreads over the same field; ``fc7 [4096, 4096]``
    keeps every ``out_step``-th row and column (-> 1x1 conv 1024 -> 1024). Biases follow the outputs.

    Returns ``{'fc6.weight' [O/4, C, 3, 3], 'fc6.bias', 'fc7.weight' [O/4, O/4, 1, 1], 'fc7.bias'}``.
    """
    out = fc6_weight.shape[0]
    w6 = fc6_weight.reshape(out, in_channels, spatial, spatial)[::out_step, :, ::spatial_step, ::spatial_step]
    w7 = fc7_weight[::out_step, ::out_step]
    return {
        "fc6.weight": w6.contiguous().clone(),
        "fc6.bias": fc6_bias[::out_step].clone(),
        "fc7.weight": w7.reshape(w7.shape[0], w7.shape[1], 1, 1).contiguous().clone(),
        "fc7.bias": fc7_bias[::out_step].clone(),
    }


def torchvision_vgg16_to_ssd(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision ``vgg16`` state dict (``features.N``, ``classifier.0/3``) -> ``VGG16SSDBackbone.base`` keys."""
    out: dict[str, Tensor] = {}
    for name, idx in _TORCHVISION_VGG16_CONV_INDEX.items():
        out[f"{name}.weight"] = state[f"features.{idx}.weight"]
        out[f"{name}.bias"] = state[f"features.{idx}.bias"]
    if "classifier.0.weight" in state and "classifier.3.weight" in state:
        out.update(
            fc_to_conv(
                state["classifier.0.weight"], state["classifier.0.bias"],
                state["classifier.3.weight"], state["classifier.3.bias"],
            )
        )  # fmt: skip
    return out


def load_pretrained(parts: BackboneParts, weights: str, name: str, **options: Any) -> dict[str, Any] | None:
    """Load VGG16 weights into the backbone.

    - ``'imagenet'``: torchvision ``VGG16_Weights.IMAGENET1K_V1`` from the torch hub cache, fc6/fc7
      converted to the fc-reduced convs (:func:`fc_to_conv`); input normalisation becomes
      torchvision's (RGB, ImageNet mean/std).
    - ``*.h5``: a Keras file loaded by layer name, e.g. ``VGG_ILSVRC_16_layers_fc_reduced.h5``
      (Caffe weights: BGR input, mean ``[123, 117, 104]`` (RGB order), std 1 -- the model defaults).
    - other files: a torchvision ``vgg16`` state dict, or a state dict of this backbone.
    """
    from .weights import load_local_weights, read_state_file, torchvision_state

    backbone: VGG16SSDBackbone = parts.backbone  # type: ignore[assignment]
    torchvision_norm = {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "swap_channels": None}
    if weights == "imagenet":
        from torchvision.models import VGG16_Weights

        state = torchvision_state(VGG16_Weights.IMAGENET1K_V1, what=f"{name} backbone_weights='imagenet'")
        backbone.base.load_state_dict(torchvision_vgg16_to_ssd(state))
        return torchvision_norm
    if not str(weights).lower().endswith((".h5", ".hdf5")):
        state = read_state_file(weights)
        if "features.0.weight" in state:  # a torchvision vgg16 state dict
            backbone.base.load_state_dict(torchvision_vgg16_to_ssd(state), strict=False)
            return torchvision_norm
    load_local_weights(backbone, weights, name, require=[n for n, c in _VGG16 if c is not None])
    return None
