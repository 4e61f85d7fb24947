"""Input parsing and accumulation shared by the evaluators and the error breakdown.

Every evaluator stores what ``update()`` receives in a :class:`DetectionStore`: per-batch numpy
chunks (float64 boxes and scores, int64 labels), validated once per batch with vectorised checks.
:meth:`DetectionStore.flat` concatenates them into one :class:`FlatData` view in *arrival order*:
images in the order of ``update()`` calls and, within a call, list order; detections and ground
truths of an image in their row order. That arrival order is the tie-breaking order of every
stable sort in :mod:`ssdkit.eval`.

Accepted per-image detections (``labels`` are the class ids ``1..n_classes``, float or int):

- ``Tensor``/``ndarray``/nested list ``[K, 6]`` rows ``[class_id, score, xmin, ymin, xmax, ymax]``
  (an empty array of any shape means no detections);
- a mapping with ``boxes`` ``[K, 4]`` xyxy, ``scores`` ``[K]`` and ``labels`` ``[K]``.

Accepted per-image targets: a mapping with ``boxes`` ``[G, 4]`` xyxy pixels, ``labels`` ``[G]`` in
``1..n_classes``, optional ``difficult`` ``[G]`` (bool or 0/1; default all False), optional
``iscrowd`` ``[G]`` (used by the COCO evaluator only), optional ``image_id`` (str or int; default
``"<image N>"`` with N the arrival index) and optional ``orig_size`` ``(H, W)``.

Boxes must be finite with ``xmax >= xmin`` and ``ymax >= ymin``; scores must be finite.
Violations raise ``ValueError`` naming the batch position, the image id and the offending row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DetectionStore", "FlatData", "ImageId", "as_batch"]

ImageId = str | int


def _to_numpy(x: Any, what: str) -> np.ndarray:
    """Tensor (any device/dtype), ndarray, scalar or nested list -> ndarray (no copy when possible)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu()
        if x.dtype.is_floating_point and x.dtype.itemsize < 4:  # bfloat16 has no numpy twin (half: exact)
            x = x.float()
        x = x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: cannot convert {type(x).__name__} to an array ({exc})") from None


def _scalar_id(x: Any, where: str) -> ImageId:
    """An image id as a plain hashable Python value (str or int)."""
    if hasattr(x, "detach") or isinstance(x, np.ndarray | np.generic):
        a = _to_numpy(x, where)
        if a.size != 1:
            raise ValueError(f"{where}: image_id must be a scalar, got shape {tuple(a.shape)}")
        x = a.reshape(()).item()
    if isinstance(x, bool) or not isinstance(x, str | int):
        raise ValueError(f"{where}: image_id must be a str or an int, got {type(x).__name__}")
    return x


def as_batch(detections: Any, targets: Any) -> tuple[list[Any], list[Mapping[str, Any]]]:
    """Normalise ``update()`` arguments: one image (array + dict) or a batch (two lists)."""
    if isinstance(targets, Mapping):
        return [detections], [targets]
    if not isinstance(targets, Sequence) or isinstance(targets, str):
        raise ValueError(f"targets must be a list of dicts (or one dict), got {type(targets).__name__}")
    if isinstance(detections, Mapping) or not isinstance(detections, Sequence):
        # a stacked [B, K, 6] array/tensor is also a batch
        if hasattr(detections, "shape") and len(detections.shape) == 3:
            detections = list(detections)
        else:
            raise ValueError(f"detections must be a list with one entry per image, got {type(detections).__name__}")
    if len(detections) != len(targets):
        raise ValueError(f"got {len(detections)} detection entries for {len(targets)} targets; need one per image")
    return list(detections), list(targets)


def _parse_detections(d: Any, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's detections -> (labels float64 [K], scores float64 [K], boxes float64 [K, 4])."""
    if isinstance(d, Mapping):
        missing = {"boxes", "scores", "labels"} - set(d)
        if missing:
            raise ValueError(f"{where}: detection dict needs keys boxes, scores, labels; missing {sorted(missing)}")
        boxes = _to_numpy(d["boxes"], where).astype(np.float64, copy=False)
        scores = _to_numpy(d["scores"], where).astype(np.float64, copy=False)
        labels = _to_numpy(d["labels"], where).astype(np.float64, copy=False)
        if boxes.size == 0 and scores.size == 0 and labels.size == 0:
            return np.empty(0), np.empty(0), np.empty((0, 4))
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"{where}: detection boxes must have shape [K, 4], got {tuple(boxes.shape)}")
        k = boxes.shape[0]
        if scores.shape != (k,) or labels.shape != (k,):
            raise ValueError(
                f"{where}: detection scores {tuple(scores.shape)} and labels {tuple(labels.shape)} "
                f"must both have shape [{k}] like boxes"
            )
        return labels, scores, boxes
    a = _to_numpy(d, where)
    if a.size == 0:
        return np.empty(0), np.empty(0), np.empty((0, 4))
    if a.ndim != 2 or a.shape[1] != 6:
        raise ValueError(
            f"{where}: detections must have shape [K, 6] (class_id, score, xmin, ymin, xmax, ymax), "
            f"got {tuple(a.shape)}"
        )
    a = a.astype(np.float64, copy=False)
    return a[:, 0], a[:, 1], a[:, 2:6]


