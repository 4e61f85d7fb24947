"""Error breakdown: where the detections and the missed objects of each class go.

Every detection (with ``score >= score_threshold``) gets exactly one category, decided in this
order after the VOC matching of :mod:`ssdkit.eval.voc` (same IoU threshold, comparison, pixel
convention and difficult handling):

1. ``tp``: true positive.
2. ``ignored``: matched a difficult gt (neither TP nor FP in VOC; not an error).
3. ``duplicate``: its best same-class gt passes the threshold but was already taken by a
   higher-scoring detection (the VOC duplicate false positive).
4. ``wrong_class``: otherwise, its IoU with some gt of *another* class (difficult or not) passes the
   threshold: right place, wrong label (checked before mislocalisation, as TIDE does, because the
   classifier is the part to blame).
5. ``mislocalised``: otherwise, right class but poor box: its best same-class IoU is in
   ``[mislocalised_min_iou, iou_threshold)`` (0.1 by default, as in Hoiem et al. and TIDE).
6. ``background``: everything else (best IoU with any gt of its class below
   ``mislocalised_min_iou`` and no other-class gt passing the threshold).

Per class, ``missed = n_gt - tp``: counted gts that no TP found (with a score threshold, the gts
missed *at that operating point*). The counts add up:
``tp + ignored + duplicate + wrong_class + mislocalised + background == n_detections``.
Categories 3-6 are the VOC false positives. All counts are per class of the *detection* except
``n_gt``/``missed``, which are per class of the gt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ._inputs import FlatData
from .voc import VOCEvaluator, match_detections, rowwise_iou, segment_pairs

__all__ = ["ErrorBreakdown", "error_breakdown", "breakdown_from_flat", "CATEGORIES"]

CATEGORIES: tuple[str, ...] = ("tp", "ignored", "duplicate", "wrong_class", "mislocalised", "background")


@dataclass(frozen=True, eq=False)
class ErrorBreakdown:
    """Per-class counts (int64 ``[C]`` arrays indexed by ``label - 1``); see module docstring."""

    class_names: tuple[str, ...]
    n_gt: np.ndarray
    missed: np.ndarray
    n_detections: np.ndarray
    tp: np.ndarray
    ignored: np.ndarray
    duplicate: np.ndarray
    wrong_class: np.ndarray
    mislocalised: np.ndarray
    background: np.ndarray
    iou_threshold: float
    score_threshold: float | None
    mislocalised_min_iou: float

    def totals(self) -> dict[str, int]:
        """Sums over classes of every count."""
        keys = ("n_gt", "missed", "n_detections", *CATEGORIES)
        return {k: int(getattr(self, k).sum()) for k in keys}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: settings, totals and ``per_class`` rows."""
        keys = ("n_gt", "missed", "n_detections", *CATEGORIES)
        return {
            "iou_threshold": self.iou_threshold,
            "score_threshold": self.score_threshold,
            "mislocalised_min_iou": self.mislocalised_min_iou,
            "totals": self.totals(),
            "per_class": [
                {"class": name, **{k: int(getattr(self, k)[i]) for k in keys}}
                for i, name in enumerate(self.class_names)
            ],
        }

    def summary_table(self) -> str:
        """Text table, one row per class plus a total row."""
        from .report import format_table

        keys = ("n_gt", "missed", "n_detections", *CATEGORIES)
        heads = ("class", "GT", "missed", "dets", "TP", "ignored", "dup", "wrong cls", "misloc", "bg")
        rows = [[name, *(int(getattr(self, k)[i]) for k in keys)] for i, name in enumerate(self.class_names)]
        t = self.totals()
        rows.append(["total", *(t[k] for k in keys)])
        return format_table(heads, rows)


def breakdown_from_flat(
    flat: FlatData,
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
    *,
    iou_compare: str = ">=",
    plus_one: bool = True,
    ignore_difficult: bool = True,
    score_threshold: float | None = None,
    mislocalised_min_iou: float = 0.1,
) -> ErrorBreakdown:
    """:func:`error_breakdown` on already accumulated data (used by :class:`VOCEvaluator`)."""
    if not 0.0 <= mislocalised_min_iou <= iou_threshold:
        raise ValueError(f"mislocalised_min_iou must be in [0, iou_threshold], got {mislocalised_min_iou!r}")
    c = len(class_names)
    if score_threshold is not None:
        keep = flat.det_score >= score_threshold
        flat = dataclasses.replace(
            flat,
            det_image=flat.det_image[keep],
            det_label=flat.det_label[keep],
            det_score=flat.det_score[keep],
            det_box=flat.det_box[keep],
        )
    m = match_detections(flat, c, iou_threshold, iou_compare, plus_one, ignore_difficult)

    def passes(iou: np.ndarray) -> np.ndarray:
        return iou >= iou_threshold if iou_compare == ">=" else iou > iou_threshold

    # best IoU with a gt of another class in the same image (0 without one)
    pd, pg = segment_pairs(flat.det_image, flat.gt_image)
    iou = rowwise_iou(flat.det_box[pd], flat.gt_box[pg], plus_one)
    iou[flat.gt_label[pg] == flat.det_label[pd]] = 0.0
    other = np.zeros(flat.det_label.size)
    np.maximum.at(other, pd, iou)

    o = m.order
    fp = ~m.tp & ~m.ignored & ~m.duplicate
    wrong = fp & passes(other[o])
    misloc = fp & ~wrong & (m.best_iou[o] >= mislocalised_min_iou)
    background = fp & ~wrong & ~misloc
    cls = flat.det_label[o] - 1

    def count(flags: np.ndarray) -> np.ndarray:
        return np.bincount(cls[flags], minlength=c).astype(np.int64)

    tp = count(m.tp)
    return ErrorBreakdown(
        class_names=tuple(class_names),
        n_gt=m.n_gt,
        missed=m.n_gt - tp,
        n_detections=np.bincount(cls, minlength=c).astype(np.int64),
        tp=tp,
        ignored=count(m.ignored),
        duplicate=count(m.duplicate),
        wrong_class=count(wrong),
        mislocalised=count(misloc),
        background=count(background),
        iou_threshold=float(iou_threshold),
        score_threshold=score_threshold,
        mislocalised_min_iou=float(mislocalised_min_iou),
    )


def error_breakdown(
    detections: Sequence[Any],
    targets: Sequence[Any],
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
    *,
    iou_compare: Literal[">=", ">"] = ">=",
    plus_one: bool = True,
    ignore_difficult: bool = True,
    score_threshold: float | None = None,
    mislocalised_min_iou: float = 0.1,
) -> ErrorBreakdown:
    """Error breakdown of one set of images (inputs as :meth:`VOCEvaluator.update`).

    ``score_threshold``: only detections with ``score >= score_threshold`` are counted (``None``:
    all), so the counts describe one operating point. See the module docstring for the categories.
    """
    # the evaluator validates the thresholds and options
    ev = VOCEvaluator(
        class_names, iou_threshold, ignore_difficult=ignore_difficult, iou_compare=iou_compare, plus_one=plus_one
    )
    ev.update(list(detections), list(targets))
    return ev.error_breakdown(score_threshold, mislocalised_min_iou)
