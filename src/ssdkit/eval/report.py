"""Per-class text tables and ``metrics.json`` for evaluation results.

- :func:`summary_table` renders a :class:`~ssdkit.eval.voc.VOCResult` or
  :class:`~ssdkit.eval.coco.COCOResult` as a fixed-width table: one row per class (class, GT count,
  detections, AP, max recall, ...) and a final mAP row.
- :func:`write_json` writes any result dict atomically (temporary file in the same folder, fsync,
  ``os.replace``), so a crash never leaves a truncated ``metrics.json``. NaN and infinities become
  ``null`` (strict JSON), numpy values become plain numbers and lists.
- :func:`atomic_write` is the generic helper (also used for the PR plot).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from ..fileio import atomic_open

if TYPE_CHECKING:
    from .coco import COCOResult
    from .voc import VOCResult

__all__ = ["summary_table", "write_json", "to_jsonable", "atomic_write", "format_table", "voc_result_dict"]


def to_jsonable(obj: Any) -> Any:
    """Recursively convert numpy scalars/arrays, tuples and paths to JSON types; NaN/inf -> None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, then rename it to ``path``."""
    with atomic_open(path, "wb") as f:
        write(f)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented strict JSON to ``path`` atomically; returns the path."""
    text = json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _fmt(v: Any) -> str:
    if isinstance(v, float | np.floating):
        return "-" if not math.isfinite(float(v)) else f"{float(v):.4f}"
    return str(v)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Fixed-width table: first column left-aligned, the others right-aligned; floats with 4 decimals."""
    cells = [list(map(str, headers))] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def _voc_table(r: VOCResult) -> str:
    heads = ("class", "GT", "difficult", "dets", "TP", "FP", "AP", "max recall")
    rows: list[list[Any]] = [
        [
            name,
            int(r.n_gt[i]),
            int(r.n_difficult[i]),
            int(r.n_detections[i]),
            int(r.tp[i]),
            int(r.fp[i]),
            float(r.ap[i]),
            float(r.max_recall[i]),
        ]
        for i, name in enumerate(r.class_names)
    ]
    rows.append(
        [
            f"mAP ({r.metric}, IoU {r.iou_threshold:g})",
            int(r.n_gt.sum()),
            int(r.n_difficult.sum()),
            int(r.n_detections.sum()),
            int(r.tp.sum()),
            int(r.fp.sum()),
            r.map,
            "",
        ]
    )
    note = "AP '-': no ground truth (undefined"
    note += ", excluded from mAP)" if r.classes_without_gt == "exclude" else f", counted as {r.classes_without_gt})"
    return format_table(heads, rows) + ("\n" + note if (r.n_gt == 0).any() else "")


def _coco_table(r: COCOResult) -> str:
    heads = ("class", "GT", "dets", "AP", "AP50", "AP75", "max recall@.5")
    rows: list[list[Any]] = [
        [
            name,
            int(r.n_gt[i]),
            int(r.n_detections[i]),
            float(r.ap[i]),
            float(r.ap50[i]),
            float(r.ap75[i]),
            float(r.max_recall[i]),
        ]
        for i, name in enumerate(r.class_names)
    ]
    s = r.stats
    rows.append(["all (COCO)", int(r.n_gt.sum()), int(r.n_detections.sum()), s["AP"], s["AP50"], s["AP75"], ""])
    stats = "  ".join(f"{k} {_fmt(float(v))}" for k, v in s.items())
    return format_table(heads, rows) + "\n" + stats


def summary_table(result: VOCResult | COCOResult) -> str:
    """Per-class table of a VOC or COCO result (see module docstring)."""
    from .coco import COCOResult

    return _coco_table(result) if isinstance(result, COCOResult) else _voc_table(result)


def voc_result_dict(r: VOCResult, arrays: bool = False) -> dict[str, Any]:
    """JSON-ready dict of a :class:`VOCResult` (``arrays``: include per-class curves)."""
    per_class = []
    for i, name in enumerate(r.class_names):
        row: dict[str, Any] = {
            "class": name,
            "label": i + 1,
            "ap": float(r.ap[i]),
            "n_gt": int(r.n_gt[i]),
            "n_difficult": int(r.n_difficult[i]),
            "n_detections": int(r.n_detections[i]),
            "tp": int(r.tp[i]),
            "fp": int(r.fp[i]),
            "n_ignored": int(r.n_ignored[i]),
            "n_duplicates": int(r.n_duplicates[i]),
            "max_recall": float(r.max_recall[i]),
        }
        if arrays:
            row.update(precision=r.precision[i], recall=r.recall[i], scores=r.scores[i])
        per_class.append(row)
    return {
        "metric": r.metric,
        "map": r.map,
        "iou_threshold": r.iou_threshold,
        "classes_without_gt": r.classes_without_gt,
        **r.settings,
        "n_images": r.n_images,
        "per_class": per_class,
    }