def _parse_target(
    t: Any, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Any, tuple[int, int] | None]:
    """One target dict -> (labels float64 [G], boxes float64 [G,4], difficult [G], crowd [G], id, size)."""
    if not isinstance(t, Mapping):
        raise ValueError(f"{where}: a target must be a dict with boxes and labels, got {type(t).__name__}")
    missing = {"boxes", "labels"} - set(t)
    if missing:
        raise ValueError(f"{where}: target dict needs keys boxes and labels; missing {sorted(missing)}")
    boxes = _to_numpy(t["boxes"], where).astype(np.float64, copy=False)
    labels = _to_numpy(t["labels"], where).astype(np.float64, copy=False)
    if boxes.size == 0 and labels.size == 0:
        boxes, labels = np.empty((0, 4)), np.empty(0)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}: target boxes must have shape [G, 4], got {tuple(boxes.shape)}")
    g = boxes.shape[0]
    if labels.shape != (g,):
        raise ValueError(f"{where}: target labels must have shape [{g}] like boxes, got {tuple(labels.shape)}")
    flags = []
    for key in ("difficult", "iscrowd"):
        v = t.get(key)
        f = np.zeros(g, bool) if v is None else _to_numpy(v, where)
        if f.size == 0 and g == 0:
            f = np.zeros(0, bool)
        if f.shape != (g,):
            raise ValueError(f"{where}: target {key} must have shape [{g}] like boxes, got {tuple(f.shape)}")
        if f.dtype != bool:
            if not np.all((f == 0) | (f == 1)):
                raise ValueError(f"{where}: target {key} must be booleans (or 0/1)")
            f = f.astype(bool)
        flags.append(f)
    image_id = t.get("image_id")
    size = t.get("orig_size")
    if size is not None:
        s = _to_numpy(size, where).reshape(-1)
        size = (int(s[0]), int(s[1])) if s.size == 2 else None
    return labels, boxes, flags[0], flags[1], image_id, size


@dataclass(frozen=True)
class FlatData:
    """Everything received so far, concatenated in arrival order (see module docstring).

    ``det_*`` arrays have length D (all detections), ``gt_*`` arrays length G (all ground truths).
    ``det_image``/``gt_image`` index ``image_ids``; labels are int64 in ``1..n_classes``.
    """

    image_ids: tuple[ImageId, ...]
    image_sizes: tuple[tuple[int, int] | None, ...]
    det_image: np.ndarray  # int64 [D]
    det_label: np.ndarray  # int64 [D]
    det_score: np.ndarray  # float64 [D]
    det_box: np.ndarray  # float64 [D, 4] xyxy
    gt_image: np.ndarray  # int64 [G]
    gt_label: np.ndarray  # int64 [G]
    gt_box: np.ndarray  # float64 [G, 4] xyxy
    gt_difficult: np.ndarray  # bool [G]
    gt_crowd: np.ndarray  # bool [G]


def _first_bad_row(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad)[0])


