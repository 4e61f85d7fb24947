"""SSD architectures: :class:`SSD`, :func:`build_model` and one module per family.

| name | module | default input |
| --- | --- | --- |
| ``ssd300_vgg16``, ``ssd512_vgg16`` | :mod:`ssdkit.models.vgg` | 300, 512 |
| ``ssd7`` | :mod:`ssdkit.models.ssd7` | 300x480 |
| ``ssd300_mobilenet_v1`` | :mod:`ssdkit.models.mobilenet_v1` | 300 |
| ``ssdlite320_mobilenet_v2``, ``ssdlite320_mobilenet_v3_large`` | :mod:`ssdkit.models.ssdlite` | 320 |
| ``toy_ssd`` | :mod:`ssdkit.models.toy` | 128 |

Example::

    from ssdkit.models import build_model
    model = build_model("ssdlite320_mobilenet_v2", n_classes=3, backbone_weights="imagenet")
    cls_logits, box_deltas = model(images_uint8)          # [B, N, C+1], [B, N, 4]
    detections = model.predict(images_uint8)              # list of [K, 6]

Other backbones: :meth:`SSD.from_backbone` (any module returning a list of feature maps) and
:func:`register_model` so that checkpoints of such models reload by name. Weight tools:
:func:`load_weights` (partial loads with a report), :func:`resample_classes` (weight sampling),
:func:`load_keras_h5` (Keras ``.h5`` by layer name), :func:`from_torchvision` (torchvision's SSD300 /
SSDLite320 detectors, e.g. with their COCO weights). Inference: :meth:`SSD.fuse` (BatchNorm folded,
optionally channels_last) for CPU serving.
"""

from __future__ import annotations

from .keras_h5 import load_keras_h5, read_keras_h5
from .loading import LoadReport, load_weights
from .registry import (
    MODEL_SPECS,
    ModelSpec,
    build_model,
    get_spec,
    list_models,
    register_model,
)
from .resample import resample_classes
from .ssd import SSD, SSDHead, count_macs, feature_map_shapes
from .torchvision_port import from_torchvision
from .weights import WeightsNotFoundError

__all__ = [
    "MODEL_SPECS",
    "SSD",
    "LoadReport",
    "ModelSpec",
    "SSDHead",
    "WeightsNotFoundError",
    "build_model",
    "count_macs",
    "feature_map_shapes",
    "get_spec",
    "list_models",
    "load_keras_h5",
    "load_weights",
    "read_keras_h5",
    "from_torchvision",
    "register_model",
    "resample_classes",
]
