"""Port torchvision's SSD detectors to ssdkit: same weights, ssdkit anchors/normalisation/decoding.

``torchvision.models.detection.ssd300_vgg16`` has exactly ssdkit's ``ssd300_vgg16`` architecture
(35,641,826 parameters with 91 classes on both sides), and ``ssdlite320_mobilenet_v3_large`` exactly
ssdkit's ``ssdlite320_mobilenet_v3_large`` with ``reduced_tail=True`` (3,440,060). Both use the
``box * K + class`` output layout, so the port is a renaming of state-dict keys. Typical use::

    tv = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=...)  # e.g. COCO weights
    model = from_torchvision(tv)        # ssdkit SSD; same raw outputs for the same input pixels

Anchors are rebuilt with ssdkit's generator from torchvision's parameters; they equal torchvision's
except where torchvision clamps a box's width/height to the image (a few wide boxes of the coarsest
layers). Input normalisation is torchvision's (SSD300: RGB minus ``[123, 117, 104]``; SSDLite: ``x /
127.5 - 1``); torchvision's resize step is not part of the model (ssdkit resizes in the data pipeline).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..errors import ConfigError
from .registry import build_model
from .ssd import SSD

__all__ = ["convert_torchvision_state", "from_torchvision"]

_VGG_FEATURES = {0: "conv1_1", 2: "conv1_2", 5: "conv2_1", 7: "conv2_2", 10: "conv3_1", 12: "conv3_2",
                 14: "conv3_3", 17: "conv4_1", 19: "conv4_2", 21: "conv4_3"}
_VGG_EXTRA0 = {"1": "conv5_1", "3": "conv5_2", "5": "conv5_3", "7.1": "fc6", "7.3": "fc7"}

_HEAD = [
    (re.compile(r"^head\.classification_head\.module_list\.(\d+)\."), "heads.cls.{}."),
    (re.compile(r"^head\.regression_head\.module_list\.(\d+)\."), "heads.box.{}."),
]


def _vgg_key(key: str) -> str | None:
    if key == "backbone.scale_weight":
        return "backbone.conv4_3_norm.weight"
    m = re.match(r"^backbone\.features\.(\d+)\.(weight|bias)$", key)
    if m:
        return f"backbone.base.{_VGG_FEATURES[int(m.group(1))]}.{m.group(2)}"
    m = re.match(r"^backbone\.extra\.0\.(\d+(?:\.\d+)?)\.(weight|bias)$", key)
    if m:
        return f"backbone.base.{_VGG_EXTRA0[m.group(1)]}.{m.group(2)}"
    m = re.match(r"^backbone\.extra\.(\d+)\.(0|2)\.(weight|bias)$", key)
    if m:
        return f"backbone.extras.conv{int(m.group(1)) + 5}_{1 if m.group(2) == '0' else 2}.{m.group(3)}"
    for pattern, fmt in _HEAD:
        m = pattern.match(key)
        if m:
            return fmt.format(m.group(1)) + key[m.end():]
    return None


def _ssdlite_key(key: str) -> str | None:
    for src, dst in (("backbone.features.0.", "backbone.stage1."), ("backbone.features.1.", "backbone.stage2."),
                     ("backbone.extra.", "backbone.extras.")):
        if key.startswith(src):
            return dst + key[len(src):]
    for pattern, fmt in _HEAD:
        m = pattern.match(key)
        if m:
            rest = key[m.end():]
            # torchvision predictor: Sequential(Conv2dNormActivation (0), Conv2d (1)) -> .dw / .pred
            rest = "dw." + rest[2:] if rest.startswith("0.") else "pred." + rest[2:]
            return fmt.format(m.group(1)) + rest
    return None


def convert_torchvision_state(name: str, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision detector state dict -> ssdkit ``name`` (``ssd300_vgg16`` or ``ssdlite320_mobilenet_v3_large``)."""
    rename = {"ssd300_vgg16": _vgg_key, "ssdlite320_mobilenet_v3_large": _ssdlite_key}.get(name)
    if rename is None:
        raise ConfigError(f"no torchvision port for {name!r}; supported: ssd300_vgg16, ssdlite320_mobilenet_v3_large")
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        new = rename(k)
        if new is None:
            raise ConfigError(f"unexpected key {k!r} in a torchvision {name} state dict")
        out[new] = v
    return out


def from_torchvision(tv_model: nn.Module, class_names: list[str] | None = None) -> SSD:
    """An ssdkit :class:`SSD` with the weights of a torchvision ``ssd300_vgg16`` or
    ``ssdlite320_mobilenet_v3_large`` (any class count). Returned in eval mode."""
    from torchvision.models.detection.ssd import SSD as TVSSD

    if not isinstance(tv_model, TVSSD):
        raise ConfigError(f"expected a torchvision SSD detector, got {type(tv_model).__name__}")
    head0 = tv_model.head.classification_head.module_list[0]
    is_lite = isinstance(head0, nn.Sequential)
    n_outputs = tv_model.head.classification_head.num_columns
    gen = tv_model.anchor_generator
    kw: dict[str, Any] = {}
    if is_lite:
        name = "ssdlite320_mobilenet_v3_large"
        last = [m for m in tv_model.backbone.features[1].modules() if isinstance(m, nn.Conv2d)][-1]
        kw["reduced_tail"] = last.out_channels != 960
    else:
        name = "ssd300_vgg16"
        kw["steps"] = [[s, s] for s in gen.steps] if gen.steps is not None else None
    scales = [float(s) for s in gen.scales]
    aspect_ratios = [[1.0] + [r for a in ars for r in (float(a), 1.0 / float(a))] for ars in gen.aspect_ratios]
    mean = [m * 255.0 for m in tv_model.transform.image_mean]
    std = [s * 255.0 for s in tv_model.transform.image_std]
    size = tv_model.transform.fixed_size or (320, 320)
    model = build_model(
        name, n_outputs - 1, image_size=tuple(size), class_names=class_names, scales=scales,
        aspect_ratios=aspect_ratios, two_boxes_for_ar1=True, offsets=None, mean=mean, std=std, swap_channels=None,
        variances=[1.0 / w for w in tv_model.box_coder.weights], **kw,
    )
    missing, unexpected = model.load_state_dict(convert_torchvision_state(name, tv_model.state_dict()), strict=False)
    if unexpected or [k for k in missing if not k.endswith("num_batches_tracked")]:
        raise ConfigError(
            f"torchvision {name} does not match ssdkit's: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    return model.eval()