class DetectionStore:
    """Accumulates validated detections and targets image by image (see module docstring)."""

    def __init__(self, n_classes: int) -> None:
        if n_classes < 1:
            raise ValueError("need at least one class name")
        self.n_classes = n_classes
        self.reset()

    def reset(self) -> None:
        """Forget everything received."""
        self._ids: list[ImageId] = []
        self._index: dict[ImageId, int] = {}
        self._sizes: list[tuple[int, int] | None] = []
        self._det: list[tuple[np.ndarray, ...]] = []
        self._gt: list[tuple[np.ndarray, ...]] = []
        self._flat: FlatData | None = None
        self.version = 0  # bumped by every add(); lets evaluators cache derived results

    def __len__(self) -> int:
        return len(self._ids)

    def _check(
        self,
        what: str,
        labels: np.ndarray,
        boxes: np.ndarray,
        owner: np.ndarray,
        ids: list[ImageId],
        batch_start: int,
        scores: np.ndarray | None = None,
    ) -> None:
        """Vectorised checks of a whole batch; the error names the first offending image and row."""
        n = self.n_classes

        def fail(bad: np.ndarray, msg: str) -> None:
            i = _first_bad_row(bad)
            img = int(owner[i])
            row = i - int(np.searchsorted(owner, img))
            raise ValueError(f"{what} of image {ids[img]!r} (batch item {img - batch_start}), row {row}: {msg}")

        bad = ~np.isfinite(labels) | (labels != np.round(labels)) | (labels < 1) | (labels > n)
        if bad.any():
            fail(bad, f"class id must be an integer in 1..{n} (0 is background), got {labels[bad][0]!r}")
        if scores is not None:
            bad = ~np.isfinite(scores)
            if bad.any():
                fail(bad, f"score must be finite, got {scores[bad][0]!r}")
        bad = ~np.isfinite(boxes).all(axis=1)
        if bad.any():
            fail(bad, f"box coordinates must be finite, got {boxes[bad][0].tolist()}")
        bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
        if bad.any():
            fail(bad, f"box must be xyxy with xmax >= xmin and ymax >= ymin, got {boxes[bad][0].tolist()}")

    def add(self, detections: Any, targets: Any) -> None:
        """Validate and append one batch; on error nothing of the batch is kept."""
        dets, tgts = as_batch(detections, targets)
        start = len(self._ids)
        new_ids: list[ImageId] = []
        sizes: list[tuple[int, int] | None] = []
        d_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        g_parts: list[tuple[np.ndarray, ...]] = []
        seen_here: set[ImageId] = set()
        for i, (d, t) in enumerate(zip(dets, tgts, strict=True)):
            where = f"batch item {i}"
            labels, boxes, diff, crowd, image_id, size = _parse_target(t, where)
            image_id = f"<image {start + i}>" if image_id is None else _scalar_id(image_id, where)
            if image_id in self._index or image_id in seen_here:
                raise ValueError(f"{where}: image id {image_id!r} was already given; every image must be unique")
            seen_here.add(image_id)
            where = f"batch item {i} (image {image_id!r})"
            d_parts.append(_parse_detections(d, where))
            g_parts.append((labels, boxes, diff, crowd))
            new_ids.append(image_id)
            sizes.append(size)
        if not new_ids:
            return
        all_ids = self._ids + new_ids
        img = np.arange(start, start + len(new_ids), dtype=np.int64)
        d_counts = np.array([p[0].shape[0] for p in d_parts], dtype=np.int64)
        g_counts = np.array([p[0].shape[0] for p in g_parts], dtype=np.int64)
        d_lab, d_score, d_box = (np.concatenate([p[k] for p in d_parts]) for k in range(3))
        g_lab, g_box, g_diff, g_crowd = (np.concatenate([p[k] for p in g_parts]) for k in range(4))
        d_img, g_img = np.repeat(img, d_counts), np.repeat(img, g_counts)
        self._check("detections", d_lab, d_box.reshape(-1, 4), d_img, all_ids, start, d_score)
        self._check("target", g_lab, g_box.reshape(-1, 4), g_img, all_ids, start)
        # only now (everything valid) is the batch committed
        self._det.append((d_img, d_lab.astype(np.int64), d_score, d_box.reshape(-1, 4)))
        self._gt.append((g_img, g_lab.astype(np.int64), g_box.reshape(-1, 4), g_diff, g_crowd))
        for k, image_id in enumerate(new_ids):
            self._index[image_id] = start + k
        self._ids.extend(new_ids)
        self._sizes.extend(sizes)
        self._flat = None
        self.version += 1

    def flat(self) -> FlatData:
        """All data in arrival order (cached until the next :meth:`add`)."""
        if self._flat is None:

            def cat(parts: list[tuple[np.ndarray, ...]], k: int, empty: np.ndarray) -> np.ndarray:
                return np.concatenate([p[k] for p in parts]) if parts else empty

            i64, f64 = np.empty(0, np.int64), np.empty(0)
            box, flag = np.empty((0, 4)), np.empty(0, bool)
            self._flat = FlatData(
                image_ids=tuple(self._ids),
                image_sizes=tuple(self._sizes),
                det_image=cat(self._det, 0, i64),
                det_label=cat(self._det, 1, i64),
                det_score=cat(self._det, 2, f64),
                det_box=cat(self._det, 3, box),
                gt_image=cat(self._gt, 0, i64),
                gt_label=cat(self._gt, 1, i64),
                gt_box=cat(self._gt, 2, box),
                gt_difficult=cat(self._gt, 3, flag),
                gt_crowd=cat(self._gt, 4, flag),
            )
            # one chunk instead of many: later flat() calls and memory stay cheap
            f = self._flat
            if self._det:
                self._det = [(f.det_image, f.det_label, f.det_score, f.det_box)]
                self._gt = [(f.gt_image, f.gt_label, f.gt_box, f.gt_difficult, f.gt_crowd)]
        return self._flat
