"""Inference and deployment: :class:`Predictor`, ONNX/TorchScript export, ONNX Runtime, int8, video.

Submodules import lazily (``import ssdkit.deploy`` loads nothing heavy):

- :mod:`~ssdkit.deploy.predictor`: :class:`Predictor`, :class:`Detections`;
- :mod:`~ssdkit.deploy.export`: :func:`export_model` (ONNX raw / decoded / NMS-in-graph,
  TorchScript), verification against PyTorch;
- :mod:`~ssdkit.deploy.ort`: CPU-tuned ONNX Runtime sessions;
- :mod:`~ssdkit.deploy.quantize`: int8 static quantisation with calibration and reports;
- :mod:`~ssdkit.deploy.video`: annotated videos, JSON-lines, real/fake face summaries;
- :mod:`~ssdkit.deploy.sources`, :mod:`~ssdkit.deploy.preprocess`, :mod:`~ssdkit.deploy.graph`,
  :mod:`~ssdkit.deploy.synthetic`: inputs, preprocessing, exportable post-processing, test models.

See ``docs/deploy.md``.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "Predictor": ("ssdkit.deploy.predictor", "Predictor"),
    "Detections": ("ssdkit.deploy.predictor", "Detections"),
    "export_model": ("ssdkit.deploy.export", "export_model"),
    "ExportResult": ("ssdkit.deploy.export", "ExportResult"),
    "VerifyReport": ("ssdkit.deploy.export", "VerifyReport"),
    "quantize_export": ("ssdkit.deploy.quantize", "quantize_export"),
    "QuantReport": ("ssdkit.deploy.quantize", "QuantReport"),
    "process_video": ("ssdkit.deploy.video", "process_video"),
    "create_session": ("ssdkit.deploy.ort", "create_session"),
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'ssdkit.deploy' has no attribute {name!r}")
