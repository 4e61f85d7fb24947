"""Exact Pascal VOC detection metrics (VOC2007 11-point and VOC2010+ all-point AP), vectorised.

Semantics (the official devkit's ``VOCevaldet.m`` / the Python port ``voc_eval.py``), per class:

1. **Order.** All detections of the class, over all images, are sorted by descending score with a
   *stable* sort: equal scores keep *arrival order* (order of ``update()`` calls, then image order
   within the call's list, then row order within the image's detections). The devkit's MATLAB
   ``sort`` is stable too; the Python port's ``np.argsort(-conf)`` is not, so with tied scores it
   can differ from both.
2. **Matching.** A detection's candidate is the ground truth (gt) of the *same image and class* with
   the highest IoU over *all* of them, difficult and already-matched ones included (ties: the first
   in the image's gt order, like ``np.argmax`` and the devkit's strict ``>``). If
   ``IoU >= iou_threshold`` (``iou_compare='>='``, the MATLAB devkit; ``'>'`` is the Python port):
   candidate difficult -> the detection is *ignored* (neither TP nor FP, but it keeps its place in
   the precision/recall arrays, as in the devkit); candidate not matched yet -> TP and the candidate
   becomes matched; else FP (*duplicate*). Otherwise (no gt of the class in the image, or IoU below
   the threshold) -> FP. ``ignore_difficult=False`` treats difficult gts as ordinary ones.
3. **IoU** uses inclusive pixel corners (``plus_one=True``, the devkit): widths are
   ``xmax - xmin + 1`` in the intersection and in both areas, with the devkit's exact float64
   operation order, so results are bit-identical to ``voc_eval.py``. ``plus_one=False`` gives the
   continuous IoU that COCO and training use.
4. **Curves.** ``tp``/``fp`` cumulative sums over the sorted detections;
   ``recall = tp / n_gt`` and ``precision = tp / max(tp + fp, eps)`` (``eps`` = float64 machine
   epsilon), one entry per detection of the class (ignored ones included). ``n_gt`` counts the
   class's non-difficult gts.
5. **AP.** ``voc07``: ``(sum over t in np.arange(0, 1.1, 0.1) of p(t)) / 11`` where ``p(t)`` is the
   maximum precision over entries with ``recall >= t`` (0 if none). The thresholds are the float64
   values every Python implementation uses (``0.30000000000000004``, ``0.6000000000000001``,
   ``0.7000000000000001`` among them, so a recall of exactly 3/10 does *not* reach ``t = 0.3``);
   ``voc07_thresholds='rational'`` compares exact fractions (``10 * tp >= k * n_gt``) instead.
   ``voc10`` (devkit ``VOCap``): area under the monotone precision envelope,
   ``mrec = [0, recall, 1]``, ``mpre = [0, precision, 0]``, ``mpre[i] = max(mpre[i:])``,
   ``AP = sum((mrec[i+1] - mrec[i]) * mpre[i+1])`` over the points where recall changes.
6. **Degenerate classes.** A class with gts but no detections has AP 0 and empty arrays. A class
   with no (non-difficult) gt has an undefined recall, so its AP is NaN (the devkit would divide
   by zero and return 0 for VOC07 but NaN for VOC10); ``classes_without_gt`` decides how mAP
   treats it: ``'exclude'`` (default: mean over classes with ``n_gt > 0``, as mmdetection),
   ``'zero'`` (count it as AP 0, as the Python devkit port's VOC07 mean does) or ``'nan'``
   (mAP becomes NaN). mAP is NaN when no class has a gt under ``'exclude'``.

Implementation: one pass over all detections with numpy, no Python loop per detection or per gt.
Each detection's candidate gt does not depend on the processing order; only TP/FP does (among the
detections whose candidate is the same non-difficult gt and passes the threshold, the first in the
sorted order is the TP, the others are duplicates). So candidates come from a segmented argmax over
(detection, same-image-same-class gt) pairs, and TPs from a first-occurrence search in sorted order.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ._inputs import DetectionStore, FlatData, ImageId

if TYPE_CHECKING:
    from .breakdown import ErrorBreakdown

__all__ = [
    "VOCEvaluator",
    "VOCResult",
    "voc_ap",
    "rowwise_iou",
    "segment_pairs",
    "best_same_class_match",
    "METRICS",
]

Metric = Literal["voc07", "voc10"]
METRICS: tuple[str, ...] = ("voc07", "voc10")
_EPS = np.finfo(np.float64).eps


def _check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _voc07_thresholds() -> np.ndarray:
    # exactly the float64 values of voc_eval.py (np.arange accumulates k * 0.1)
    return np.arange(0.0, 1.1, 0.1)


def rowwise_iou(a: np.ndarray, b: np.ndarray, plus_one: bool = True) -> np.ndarray:
    """IoU of ``a[i]`` with ``b[i]`` for xyxy float64 ``[P, 4]`` arrays -> ``[P]``.

    ``plus_one=True``: VOC devkit inclusive pixels, same operation order as ``voc_eval.py`` (so the
    float64 results, and the comparisons at exactly the threshold, are identical). A zero union
    (two zero-area boxes with ``plus_one=False``) gives IoU 0.
    """
    c = 1.0 if plus_one else 0.0
    iw = np.maximum(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + c, 0.0)
    ih = np.maximum(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + c, 0.0)
    inter = iw * ih
    union = (
        (a[:, 2] - a[:, 0] + c) * (a[:, 3] - a[:, 1] + c) + (b[:, 2] - b[:, 0] + c) * (b[:, 3] - b[:, 1] + c) - inter
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def segment_pairs(det_keys: np.ndarray, gt_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (detection, gt) index pairs with equal keys -> ``(pair_det, pair_gt)`` int64 ``[P]``.

    Pairs are grouped by detection (ascending index) and, within a detection, ordered by ascending
    gt index, so "first" in a group means "first in arrival order".
    """
    if det_keys.size == 0 or gt_keys.size == 0:
        e = np.empty(0, np.int64)
        return e, e
    order = np.argsort(gt_keys, kind="stable")
    uniq, start, count = np.unique(gt_keys[order], return_index=True, return_counts=True)
    pos = np.minimum(np.searchsorted(uniq, det_keys), uniq.size - 1)
    n = np.where(uniq[pos] == det_keys, count[pos], 0)
    pair_det = np.repeat(np.arange(det_keys.size, dtype=np.int64), n)
    ends = np.cumsum(n)
    within = np.arange(ends[-1] if ends.size else 0, dtype=np.int64) - np.repeat(ends - n, n)
    pair_gt = order[np.repeat(start[pos], n) + within]
    return pair_det, pair_gt


