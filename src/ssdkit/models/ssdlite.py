"""SSDLite320 on torchvision's MobileNetV2 / MobileNetV3-Large, following torchvision's SSDLite design.

As ``torchvision.models.detection.ssdlite320_mobilenet_v3_large`` (MobileNetV2 paper section 6.2,
MobileNetV3 paper section 6.3):

- the first predictor map is taken **inside** the last stride-2 block (the "C4" block), right after
  its 1x1 expansion (stride 16: 576 channels on MobileNetV2, 672 on V3-Large); the second is the end
  of ``features`` (stride 32: 1280 / 960 channels);
- four extra blocks ``1x1 conv (out/2) -> 3x3/2 depthwise -> 1x1 conv (out)``, each BN + ReLU6,
  widths 512, 256, 256, 128: maps 20, 10, 5, 3, 2, 1 at 320x320;
- depthwise-separable predictors (3x3 depthwise + BN + ReLU6, then 1x1), convs initialised N(0, 0.03);
- BN ``eps=1e-3, momentum=0.03`` in extras and heads (and in the V3 backbone, as torchvision).

ssdkit's own anchors (torchvision-equivalent defaults: 6 boxes per cell, scales 0.2 .. 0.95 and 1.0,
3234 anchors at 320), heads layout and input normalisation are used. ``width`` is the width
multiplier (backbone and extras); ``reduced_tail`` (V3 only) halves the last stage's channels. As in
torchvision it defaults to ``True`` without ImageNet weights (the layout of torchvision's COCO model and
of ``ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)``: 3,440,060 parameters with 91
classes) and to ``False`` with them (the ImageNet checkpoint has the full tail).

Anchors differ from torchvision's only where torchvision clamps a default box's width or height to
the image (38 of the 3234 anchors at 320: the 3:1 boxes of the last layers).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import Tensor, nn

from ..errors import ConfigError
from .registry import BackboneParts

__all__ = ["MobileNetSSDLiteBackbone", "anchor_defaults", "load_pretrained", "make_backbone"]

_EXTRA_WIDTHS = (512, 256, 256, 128)


def _extra_block(cin: int, cout: int, norm_layer: Any) -> nn.Sequential:
    from torchvision.ops.misc import Conv2dNormActivation

    mid = cout // 2
    return nn.Sequential(
        Conv2dNormActivation(cin, mid, kernel_size=1, norm_layer=norm_layer, activation_layer=nn.ReLU6),
        Conv2dNormActivation(mid, mid, kernel_size=3, stride=2, groups=mid, norm_layer=norm_layer,
                             activation_layer=nn.ReLU6),
        Conv2dNormActivation(mid, cout, kernel_size=1, norm_layer=norm_layer, activation_layer=nn.ReLU6),
    )


class MobileNetSSDLiteBackbone(nn.Module):
    """torchvision MobileNet ``features`` split at the C4 expansion, plus SSDLite extra blocks.

    ``forward(x [B, 3, H, W]) -> [c4_expansion, c5, extra1, ..., extra4]``; with ``stride8=True`` the
    C3 block's expansion (stride 8: 192 channels on MobileNetV2, 240 on V3-Large) comes first, an extra
    predictor map for objects too small for the stride-16 grid (e.g. BCCD platelets at ~25 px).
    """

    def __init__(self, features: nn.Sequential, width: float = 1.0, min_depth: int = 16,
                 stride8: bool = False) -> None:
        super().__init__()
        # C4 = the last block that downsamples (stride 16 -> 32), C3 the one before (8 -> 16); neither
        # has a residual connection, so each can be cut right after its 1x1 expansion
        strided = [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)]
        c3, c4 = strided[-2], strided[-1]
        inner4 = _inner(features[c4])
        if stride8:
            inner3 = _inner(features[c3])
            self.stage0 = nn.Sequential(*features[:c3], inner3[0])  # up to the C3 expansion (stride 8)
            self.stage1 = nn.Sequential(inner3[1:], *features[c3 + 1 : c4], inner4[0])
        else:
            self.stage1 = nn.Sequential(*features[:c4], inner4[0])  # up to the C4 1x1 expansion (stride 16)
        self.stage2 = nn.Sequential(inner4[1:], *features[c4 + 1 :])  # C4 depthwise .. end (stride 32)
        self.stride8 = stride8
        c5 = _out_channels(features[-1])
        norm = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.03)
        depths = [max(min_depth, int(d * width)) for d in _EXTRA_WIDTHS]
        self.extras = nn.ModuleList(_extra_block(cin, cout, norm) for cin, cout in zip([c5, *depths[:-1]], depths))

    def forward(self, x: Tensor) -> list[Tensor]:
        out: list[Tensor] = []
        if self.stride8:
            x = self.stage0(x)
            out.append(x)
        c4 = self.stage1(x)
        x = self.stage2(c4)
        out += [c4, x]
        for block in self.extras:
            x = block(x)
            out.append(x)
        return out


def _inner(block: nn.Module) -> nn.Sequential:
    if getattr(block, "use_res_connect", False):
        raise ValueError("a strided block of this backbone has a residual connection; cannot split it")
    return block.conv if hasattr(block, "conv") else block.block  # MobileNetV2 / V3 naming


def _out_channels(module: nn.Module) -> int:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def resolve_options(name: str, options: dict[str, Any], backbone_weights: str | None) -> dict[str, Any]:
    """``reduced_tail=None`` -> ``True`` without backbone weights, ``False`` with them (torchvision's rule)."""
    if "reduced_tail" in options and options["reduced_tail"] is None:
        options = {**options, "reduced_tail": backbone_weights is None}
    return options


def anchor_defaults(name: str, options: dict[str, Any], anchors: dict[str, Any],
                    given: dict[str, Any]) -> dict[str, Any]:
    """With ``stride8`` and no scales given, the stride-8 layer gets scale 0.1 ahead of the defaults."""
    if options.get("stride8") and not {"scales", "min_scale", "max_scale"} & set(given):
        anchors = {**anchors, "scales": [0.1, *anchors["scales"]]}
    return anchors


def make_backbone(name: str, width: float = 1.0, reduced_tail: bool = False, stride8: bool = False) -> BackboneParts:
    from torchvision.models import mobilenet_v2, mobilenet_v3_large

    if not isinstance(width, int | float) or not 0 < float(width) <= 4:
        raise ConfigError(f"{name}: width must be in (0, 4], got {width!r}")
    if not isinstance(reduced_tail, bool):
        raise ConfigError(f"{name}: reduced_tail must be true or false, got {reduced_tail!r}")
    if not isinstance(stride8, bool):
        raise ConfigError(f"{name}: stride8 must be true or false, got {stride8!r}")
    if name.endswith("v2"):
        if reduced_tail:
            raise ConfigError(f"{name}: reduced_tail applies to MobileNetV3 only")
        tv = mobilenet_v2(weights=None, width_mult=float(width), norm_layer=partial(nn.BatchNorm2d, momentum=0.03))
    else:
        norm = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.03)
        tv = mobilenet_v3_large(weights=None, width_mult=float(width), reduced_tail=reduced_tail, norm_layer=norm)
    backbone = MobileNetSSDLiteBackbone(tv.features, float(width), stride8=stride8)
    # torchvision's SSDLite init: every conv N(0, 0.03) when no ImageNet weights are loaded
    return BackboneParts(backbone, head="separable", backbone_init="normal", head_init="normal",
                         handles={"features": tv.features})


