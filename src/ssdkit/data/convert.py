"""Write any ssdkit dataset as VOC, COCO, CSV or YOLO (``ssdkit data convert``).

What is written (from the validated records: removed/clipped boxes stay removed/clipped):

- ``voc``: ``out/Annotations/<id>.xml`` (``<size>``, ``<object>`` with name, difficult, truncated=0,
  bndbox), ``out/ImageSets/Main/<split>.txt`` and the images in ``out/JPEGImages/``.
- ``coco``: ``out/annotations/instances_<split>.json`` with the images in ``out/<split>/``; category
  ids are the source's (COCO) or ``1..n``; ``bbox`` is ``[x, y, w, h]``; difficult boxes get a
  non-standard ``"difficult": 1`` field (ssdkit reads it back).
- ``csv``: ``out/<split>_labels.csv`` with the header ``filename,width,height,class,xmin,ymin,xmax,ymax``
  (plus ``difficult`` when any box is difficult; an image without boxes is one row with empty box
  fields) and the images in ``out/images/``.
- ``yolo``: ``out/images/<split>/``, ``out/labels/<split>/<stem>.txt`` (``class cx cy w h`` normalised,
  0-based classes) and ``out/data.yaml`` (``path``, ``names``, one key per split written; an
  existing YAML with the same names gets the new split added). YOLO has no difficult flag: such
  boxes are written as ordinary boxes and counted in the returned summary.

Numbers are written with 10 significant digits, so pixel coordinates round-trip exactly through
VOC/COCO/CSV (float32) and to within 1e-4 px through YOLO's normalised form.
``images``: ``'copy'`` (default), ``'link'`` (symlinks, local files only) or ``'none'`` (annotations only).
"""

from __future__ import annotations

import csv
import io
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import DataError
from .base import DetectionDataset
from .io import is_url, probe_image, read_bytes, write_bytes

__all__ = ["convert_dataset", "write_voc", "write_coco", "write_csv", "write_yolo", "WRITERS"]


def _num(v: float) -> str:
    return f"{float(v):.10g}"


def _items(ds: DetectionDataset) -> list[tuple[Any, tuple[int, int], np.ndarray]]:
    """``(record, (H, W), pixel boxes float64 [G, 4])`` per image (probing sizes the build did not read)."""
    out = []
    for rec in ds.records:
        size = rec.size
        if size is None:
            info = probe_image(read_bytes(rec.path), rec.path)
            size = (info.height, info.width)
        b = rec.boxes.astype(np.float64)
        if rec.normalized:
            b = b * np.array([size[1], size[0], size[1], size[0]], dtype=np.float64)
        out.append((rec, (int(size[0]), int(size[1])), b))
    return out


def _file_name(rec: Any) -> str:
    return rec.path.rsplit("/", 1)[-1] if is_url(rec.path) else os.path.basename(rec.path)


def _place_images(ds: DetectionDataset, dest: str, images: str) -> dict[str, str]:
    """Copy/link the images into ``dest``; returns ``{image_id: file name}``. Name clashes raise."""
    if images not in ("copy", "link", "none"):
        raise ValueError(f"images must be 'copy', 'link' or 'none', got {images!r}")
    names: dict[str, str] = {}
    used: dict[str, str] = {}
    for rec in ds.records:
        fn = _file_name(rec)
        if fn in used and used[fn] != rec.path:
            raise DataError(f"two images would both be written as {fn} ({used[fn]} and {rec.path}); rename one")
        used[fn] = rec.path
        names[rec.image_id] = fn
        if images == "none":
            continue
        target = os.path.join(dest, fn)
        if images == "link":
            if is_url(rec.path):
                raise DataError(f"{rec.path}: cannot symlink a URL; use images='copy'")
            os.makedirs(dest, exist_ok=True)
            if os.path.lexists(target):
                os.remove(target)
            os.symlink(os.path.abspath(rec.path), target)
        else:
            write_bytes(target, read_bytes(rec.path))
    return names


def write_voc(ds: DetectionDataset, out: str, split: str = "train", images: str = "copy") -> dict[str, Any]:
    """Write ``ds`` in the Pascal VOC layout under ``out`` (see the module docstring)."""
    names = _place_images(ds, os.path.join(out, "JPEGImages"), images)
    ids = []
    for rec, (h, w), boxes in _items(ds):
        root = ET.Element("annotation")
        ET.SubElement(root, "folder").text = "JPEGImages"
        ET.SubElement(root, "filename").text = names[rec.image_id]
        size = ET.SubElement(root, "size")
        ET.SubElement(size, "width").text = str(w)
        ET.SubElement(size, "height").text = str(h)
        ET.SubElement(size, "depth").text = "3"
        for b, lab, d in zip(boxes, rec.labels, rec.difficult):
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = ds.classes[int(lab) - 1]
            ET.SubElement(obj, "truncated").text = "0"
            ET.SubElement(obj, "difficult").text = "1" if d else "0"
            bb = ET.SubElement(obj, "bndbox")
            for k, v in zip(("xmin", "ymin", "xmax", "ymax"), b):
                ET.SubElement(bb, k).text = _num(v)
        ET.indent(root)
        write_bytes(os.path.join(out, "Annotations", f"{rec.image_id}.xml"), ET.tostring(root, encoding="utf-8"))
        ids.append(rec.image_id)
    write_bytes(os.path.join(out, "ImageSets", "Main", f"{split}.txt"), ("\n".join(ids) + "\n").encode())
    return {"format": "voc", "root": out, "image_set": split, "images": len(ids)}