def _segment_first_max(
    pair_det: np.ndarray, pair_gt: np.ndarray, iou: np.ndarray, n_det: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per detection: max IoU over its pairs and the first gt reaching it (0.0 / -1 without pairs)."""
    best_iou = np.zeros(n_det)
    best_gt = np.full(n_det, -1, np.int64)
    if pair_det.size == 0:
        return best_iou, best_gt
    starts = np.flatnonzero(np.r_[True, pair_det[1:] != pair_det[:-1]])
    seg_max = np.maximum.reduceat(iou, starts)
    owners = pair_det[starts]
    full_max = np.full(n_det, -np.inf)
    full_max[owners] = seg_max
    hit = np.flatnonzero(iou == full_max[pair_det])
    first = hit[np.r_[True, pair_det[hit][1:] != pair_det[hit][:-1]]]
    best_iou[owners] = seg_max
    best_gt[pair_det[first]] = pair_gt[first]
    return best_iou, best_gt


def _keys(image: np.ndarray, label: np.ndarray, n_classes: int) -> np.ndarray:
    return image * (n_classes + 1) + label


def best_same_class_match(flat: FlatData, n_classes: int, plus_one: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Each detection's devkit candidate: ``(best_iou float64 [D], best_gt int64 [D])``.

    ``best_gt`` indexes ``flat.gt_*`` (-1 when the image has no gt of the detection's class, with
    ``best_iou`` 0). Ties in IoU pick the first gt in arrival order.
    """
    pd, pg = segment_pairs(
        _keys(flat.det_image, flat.det_label, n_classes), _keys(flat.gt_image, flat.gt_label, n_classes)
    )
    iou = rowwise_iou(flat.det_box[pd], flat.gt_box[pg], plus_one)
    return _segment_first_max(pd, pg, iou, flat.det_label.size)


def voc_ap(recall: np.ndarray, precision: np.ndarray, metric: Metric = "voc10") -> float:
    """AP of one class from devkit recall/precision arrays (recall non-decreasing), see module doc.

    Returns 0.0 for empty arrays. ``metric='voc07'`` uses the float ``np.arange`` thresholds.
    """
    _check_choice("metric", metric, METRICS)
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    if metric == "voc10":
        return _ap_voc10(recall, precision)
    return _ap_voc07(precision, np.searchsorted(recall, _voc07_thresholds(), side="left"))


def _ap_voc10(rec: np.ndarray, prec: np.ndarray) -> float:
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the devkit's right-to-left envelope loop
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _ap_voc07(prec: np.ndarray, first_at_or_above: np.ndarray) -> float:
    """``first_at_or_above[k]``: first entry with recall >= t_k (len(prec) when none)."""
    if prec.size == 0:
        return 0.0
    suffix_max = np.append(np.maximum.accumulate(prec[::-1])[::-1], 0.0)  # [len] = "none reached"
    # exact sum, then / 11: a perfect detector gets exactly 1.0 (the devkit's running
    # `ap += p / 11` gives 1.0000000000000002); differences are below 1e-15
    return math.fsum(suffix_max[first_at_or_above].tolist()) / 11.0


@dataclass(frozen=True, eq=False)
class _Matching:
    """Matching of all detections, in sorted order (class, descending score, arrival)."""

    order: np.ndarray  # int64 [D]: sorted position -> detection index (arrival order)
    bounds: np.ndarray  # int64 [C+1]: class c (label c+1) occupies sorted[bounds[c]:bounds[c+1]]
    tp: np.ndarray  # bool [D], sorted order
    ignored: np.ndarray  # bool [D], sorted order (matched a difficult gt)
    duplicate: np.ndarray  # bool [D], sorted order (FP on an already-matched gt)
    tp_cum: np.ndarray  # int64 [D], per-class cumulative TP count
    fp_cum: np.ndarray  # int64 [D], per-class cumulative FP count
    best_iou: np.ndarray  # float64 [D], arrival order
    best_gt: np.ndarray  # int64 [D], arrival order
    n_gt: np.ndarray  # int64 [C], gts counted for recall
    n_difficult: np.ndarray  # int64 [C]


def _segmented_cumsum(x: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    cs = np.cumsum(x, dtype=np.int64)
    base = np.concatenate(([0], cs))[bounds[:-1]]
    return cs - np.repeat(base, np.diff(bounds))


def match_detections(
    flat: FlatData,
    n_classes: int,
    iou_threshold: float = 0.5,
    iou_compare: str = ">=",
    plus_one: bool = True,
    ignore_difficult: bool = True,
) -> _Matching:
    """Devkit TP/FP/ignored assignment of every detection (module docstring, steps 1-4)."""
    best_iou, best_gt = best_same_class_match(flat, n_classes, plus_one)
    passes = best_iou >= iou_threshold if iou_compare == ">=" else best_iou > iou_threshold
    matched = (best_gt >= 0) & passes
    difficult = flat.gt_difficult if ignore_difficult else np.zeros_like(flat.gt_difficult)

    # class, then descending score, then arrival: two stable sorts (the second, on small ints,
    # is a radix sort); faster than a 3-key lexsort on large sets
    order = np.argsort(-flat.det_score, kind="stable")
    order = order[np.argsort(flat.det_label[order].astype(np.int32), kind="stable")]
    s_gt = best_gt[order]
    s_matched = matched[order]
    ignored = np.zeros(order.size, bool)
    ignored[s_matched] = difficult[s_gt[s_matched]]
    cand = np.flatnonzero(s_matched & ~ignored)
    tp = np.zeros(order.size, bool)
    # the first sorted detection pointing at a gt takes it; np.unique's index is the first occurrence
    _, first = np.unique(s_gt[cand], return_index=True)
    tp[cand[first]] = True
    duplicate = s_matched & ~ignored & ~tp
    fp = ~tp & ~ignored

    bounds = np.searchsorted(flat.det_label[order], np.arange(1, n_classes + 2)).astype(np.int64)
    counted = ~difficult
    n_gt = np.bincount(flat.gt_label[counted], minlength=n_classes + 1)[1:]
    n_diff = np.bincount(flat.gt_label[flat.gt_difficult], minlength=n_classes + 1)[1:]
    return _Matching(
        order=order,
        bounds=bounds,
        tp=tp,
        ignored=ignored,
        duplicate=duplicate,
        tp_cum=_segmented_cumsum(tp, bounds),
        fp_cum=_segmented_cumsum(fp, bounds),
        best_iou=best_iou,
        best_gt=best_gt,
        n_gt=n_gt.astype(np.int64),
        n_difficult=n_diff.astype(np.int64),
    )


@dataclass(frozen=True, eq=False)
class VOCResult:
    """Result of :meth:`VOCEvaluator.compute`. Per-class arrays are indexed by ``label - 1``.

    Attributes:
        class_names: the C class names (no background).
        metric: ``'voc07'`` or ``'voc10'``; ``ap`` and ``map`` are for this metric.
        ap: float64 ``[C]``; NaN for classes without (non-difficult) gt.
        map: mean AP over classes (see ``classes_without_gt``).
        precision, recall: per class, float64 ``[D_c]`` devkit arrays over the class's detections
            in sorted order (recall NaN-filled when ``n_gt == 0``).
        scores: per class, float64 ``[D_c]`` scores in the same sorted order (for thresholds).
        tp, fp, n_ignored: int64 ``[C]`` totals (``tp + fp + n_ignored == n_detections``);
            ``n_duplicates`` (part of ``fp``) counts detections on an already-matched gt.
        n_gt: int64 ``[C]`` gts counted for recall (difficult excluded when ``ignore_difficult``).
        n_difficult: int64 ``[C]`` difficult gts (counted or not).
        n_detections: int64 ``[C]``.
        max_recall: float64 ``[C]`` final recall (0 without detections, NaN without gt).
        n_images, iou_threshold, classes_without_gt: the evaluation's setting.
    """

    class_names: tuple[str, ...]
    metric: str
    ap: np.ndarray
    map: float
    precision: tuple[np.ndarray, ...]
    recall: tuple[np.ndarray, ...]
    scores: tuple[np.ndarray, ...]
    tp: np.ndarray
    fp: np.ndarray
    n_ignored: np.ndarray
    n_duplicates: np.ndarray
    n_gt: np.ndarray
    n_difficult: np.ndarray
    n_detections: np.ndarray
    max_recall: np.ndarray
    n_images: int
    iou_threshold: float
    classes_without_gt: str
    settings: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        """Mapping-style access (``result['map']``, alias ``'mAP'``) to the attributes."""
        try:
            return getattr(self, "map" if key == "mAP" else key)
        except AttributeError:
            raise KeyError(key) from None

    def keys(self) -> list[str]:
        """Names usable with ``result[name]``."""
        return [f.name for f in dataclasses.fields(self)]

    def __contains__(self, key: object) -> bool:
        """``'map' in result``: the names of :meth:`keys` and the alias ``'mAP'``."""
        return key == "mAP" or key in self.keys()

    @property
    def ap_by_class(self) -> dict[str, float]:
        """``{class name: AP}``."""
        return dict(zip(self.class_names, self.ap.tolist(), strict=True))

    def to_dict(self, arrays: bool = False) -> dict[str, Any]:
        """JSON-ready summary (NaN -> None by :func:`ssdkit.eval.report.write_json`).

        ``arrays=True`` also includes each class's precision/recall/score arrays.
        """
        from .report import voc_result_dict

        return voc_result_dict(self, arrays=arrays)

    def summary_table(self) -> str:
        """Per-class text table: class, GT, difficult, detections, TP, FP, AP, max recall; mAP."""
        from .report import summary_table

        return summary_table(self)

    def write_json(self, path: str | Path, extra: dict[str, Any] | None = None, arrays: bool = False) -> Path:
        """Write :meth:`to_dict` (plus ``extra`` keys) to ``path`` atomically."""
        from .report import write_json

        return write_json(path, {**self.to_dict(arrays=arrays), **(extra or {})})

    def plot_pr(self, path: str | Path, title: str | None = None) -> Path:
        """PR curves of every class with gt in one PNG (AP in the legend)."""
        from .plots import plot_pr

        return plot_pr(self, path, title=title)


class VOCEvaluator:
    """Accumulates detections and targets batch by batch and computes exact Pascal VOC AP.

    Args:
        class_names: names of classes ``1..C`` (no background).
        iou_threshold: in ``(0, 1]``; 0.5 for VOC.
        metric: default metric of :meth:`compute`: ``'voc07'`` (11-point) or ``'voc10'`` (all-point).
        ignore_difficult: difficult gts are neither counted nor matchable as TP (VOC); ``False``
            treats them as ordinary gts.
        iou_compare: ``'>='`` (official MATLAB devkit) or ``'>'`` (Python port ``voc_eval.py``);
            they differ only when an IoU equals the threshold exactly.
        plus_one: inclusive pixel convention of the devkit (``True``) or continuous IoU.
        classes_without_gt: how mAP treats classes whose AP is undefined (no counted gt):
            ``'exclude'``, ``'zero'`` or ``'nan'`` (module docstring, point 6).
        voc07_thresholds: ``'float'`` (the ``np.arange`` values of every Python implementation) or
            ``'rational'`` (exact fractions ``k / 10``).

    Usage::

        ev = VOCEvaluator(class_names)
        for images, targets in loader:
            ev.update(model.predict(images), targets)   # list[Tensor[K, 6]], list[dict]
        res = ev.compute()                              # or compute(metric="voc10"), no re-matching
        print(res.summary_table()); res.write_json("metrics.json"); res.plot_pr("pr.png")
    """

    def __init__(
        self,
        class_names: Sequence[str],
        iou_threshold: float = 0.5,
        metric: Metric = "voc07",
        ignore_difficult: bool = True,
        *,
        iou_compare: Literal[">=", ">"] = ">=",
        plus_one: bool = True,
        classes_without_gt: Literal["exclude", "zero", "nan"] = "exclude",
        voc07_thresholds: Literal["float", "rational"] = "float",
    ) -> None:
        if isinstance(class_names, str):
            raise ValueError("class_names must be a list of names, not one string")
        self.class_names = tuple(str(c) for c in class_names)
        if not 0.0 < float(iou_threshold) <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold!r}")
        _check_choice("metric", metric, METRICS)
        _check_choice("iou_compare", iou_compare, (">=", ">"))
        _check_choice("classes_without_gt", classes_without_gt, ("exclude", "zero", "nan"))
        _check_choice("voc07_thresholds", voc07_thresholds, ("float", "rational"))
        self.iou_threshold = float(iou_threshold)
        self.metric = metric
        self.ignore_difficult = bool(ignore_difficult)
        self.iou_compare = iou_compare
        self.plus_one = bool(plus_one)
        self.classes_without_gt = classes_without_gt
        self.voc07_thresholds = voc07_thresholds
        self._store = DetectionStore(len(self.class_names))
        self._matching: tuple[int, _Matching] | None = None

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_ids(self) -> tuple[ImageId, ...]:
        """Image ids in arrival order."""
        return self._store.flat().image_ids

    def __len__(self) -> int:
        """Number of images received."""
        return len(self._store)

    def reset(self) -> None:
        """Forget all received images."""
        self._store.reset()
        self._matching = None

    def update(self, detections: Any, targets: Any) -> None:
        """Add a batch: ``detections[i]`` and ``targets[i]`` describe the same image.

        ``detections``: list of ``[K, 6]`` tensors/arrays (rows ``[class_id, score, x1, y1, x2, y2]``)
        or dicts with ``boxes``/``scores``/``labels``; ``targets``: list of dicts with ``boxes``,
        ``labels``, optional ``difficult`` and ``image_id``. One image may also be passed as an
        array and a dict. Boxes are xyxy in the same pixels (the original image's, for numbers
        comparable with published ones). Raises ``ValueError`` (nothing of the batch is kept) on
        wrong shapes, class ids outside ``1..C``, non-finite scores/coordinates, inverted boxes or
        an image id given before.
        """
        self._store.add(detections, targets)

    def _match(self) -> _Matching:
        v = self._store.version
        if self._matching is None or self._matching[0] != v:
            m = match_detections(
                self._store.flat(),
                self.n_classes,
                self.iou_threshold,
                self.iou_compare,
                self.plus_one,
                self.ignore_difficult,
            )
            self._matching = (v, m)
        return self._matching[1]

    def compute(self, metric: Metric | None = None) -> VOCResult:
        """AP per class and mAP for ``metric`` (default: the constructor's).

        Matching is cached until the next :meth:`update`, so computing both metrics costs one pass.
        """
        metric = self.metric if metric is None else metric
        _check_choice("metric", metric, METRICS)
        flat = self._store.flat()
        m = self._match()
        c = self.n_classes
        scores_sorted = flat.det_score[m.order]
        thresholds = _voc07_thresholds()
        ks = np.arange(11, dtype=np.int64)
        ap = np.full(c, np.nan)
        precisions, recalls, scores = [], [], []
        for k in range(c):  # one vectorised step per class
            sl = slice(int(m.bounds[k]), int(m.bounds[k + 1]))
            tp_c, fp_c = m.tp_cum[sl], m.fp_cum[sl]
            npos = int(m.n_gt[k])
            prec = tp_c / np.maximum(tp_c + fp_c, _EPS)
            if npos > 0:
                rec = tp_c / float(npos)
                if metric == "voc10":
                    ap[k] = _ap_voc10(rec, prec)
                elif self.voc07_thresholds == "float":
                    ap[k] = _ap_voc07(prec, np.searchsorted(rec, thresholds, side="left"))
                else:  # recall >= k/10  <=>  10 * tp >= k * npos, in exact integers
                    ap[k] = _ap_voc07(prec, np.searchsorted(10 * tp_c, ks * npos, side="left"))
            else:
                rec = np.full(tp_c.shape, np.nan)
            precisions.append(prec)
            recalls.append(rec)
            scores.append(scores_sorted[sl])

        cls_sorted = np.repeat(np.arange(c), np.diff(m.bounds))

        def per_class(flags: np.ndarray) -> np.ndarray:
            return np.bincount(cls_sorted[flags], minlength=c).astype(np.int64)

        n_det = np.diff(m.bounds)
        tp = per_class(m.tp)
        n_ign = per_class(m.ignored)
        has_gt = m.n_gt > 0
        max_recall = np.where(has_gt, tp / np.maximum(m.n_gt, 1), np.nan)
        if self.classes_without_gt == "zero":
            mean_ap = float(np.mean(np.where(has_gt, ap, 0.0)))
        elif self.classes_without_gt == "nan":
            mean_ap = float(np.mean(ap))
        else:
            mean_ap = float(np.mean(ap[has_gt])) if has_gt.any() else float("nan")
        return VOCResult(
            class_names=self.class_names,
            metric=metric,
            ap=ap,
            map=mean_ap,
            precision=tuple(precisions),
            recall=tuple(recalls),
            scores=tuple(scores),
            tp=tp,
            fp=n_det - tp - n_ign,
            n_ignored=n_ign,
            n_duplicates=per_class(m.duplicate),
            n_gt=m.n_gt,
            n_difficult=m.n_difficult,
            n_detections=n_det,
            max_recall=max_recall,
            n_images=len(flat.image_ids),
            iou_threshold=self.iou_threshold,
            classes_without_gt=self.classes_without_gt,
            settings={
                "iou_compare": self.iou_compare,
                "plus_one": self.plus_one,
                "ignore_difficult": self.ignore_difficult,
                "voc07_thresholds": self.voc07_thresholds,
            },
        )

    def error_breakdown(
        self, score_threshold: float | None = None, mislocalised_min_iou: float = 0.1
    ) -> ErrorBreakdown:
        """Error breakdown (:mod:`ssdkit.eval.breakdown`) of everything received, same matching settings.

        ``score_threshold``: count only detections with ``score >= score_threshold`` (``None``: all).
        """
        from .breakdown import breakdown_from_flat

        return breakdown_from_flat(
            self._store.flat(),
            self.class_names,
            self.iou_threshold,
            iou_compare=self.iou_compare,
            plus_one=self.plus_one,
            ignore_difficult=self.ignore_difficult,
            score_threshold=score_threshold,
            mislocalised_min_iou=mislocalised_min_iou,
        )
