"""Evaluation: exact Pascal VOC AP, COCO metrics, error breakdown, per-class reports and PR plots.

``import ssdkit.eval`` is cheap: pycocotools, faster-coco-eval and matplotlib load on first use.

- :class:`VOCEvaluator` (:mod:`ssdkit.eval.voc`): VOC2007 11-point / VOC2010+ all-point AP.
- :class:`COCOEvaluator` (:mod:`ssdkit.eval.coco`): the 12 COCO numbers via pycocotools or
  faster-coco-eval, ``detections.json`` in COCO results format.
- :func:`error_breakdown` (:mod:`ssdkit.eval.breakdown`): missed / mislocalised / wrong class /
  duplicate / background counts per class.
- :func:`plot_pr` (:mod:`ssdkit.eval.plots`), :func:`summary_table` and :func:`write_json`
  (:mod:`ssdkit.eval.report`).

See ``docs/evaluation.md`` for the exact semantics.
"""

from __future__ import annotations

from typing import Any

from .voc import VOCEvaluator, VOCResult, voc_ap

_LAZY = {
    "COCOEvaluator": ("ssdkit.eval.coco", "COCOEvaluator"),
    "COCOResult": ("ssdkit.eval.coco", "COCOResult"),
    "error_breakdown": ("ssdkit.eval.breakdown", "error_breakdown"),
    "ErrorBreakdown": ("ssdkit.eval.breakdown", "ErrorBreakdown"),
    "plot_pr": ("ssdkit.eval.plots", "plot_pr"),
    "summary_table": ("ssdkit.eval.report", "summary_table"),
    "write_json": ("ssdkit.eval.report", "write_json"),
}

__all__ = ["VOCEvaluator", "VOCResult", "voc_ap", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'ssdkit.eval' has no attribute {name!r}")