def load_pretrained(parts: BackboneParts, weights: str, name: str, **options: Any) -> dict[str, Any] | None:
    """ImageNet weights through torchvision's weights API (local cache only), or a local state dict of
    the torchvision MobileNet (``features.*``; e.g. ``mobilenet_v2-b0353104.pth``) or of this backbone.

    The split backbone shares its modules with torchvision's ``features``, so loading into the latter
    fills the former. The input normalisation stays ImageNet mean/std (this model's default).
    """
    from .weights import load_local_weights, read_state_file, torchvision_state

    features: nn.Module = parts.handles["features"]
    if options.get("width", 1.0) != 1.0 or options.get("reduced_tail", False):
        raise ConfigError(f"{name}: ImageNet weights exist for width=1.0 and reduced_tail=False only")
    if weights == "imagenet":
        from torchvision.models import MobileNet_V2_Weights, MobileNet_V3_Large_Weights

        w = MobileNet_V2_Weights.IMAGENET1K_V1 if name.endswith("v2") else MobileNet_V3_Large_Weights.IMAGENET1K_V1
        state = torchvision_state(w, what=f"{name} backbone_weights='imagenet'")
    else:
        if str(weights).lower().endswith((".h5", ".hdf5")):
            raise ConfigError(f"{name}: Keras .h5 files cannot be loaded into torchvision's MobileNet layout")
        state = read_state_file(weights)
        if not any(k.startswith("features.") for k in state):
            load_local_weights(parts.backbone, weights, name)
            return None
    # only features.* (the classifier is not part of the detector); the split backbone shares these modules
    feats = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    own = features.state_dict()
    bad = [k for k in own if k not in feats or feats[k].shape != own[k].shape]
    if bad:
        raise ConfigError(f"{name}: {weights} does not fit the MobileNet backbone (missing or mis-shaped: {bad[:4]})")
    features.load_state_dict(feats)
    return None
