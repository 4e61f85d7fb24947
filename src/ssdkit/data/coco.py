"""COCO JSON datasets (``instances_*.json``).

- Categories are remapped to labels ``1..n`` in ascending category-id order (or in the order of
  ``classes`` when given: then only those categories are used and the others are excluded,
  counted). Both maps are kept so results can be written back with the original ids:
  ``dataset.cat_id_to_label`` and ``dataset.label_to_cat_id``.
- ``bbox`` is ``[x, y, w, h]`` in continuous pixel coordinates -> ``xyxy`` (``x + w``, no ``+1``).
- ``iscrowd=1`` boxes are dropped from the targets and counted (``excluded``) by default
  (``policy.crowd='drop'``); ``'difficult'`` keeps them flagged difficult (evaluation-neutral in the
  VOC evaluator). COCO metrics should be computed from the original JSON, which handles crowds.
  A non-standard ``"difficult": 1`` (or ``"ignore": 1``) annotation field is read as difficult
  (the converter writes VOC difficult boxes that way).
- Image ids are ``str(image['id'])``; ``dataset.coco_image_ids`` keeps the integers. An image with no
  annotations is an image without boxes. Annotations pointing at unknown images are counted
  (``orphan_annotation``) and ignored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DataError
from .base import DetectionDataset, RawImage, strip_background
from .io import join, read_bytes

__all__ = ["COCODataset", "load_coco_json"]


def load_coco_json(path: str) -> dict[str, Any]:
    """Read and sanity-check a COCO JSON file (``images``, ``annotations``, ``categories`` lists)."""
    try:
        data = json.loads(read_bytes(path))
    except FileNotFoundError:
        raise DataError(f"{path}: COCO annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: a COCO file must hold a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: missing the {key!r} list; is this a COCO instances file?")
    if not isinstance(data.get("annotations", []), list):
        raise DataError(f"{path}: 'annotations' must be a list")
    return data


class COCODataset(DetectionDataset):
    """A COCO-format dataset (see the module docstring).

    Args:
        images_dir: folder the ``file_name`` entries are relative to (local path or URL).
        annotations_json: the COCO JSON file.
        classes: category names to use, in label order (``None``: every category by id).
        **options: :class:`~ssdkit.data.base.DetectionDataset` options.

    Attributes:
        cat_id_to_label, label_to_cat_id: the category id <-> label maps.
        coco_image_ids: the integer image id of each item.
    """

    format = "coco"

    def __init__(
        self,
        images_dir: str | os.PathLike[str],
        annotations_json: str | os.PathLike[str],
        classes: Sequence[str] | None = None,
        **options: Any,
    ) -> None:
        ann = os.fspath(annotations_json)
        options.setdefault("name", f"coco:{os.path.basename(ann)}")
        super().__init__(**options)
        self.images_dir = os.fspath(images_dir)
        self.annotations_json = ann
        data = load_coco_json(ann)
        cats = sorted(data["categories"], key=lambda c: int(c["id"]))
        names_by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in cats}
        given = strip_background(classes)
        notes: list[tuple[str, str, str | None, str, str]] = []
        if given is None:
            used = [(cid, nm) for cid, nm in names_by_id.items()]
        else:
            by_name = {nm: cid for cid, nm in names_by_id.items()}
            missing = [c for c in given if c not in by_name]
            if missing:
                raise DataError(f"{ann}: classes {missing} are not categories of this file ({sorted(by_name)})")
            used = [(by_name[c], c) for c in given]
        dup = {nm for _, nm in used if [n for _, n in used].count(nm) > 1}
        if dup:
            raise DataError(f"{ann}: several categories share the name(s) {sorted(dup)}; rename them")
        self.cat_id_to_label = {cid: i + 1 for i, (cid, _) in enumerate(used)}
        self.label_to_cat_id = {v: k for k, v in self.cat_id_to_label.items()}
        class_names = [nm for _, nm in used]
        crowd_mode = self.policy.crowd

        images: dict[int, dict[str, Any]] = {}
        order: list[int] = []
        raws_extra: list[RawImage] = []
        for im in data["images"]:
            iid = int(im["id"])
            if iid in images:
                raws_extra.append(self._raw(im, [], [], [], [], ann))  # reported as a duplicate id
                continue
            images[iid] = {"im": im, "names": [], "boxes": [], "diff": [], "refs": []}
            order.append(iid)
        for k, a in enumerate(data.get("annotations", [])):
            aid = a.get("id", f"#{k}")
            slot = images.get(int(a.get("image_id", -1)))
            if slot is None:
                notes.append(("orphan_annotation", ann, f"annotation id {aid}",
                              f"image_id {a.get('image_id')!r} is not in 'images'; ignored", "removed"))
                continue
            cid = int(a.get("category_id", -1))
            if cid not in self.cat_id_to_label:
                if cid in names_by_id:
                    notes.append(("excluded", ann, f"annotation id {aid}",
                                  f"category {names_by_id[cid]!r} is not in classes", "excluded"))
                    continue
                name = f"<category id {cid}>"
            else:
                name = class_names[self.cat_id_to_label[cid] - 1]
            difficult = bool(a.get("difficult", 0) or a.get("ignore", 0))
            if a.get("iscrowd", 0):
                if crowd_mode == "drop":
                    notes.append(("excluded", ann, f"annotation id {aid}", "crowd box (data.policy.crowd=drop)",
                                  "excluded"))
                    continue
                difficult = True
            bbox = a.get("bbox")
            if isinstance(bbox, (list, tuple)) and len(bbox) == 4:
                try:
                    x, y, w, h = (float(v) for v in bbox)
                    box = [x, y, x + w, y + h]
                except (TypeError, ValueError):
                    box = [np.nan] * 4
            else:
                box = [np.nan] * 4
            slot["names"].append(name)
            slot["boxes"].append(box)
            slot["diff"].append(difficult)
            slot["refs"].append(aid)
        raws = [self._raw(images[i]["im"], images[i]["names"], images[i]["boxes"], images[i]["diff"],
                          images[i]["refs"], ann) for i in order]
        raws.extend(raws_extra)
        self._finalize(raws, class_names, notes)
        self.coco_image_ids = [int(r.image_id) for r in self.records]

    def _raw(self, im: dict[str, Any], names: list[str], boxes: list[list[float]], diff: list[bool],
             refs: list[Any], ann: str) -> RawImage:
        w, h = im.get("width"), im.get("height")
        size = ((int(h), int(w)) if isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0
                else None)
        if "file_name" not in im:
            raise DataError(f"{ann}: image id {im.get('id')} has no file_name")
        return RawImage(
            image_id=str(int(im["id"])), path=join(self.images_dir, str(im["file_name"])), source=ann, names=names,
            boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4), difficult=np.asarray(diff, dtype=bool),
            size=size, refs=refs, ref_fmt="annotation id {}",
        )