def write_coco(ds: DetectionDataset, out: str, split: str = "train", images: str = "copy") -> dict[str, Any]:
    """Write ``ds`` as a COCO JSON under ``out/annotations`` with images in ``out/<split>``."""
    names = _place_images(ds, os.path.join(out, split), images)
    label_to_cat = getattr(ds, "label_to_cat_id", None) or {i + 1: i + 1 for i in range(len(ds.classes))}
    coco_ids = getattr(ds, "coco_image_ids", None)
    cats = [{"id": int(label_to_cat[i + 1]), "name": c, "supercategory": "none"} for i, c in enumerate(ds.classes)]
    imgs: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for k, (rec, (h, w), boxes) in enumerate(_items(ds)):
        iid = int(coco_ids[k]) if coco_ids is not None else k + 1
        imgs.append({"id": iid, "file_name": names[rec.image_id], "width": w, "height": h})
        for b, lab, d in zip(boxes, rec.labels, rec.difficult):
            bw, bh = float(b[2] - b[0]), float(b[3] - b[1])
            ann = {"id": len(anns) + 1, "image_id": iid, "category_id": int(label_to_cat[int(lab)]),
                   "bbox": [float(_num(b[0])), float(_num(b[1])), float(_num(bw)), float(_num(bh))],
                   "area": float(_num(bw * bh)), "iscrowd": 0}
            if d:
                ann["difficult"] = 1
            anns.append(ann)
    path = os.path.join(out, "annotations", f"instances_{split}.json")
    write_bytes(path, json.dumps({"images": imgs, "annotations": anns, "categories": cats}).encode())
    return {"format": "coco", "annotations": path, "images_dir": os.path.join(out, split), "images": len(imgs)}


def write_csv(ds: DetectionDataset, out: str, split: str = "train", images: str = "copy") -> dict[str, Any]:
    """Write ``ds`` as ``out/<split>_labels.csv`` (header-named columns) with images in ``out/images``."""
    names = _place_images(ds, os.path.join(out, "images"), images)
    items = _items(ds)
    with_diff = any(bool(rec.difficult.any()) for rec, _, _ in items)
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(["filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax"]
                + (["difficult"] if with_diff else []))
    for rec, (h, w), boxes in items:
        fn = names[rec.image_id]
        if len(boxes) == 0:
            wr.writerow([fn, w, h, "", "", "", "", ""] + ([""] if with_diff else []))
        for b, lab, d in zip(boxes, rec.labels, rec.difficult):
            row = [fn, w, h, ds.classes[int(lab) - 1], *(_num(v) for v in b)]
            wr.writerow(row + ([int(bool(d))] if with_diff else []))
    path = os.path.join(out, f"{split}_labels.csv")
    write_bytes(path, buf.getvalue().encode())
    return {"format": "csv", "labels": path, "images_dir": os.path.join(out, "images"), "images": len(items)}


def write_yolo(ds: DetectionDataset, out: str, split: str = "train", images: str = "copy") -> dict[str, Any]:
    """Write ``ds`` in the Ultralytics layout under ``out`` and add ``split`` to ``out/data.yaml``."""
    import yaml

    names = _place_images(ds, os.path.join(out, "images", split), images)
    n_difficult = 0
    for rec, (h, w), boxes in _items(ds):
        lines = []
        for b, lab in zip(boxes, rec.labels):
            cx, cy = (b[0] + b[2]) / 2 / w, (b[1] + b[3]) / 2 / h
            bw, bh = (b[2] - b[0]) / w, (b[3] - b[1]) / h
            lines.append(" ".join([str(int(lab) - 1), _num(cx), _num(cy), _num(bw), _num(bh)]))
        n_difficult += int(rec.difficult.sum())
        stem = os.path.splitext(names[rec.image_id])[0]
        write_bytes(os.path.join(out, "labels", split, stem + ".txt"),
                    ("\n".join(lines) + ("\n" if lines else "")).encode())
    yml = os.path.join(out, "data.yaml")
    cfg: dict[str, Any] = {"path": ".", "names": {i: c for i, c in enumerate(ds.classes)}}
    if os.path.exists(yml):
        with open(yml, encoding="utf-8") as fh:
            old = yaml.safe_load(fh) or {}
        old_names = old.get("names")
        old_list = [old_names[k] for k in sorted(old_names)] if isinstance(old_names, dict) else old_names
        if old_list not in (None, list(ds.classes)):
            raise DataError(f"{yml} already has other class names {old_list}; write to another folder")
        cfg = {**old, **cfg}
    cfg[split] = f"images/{split}"
    write_bytes(yml, yaml.safe_dump(cfg, sort_keys=False).encode())
    return {"format": "yolo", "yaml": yml, "split": split, "images": len(ds), "difficult_not_represented": n_difficult}


WRITERS: dict[str, Callable[..., dict[str, Any]]] = {
    "voc": write_voc, "coco": write_coco, "csv": write_csv, "yolo": write_yolo,
}


def convert_dataset(ds: DetectionDataset, fmt: str, out: str, split: str = "train",
                    images: str = "copy") -> dict[str, Any]:
    """Write ``ds`` in ``fmt`` (``'voc'``, ``'coco'``, ``'csv'`` or ``'yolo'``) under the folder ``out``.

    Returns a summary with the paths to give to the matching dataset class / ``data:`` config.
    """
    if fmt not in WRITERS:
        raise ValueError(f"unknown format {fmt!r}; choose from {sorted(WRITERS)}")
    if is_url(out):
        raise DataError(f"{out}: converting writes to a local folder")
    return WRITERS[fmt](ds, out, split, images)
