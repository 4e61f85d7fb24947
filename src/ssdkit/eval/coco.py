"""COCO detection metrics (the 12 standard numbers) through pycocotools or faster-coco-eval.

:class:`COCOEvaluator` accumulates the same inputs as :class:`~ssdkit.eval.voc.VOCEvaluator`,
converts them to the COCO formats and runs the official evaluation code; nothing of COCO's
semantics is re-implemented here. Continuous coordinates (no ``+1``), ``bbox = [x, y, w, h]``
with ``w = xmax - xmin``.

Ground truth comes either from the targets (``annotations=None``): one COCO image per target,
``area = w * h``, and ``iscrowd = 1`` for difficult *or* crowd boxes, so COCO ignores them (a
detection on one is neither TP nor FP, and several detections may match it); or from an existing
annotations JSON (``annotations=path|dict``), whose boxes, areas and crowd flags are used as they
are (targets then only identify the images; only the images received by ``update()`` are
evaluated).

Ids: class label ``k`` (1..C) is written as category ``label_to_cat_id[k]`` (a mapping, or a
sequence whose item ``k - 1`` is the id; default: for an annotations JSON, the category whose
``name`` equals the class name, otherwise ``k`` itself). Image ids are mapped to COCO's integer ids
by ``image_id_map`` (a mapping or a callable) when given; otherwise, with an annotations JSON, an
id matches a JSON image ``id`` or its ``file_name`` (full, base name, or stem); without one, ints
are kept, digit strings with distinct values become ints (VOC's ``"000005"`` -> 5), and anything
else is numbered 1..N in arrival order. :meth:`COCOEvaluator.image_id_mapping` returns the mapping.

Backends: ``'faster_coco_eval'`` (C++ evaluation; same numbers as pycocotools to ~1e-16 in our
tests and several times faster, see ``bench/eval.py``), ``'pycocotools'``, or ``'auto'``
(faster-coco-eval when importable, else pycocotools).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._inputs import DetectionStore, ImageId

__all__ = ["COCOEvaluator", "COCOResult", "STAT_NAMES", "resolve_backend"]

# names of COCOeval.stats[0:12], in its order
STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
Backend = Literal["auto", "pycocotools", "faster_coco_eval"]


def resolve_backend(backend: str) -> str:
    """``'auto'`` -> ``'faster_coco_eval'`` if importable else ``'pycocotools'``; checks availability."""
    if backend not in ("auto", "pycocotools", "faster_coco_eval"):
        raise ValueError(f"backend must be 'auto', 'pycocotools' or 'faster_coco_eval', got {backend!r}")
    import importlib.util

    if backend == "auto":
        return "faster_coco_eval" if importlib.util.find_spec("faster_coco_eval") else "pycocotools"
    if importlib.util.find_spec(backend) is None:
        raise ValueError(f"COCO backend {backend!r} is not installed (pip install {backend.replace('_', '-')})")
    return backend


def _quiet() -> contextlib.AbstractContextManager[Any]:
    # pycocotools prints progress to stdout; keep the caller's output clean
    return contextlib.redirect_stdout(io.StringIO())


def _run_cocoeval(
    backend: str,
    gt_dataset: dict[str, Any],
    dets: list[dict[str, Any]],
    img_ids: list[int],
    cat_ids: list[int],
    max_dets: Sequence[int],
) -> Any:
    """Run evaluate/accumulate/summarize with the chosen library; returns the COCOeval object."""
    with _quiet():
        if backend == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            gt = COCO()
            gt.dataset = gt_dataset
            gt.createIndex()
            if dets:
                dt = gt.loadRes(dets)
            else:  # loadRes fails on an empty list; an empty result set is still a valid evaluation
                dt = COCO()
                dt.dataset = {"images": gt_dataset["images"], "categories": gt_dataset["categories"], "annotations": []}
                dt.createIndex()
            ev = COCOeval(gt, dt, "bbox")
        else:
            from faster_coco_eval import COCO, COCOeval_faster

            gt = COCO(gt_dataset)
            dt = gt.loadRes(dets)
            ev = COCOeval_faster(gt, dt, "bbox", print_function=lambda *a, **k: None)
        ev.params.imgIds = list(img_ids)
        ev.params.catIds = list(cat_ids)
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@dataclass(frozen=True, eq=False)
class COCOResult:
    """Result of :meth:`COCOEvaluator.compute`; per-class arrays are indexed by ``label - 1``.

    Attributes:
        stats: the 12 COCO numbers by name (:data:`STAT_NAMES`), exactly as the backend's
            ``COCOeval.stats`` (``-1`` where undefined, e.g. no gt of a size range).
        ap, ap50, ap75: float64 ``[C]`` per-class AP@[.5:.95], AP@.5, AP@.75 (area all, most
            detections); NaN for classes without non-crowd gt.
        max_recall: float64 ``[C]`` recall at IoU .5 with the most detections per image.
        n_gt: int64 ``[C]`` non-crowd (counted) gts; n_detections: int64 ``[C]`` detections given.
        precision: float64 ``[T=10, R=101, C, A=4, M]`` COCO's interpolated precision, classes in
            label order (-1 where undefined).
        backend: the library used.
    """

    class_names: tuple[str, ...]
    stats: dict[str, float]
    ap: np.ndarray
    ap50: np.ndarray
    ap75: np.ndarray
    max_recall: np.ndarray
    n_gt: np.ndarray
    n_detections: np.ndarray
    precision: np.ndarray
    backend: str
    n_images: int
    max_dets: tuple[int, ...]

    @property
    def map(self) -> float:
        """COCO's headline AP@[.5:.95] (``stats['AP']``)."""
        return self.stats["AP"]

    @property
    def ap_by_class(self) -> dict[str, float]:
        """``{class name: AP@[.5:.95]}`` (NaN for classes without non-crowd gt), as ``VOCResult``'s."""
        return dict(zip(self.class_names, self.ap.tolist(), strict=True))

    def __getitem__(self, key: str) -> Any:
        """``result['AP50']`` (a stat) or any attribute (``result['ap']``)."""
        if key in self.stats:
            return self.stats[key]
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def pr_curves_50(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per class ``(recall thresholds [101], precision [101])`` at IoU .5, area all, most dets."""
        rec = np.linspace(0.0, 1.0, 101)
        return [(rec, np.maximum(self.precision[0, :, k, 0, -1], 0.0)) for k in range(len(self.class_names))]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: stats, settings and per-class rows."""
        return {
            "metric": "coco",
            "backend": self.backend,
            "max_dets": list(self.max_dets),
            "n_images": self.n_images,
            **self.stats,
            "per_class": [
                {
                    "class": name,
                    "label": i + 1,
                    "ap": float(self.ap[i]),
                    "ap50": float(self.ap50[i]),
                    "ap75": float(self.ap75[i]),
                    "max_recall": float(self.max_recall[i]),
                    "n_gt": int(self.n_gt[i]),
                    "n_detections": int(self.n_detections[i]),
                }
                for i, name in enumerate(self.class_names)
            ],
        }

    def summary_table(self) -> str:
        """Per-class text table (class, GT, detections, AP, AP50, AP75, max recall) and the 12 numbers."""
        from .report import summary_table

        return summary_table(self)

    def write_json(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write :meth:`to_dict` (plus ``extra`` keys) to ``path`` atomically."""
        from .report import write_json

        return write_json(path, {**self.to_dict(), **(extra or {})})

    def plot_pr(self, path: str | Path, title: str | None = None) -> Path:
        """Per-class PR curves at IoU .5 (AP50 in the legend) to a PNG."""
        from .plots import plot_pr

        return plot_pr(self, path, title=title)


def _xyxy_to_xywh(b: np.ndarray) -> np.ndarray:
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


class COCOEvaluator:
    """Accumulates detections and targets, evaluates with the official COCO code.

    Args:
        class_names: names of classes ``1..C`` (no background).
        label_to_cat_id: label -> original category id (mapping, or sequence indexed by ``label - 1``).
        image_id_map: our image id -> COCO integer image id (mapping or callable).
        backend: ``'auto'``, ``'pycocotools'`` or ``'faster_coco_eval'``.
        annotations: optional COCO annotations JSON (path or loaded dict) to take the gt from.
        max_dets: COCO's ``maxDets`` (per image and category); the stats use the last one.

    See the module docstring for id mapping and ground-truth rules. Usage::

        ev = COCOEvaluator(class_names, label_to_cat_id=dataset.cat_ids)
        for images, targets in loader:
            ev.update(model.predict(images), targets)
        res = ev.compute(); print(res.summary_table()); ev.write_detections("detections.json")
    """

    def __init__(
        self,
        class_names: Sequence[str],
        label_to_cat_id: Mapping[int, int] | Sequence[int] | None = None,
        image_id_map: Mapping[ImageId, int] | Callable[[ImageId], int] | None = None,
        backend: Backend = "auto",
        *,
        annotations: str | Path | Mapping[str, Any] | None = None,
        max_dets: Sequence[int] = (1, 10, 100),
    ) -> None:
        if isinstance(class_names, str):
            raise ValueError("class_names must be a list of names, not one string")
        self.class_names = tuple(str(c) for c in class_names)
        self.backend = resolve_backend(backend)
        self.max_dets = tuple(int(m) for m in max_dets)
        if not self.max_dets or min(self.max_dets) < 1:
            raise ValueError("max_dets must be positive integers")
        self._annotations: dict[str, Any] | None = None
        if annotations is not None:
            if isinstance(annotations, Mapping):
                self._annotations = dict(annotations)
            else:
                with open(annotations, encoding="utf-8") as f:
                    self._annotations = json.load(f)
            for key in ("images", "annotations", "categories"):
                if key not in self._annotations:
                    raise ValueError(f"COCO annotations lack the {key!r} list")
        self._cat_ids = self._resolve_categories(label_to_cat_id)
        self._image_id_map = image_id_map
        self._store = DetectionStore(len(self.class_names))

    # ------------------------------------------------------------------ ids
    def _resolve_categories(self, mapping: Mapping[int, int] | Sequence[int] | None) -> np.ndarray:
        c = len(self.class_names)
        if mapping is None:
            if self._annotations is not None:
                by_name = {str(cat["name"]): int(cat["id"]) for cat in self._annotations["categories"]}
                if all(n in by_name for n in self.class_names):
                    ids = [by_name[n] for n in self.class_names]
                else:
                    known = {int(cat["id"]) for cat in self._annotations["categories"]}
                    missing = [n for n in self.class_names if n not in by_name]
                    if not set(range(1, c + 1)) <= known:
                        raise ValueError(
                            f"classes {missing[:5]} are not category names of the annotations; pass label_to_cat_id"
                        )
                    ids = list(range(1, c + 1))
            else:
                ids = list(range(1, c + 1))
        elif isinstance(mapping, Mapping):
            absent = [k for k in range(1, c + 1) if k not in mapping]
            if absent:
                raise ValueError(f"label_to_cat_id lacks labels {absent[:10]} (need every label 1..{c})")
            ids = [int(mapping[k]) for k in range(1, c + 1)]
        else:
            ids = [int(x) for x in mapping]
            if len(ids) != c:
                raise ValueError(f"label_to_cat_id has {len(ids)} ids for {c} classes")
        if len(set(ids)) != len(ids):
            raise ValueError("label_to_cat_id maps two labels to the same category id")
        return np.asarray(ids, dtype=np.int64)

    def image_id_mapping(self) -> dict[ImageId, int]:
        """Our image ids (arrival order) -> the integer COCO image ids written and evaluated."""
        ids = self._store.flat().image_ids
        m = self._image_id_map
        if m is not None:
            get = m if callable(m) else m.__getitem__
            try:
                out = {i: int(get(i)) for i in ids}
            except KeyError as exc:
                raise ValueError(f"image_id_map has no entry for image id {exc.args[0]!r}") from None
        elif self._annotations is not None:
            out = self._match_annotation_images(ids)
        elif (all(isinstance(i, int) for i in ids)
              or (all(isinstance(i, str) and i.isdigit() for i in ids) and len({int(i) for i in ids}) == len(ids))):
            out = {i: int(i) for i in ids}
        else:
            out = {i: k + 1 for k, i in enumerate(ids)}
        if len(set(out.values())) != len(out):
            raise ValueError("two images map to the same COCO image id")
        return out

    def _match_annotation_images(self, ids: Sequence[ImageId]) -> dict[ImageId, int]:
        assert self._annotations is not None
        by_id = {int(im["id"]) for im in self._annotations["images"]}
        by_name: dict[str, int] = {}
        for im in self._annotations["images"]:
            fn = str(im.get("file_name", ""))
            base = fn.replace("\\", "/").rsplit("/", 1)[-1]
            for key in (fn, base, base.rsplit(".", 1)[0]):
                by_name.setdefault(key, int(im["id"]))
        out: dict[ImageId, int] = {}
        for i in ids:
            if isinstance(i, int) and i in by_id:
                out[i] = i
            elif isinstance(i, str) and i in by_name:
                out[i] = by_name[i]
            elif isinstance(i, str) and i.isdigit() and int(i) in by_id:
                out[i] = int(i)
            else:
                raise ValueError(
                    f"image id {i!r} matches no image id or file_name of the annotations; pass image_id_map"
                )
        return out

    # ------------------------------------------------------------------ data
    def __len__(self) -> int:
        return len(self._store)

    def reset(self) -> None:
        """Forget all received images."""
        self._store.reset()

    def update(self, detections: Any, targets: Any) -> None:
        """Add a batch; same inputs and errors as :meth:`VOCEvaluator.update`.

        Boxes must be in the pixels of the original images (those of the annotations JSON).
        """
        self._store.add(detections, targets)

    def detections_json(self) -> list[dict[str, Any]]:
        """All detections in COCO results format: ``image_id``, ``category_id``, ``bbox`` (xywh), ``score``."""
        f = self._store.flat()
        img = np.asarray(list(self.image_id_mapping().values()), dtype=np.int64)[f.det_image].tolist()
        cat = self._cat_ids[f.det_label - 1].tolist()
        boxes = _xyxy_to_xywh(f.det_box).tolist()
        return [
            {"image_id": i, "category_id": c, "bbox": b, "score": s}
            for i, c, b, s in zip(img, cat, boxes, f.det_score.tolist(), strict=True)
        ]

    def ground_truth_json(self) -> dict[str, Any]:
        """The COCO gt dataset evaluated (built from the targets, or the annotations given)."""
        if self._annotations is not None:
            # COCOeval adds keys ('ignore') to the gt dicts it is given: hand it copies
            return {**self._annotations, "annotations": [dict(a) for a in self._annotations["annotations"]]}
        f = self._store.flat()
        mapping = self.image_id_mapping()
        coco_ids = list(mapping.values())
        images = []
        for k, (orig, size) in enumerate(zip(f.image_ids, f.image_sizes, strict=True)):
            im: dict[str, Any] = {"id": coco_ids[k], "file_name": str(orig)}
            if size is not None:
                im["height"], im["width"] = size
            images.append(im)
        xywh = _xyxy_to_xywh(f.gt_box)
        img = np.asarray(coco_ids, dtype=np.int64)[f.gt_image].tolist()
        cat = self._cat_ids[f.gt_label - 1].tolist()
        crowd = (f.gt_difficult | f.gt_crowd).astype(int).tolist()
        area = (xywh[:, 2] * xywh[:, 3]).tolist()
        anns = [
            {"id": j + 1, "image_id": i, "category_id": c, "bbox": b, "area": a, "iscrowd": z}
            for j, (i, c, b, a, z) in enumerate(zip(img, cat, xywh.tolist(), area, crowd, strict=True))
        ]
        cats = [
            {"id": int(cid), "name": name} for cid, name in zip(self._cat_ids.tolist(), self.class_names, strict=True)
        ]
        return {"images": images, "annotations": anns, "categories": cats}

    def write_detections(self, path: str | Path) -> Path:
        """Write :meth:`detections_json` to ``path`` (the ``detections.json`` COCO expects), atomically."""
        from .report import write_json

        return write_json(path, self.detections_json())

    # ------------------------------------------------------------------ metrics
    def _gt_counts(self, gt: dict[str, Any], img_ids: list[int]) -> np.ndarray:
        cat_index = {int(cid): k for k, cid in enumerate(self._cat_ids.tolist())}
        keep = set(img_ids)
        n = np.zeros(len(self.class_names), np.int64)
        for a in gt["annotations"]:
            k = cat_index.get(int(a["category_id"]))
            if k is not None and a["image_id"] in keep and not a.get("iscrowd", 0) and not a.get("ignore", 0):
                n[k] += 1
        return n

    def compute(self) -> COCOResult:
        """Run the COCO evaluation of everything received (see :class:`COCOResult`)."""
        if len(self._store) == 0:
            raise ValueError("nothing to evaluate: call update() with at least one image first")
        f = self._store.flat()
        img_ids = sorted(self.image_id_mapping().values())
        gt = self.ground_truth_json()
        cat_ids = self._cat_ids.tolist()
        ev = _run_cocoeval(self.backend, gt, self.detections_json(), img_ids, sorted(cat_ids), self.max_dets)
        # COCOeval orders categories by sorted id; put them back in label order
        order = [sorted(cat_ids).index(c) for c in cat_ids]
        prec = np.asarray(ev.eval["precision"], dtype=np.float64)[:, :, order]
        rec = np.asarray(ev.eval["recall"], dtype=np.float64)[:, order]
        thr = np.asarray(ev.params.iouThrs)

        def ap_at(t_index: slice | int) -> np.ndarray:
            p = prec[t_index, :, :, 0, -1].reshape(-1, prec.shape[1], prec.shape[2])
            valid = p > -1
            with np.errstate(invalid="ignore"):
                return np.where(
                    valid.any(axis=(0, 1)),
                    np.where(valid, p, 0).sum(axis=(0, 1)) / np.maximum(valid.sum(axis=(0, 1)), 1),
                    np.nan,
                )

        r50 = rec[int(np.argmin(np.abs(thr - 0.5))), :, 0, -1]
        return COCOResult(
            class_names=self.class_names,
            stats={k: float(v) for k, v in zip(STAT_NAMES, np.asarray(ev.stats)[:12].tolist(), strict=True)},
            ap=ap_at(slice(None)),
            ap50=ap_at(int(np.argmin(np.abs(thr - 0.5)))),
            ap75=ap_at(int(np.argmin(np.abs(thr - 0.75)))),
            max_recall=np.where(r50 > -1, r50, np.nan),
            n_gt=self._gt_counts(gt, img_ids),
            n_detections=np.bincount(f.det_label - 1, minlength=len(self.class_names)).astype(np.int64),
            precision=prec,
            backend=self.backend,
            n_images=len(img_ids),
            max_dets=self.max_dets,
        )
