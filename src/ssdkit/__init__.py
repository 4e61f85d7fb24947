"""ssdkit: SSD (Single Shot MultiBox Detector) object detection for PyTorch.

Importing ``ssdkit`` is cheap and has no side effects; heavy parts load on first use::

    import ssdkit
    model = ssdkit.load("runs/demo/best.pt")      # rebuilds architecture, anchors, classes
    dets = model.predict(image)                    # boxes in original-image pixels
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load": ("ssdkit.checkpoint", "load"),
    "save": ("ssdkit.checkpoint", "save"),
    "build_model": ("ssdkit.models", "build_model"),
    "train": ("ssdkit.engine.trainer", "train"),
    "Predictor": ("ssdkit.deploy.predictor", "Predictor"),
    "AnchorGenerator": ("ssdkit.anchors", "AnchorGenerator"),
    "SSDTargetEncoder": ("ssdkit.matching", "SSDTargetEncoder"),
    "MultiBoxLoss": ("ssdkit.loss", "MultiBoxLoss"),
    "decode_detections": ("ssdkit.postprocess", "decode_detections"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'ssdkit' has no attribute {name!r}")
