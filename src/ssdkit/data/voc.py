"""Pascal VOC datasets (XML annotations, image-set files), as the Keras ``DataGenerator.parse_xml``.

Layout (folder names configurable)::

    root/JPEGImages/<id>.jpg         images (any extension; the XML <filename> wins when present)
    root/Annotations/<id>.xml        one XML per image
    root/ImageSets/Main/<set>.txt    one id per line (extra columns, as in the per-class files, ignored)

Semantics:
- Which images: ``image_set`` (a set name such as ``'train'``, a list of names, or a path to a
  ``.txt`` file), or ``ids``; with neither, every XML in the annotations folder (sorted).
- Classes: ``classes`` as names (a leading ``'background'``, the Keras convention, is stripped);
  ``None`` discovers them: the sorted names found in this split's annotations (the official VOC
  list happens to be alphabetical). Give ``classes`` so that every split uses the same labels
  (``build_dataset`` does this for you by scanning all configured splits).
- ``include_classes``: names (or Keras ids: index into ``classes`` with background at 0); the
  dataset's classes become that subset, in the original order, labelled ``1..k``. Objects of
  other classes are excluded (counted as ``excluded``, never silently).
- ``exclude_truncated`` / ``exclude_difficult`` drop those objects (counted as ``excluded``).
  Otherwise difficult objects are kept with ``difficult=True`` (evaluation-neutral).
- Coordinates are read as numbers and kept exactly as written (VOC's 1-based pixel indices are
  not shifted by 1, as in the Keras parser); missing ``<difficult>``/``<truncated>`` mean 0.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from .base import DetectionDataset, RawImage, strip_background
from .io import IMAGE_EXTENSIONS, is_url, join, list_files, read_many, read_text

__all__ = ["VOCDataset", "parse_voc_xml", "read_image_set"]

_NAN = float("nan")


def read_image_set(path: str) -> list[str]:
    """Ids from an image-set file: first token of each non-empty line."""
    try:
        text = read_text(path)
    except FileNotFoundError:
        raise DataError(f"{path}: image-set file not found; check data.*.image_set and the dataset root") from None
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def _num(text: str | None) -> float:
    if text is None:
        return _NAN
    try:
        return float(text.strip())
    except ValueError:
        return _NAN


def _flag(el: ET.Element, tag: str) -> bool:
    t = el.findtext(tag)
    if t is None or not t.strip():
        return False
    try:
        return float(t.strip()) != 0
    except ValueError:
        return t.strip().lower() in ("true", "yes")


def parse_voc_xml(data: bytes | str, source: str = "<xml>") -> dict[str, Any]:
    """Parse one VOC XML: ``{'filename', 'size': (H, W) | None, 'objects': [dict(name, box, difficult, truncated)]}``.

    ``box`` is ``(xmin, ymin, xmax, ymax)`` floats as written (NaN where missing or not a number).
    Raises :class:`~ssdkit.errors.DataError` naming ``source`` on malformed XML.
    """
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise DataError(f"{source}: malformed XML ({exc})") from None
    size = None
    sz = root.find("size")
    if sz is not None:
        w, h = _num(sz.findtext("width")), _num(sz.findtext("height"))
        if np.isfinite(w) and np.isfinite(h) and w > 0 and h > 0:
            size = (int(h), int(w))
    objects = []
    for obj in root.findall("object"):
        bb = obj.find("bndbox")
        box: tuple[float, ...] = (_NAN,) * 4
        if bb is not None:
            box = tuple(_num(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        objects.append({
            "name": (obj.findtext("name") or "").strip(),
            "box": box,
            "difficult": _flag(obj, "difficult"),
            "truncated": _flag(obj, "truncated"),
        })
    return {"filename": (root.findtext("filename") or "").strip(), "size": size, "objects": objects}


class VOCDataset(DetectionDataset):
    """Pascal VOC layout dataset. See the module docstring for the semantics.

    Args:
        root: dataset folder (local path or fsspec URL).
        image_set: set name(s) under ``ImageSets/Main`` or a path to an id file; ``None`` with
            ``ids=None`` means every annotation file.
        ids: explicit image ids (instead of ``image_set``).
        classes: class names (``'background'`` first is accepted and stripped) or ``None`` to discover.
        include_classes: subset of classes to keep (names or Keras ids).
        exclude_truncated, exclude_difficult: drop those objects (counted).
        images_dir, annotations_dir, image_sets_dir: folder names relative to ``root`` (or absolute).
        **kwargs: :class:`~ssdkit.data.base.DetectionDataset` options (transforms, policy,
            check_images, cache, cache_path, raise_errors, name).
    """

    format = "voc"

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_set: str | Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        classes: Sequence[str] | None = None,
        include_classes: Sequence[str | int] | None = None,
        exclude_truncated: bool = False,
        exclude_difficult: bool = False,
        images_dir: str = "JPEGImages",
        annotations_dir: str = "Annotations",
        image_sets_dir: str = "ImageSets/Main",
        **options: Any,
    ) -> None:
        root = os.fspath(root)
        label = image_set if isinstance(image_set, str) else ("+".join(image_set) if image_set else "all")
        options.setdefault("name", f"voc:{_short(root)}:{label}")
        super().__init__(**options)
        self.root = root
        self.images_dir = join(root, images_dir)
        self.annotations_dir = join(root, annotations_dir)
        self.image_set = image_set
        self.exclude_truncated = bool(exclude_truncated)
        self.exclude_difficult = bool(exclude_difficult)
        raw_ids = self._resolve_ids(image_set, ids, image_sets_dir)
        given = strip_background(classes)
        raws, excluded = self._parse(raw_ids)
        all_classes = given if given is not None else None
        if include_classes is not None:
            base = given if given is not None else sorted({n for r in raws for n in r.names})
            keep = _resolve_include(include_classes, base, classes)
            for r in raws:
                drop = [j for j, n in enumerate(r.names) if n in base and n not in keep]
                for j in drop:
                    excluded.append((r.source, r.ref(j), f"class {r.names[j]!r} not in include_classes"))
                _drop_objects(r, drop)
            all_classes = [c for c in base if c in keep]
        notes = [("excluded", source, where, why, "excluded") for source, where, why in excluded]
        self._finalize(raws, all_classes, notes)

    # ------------------------------------------------------------------ parsing
    def _resolve_ids(self, image_set: str | Sequence[str] | None, ids: Sequence[str] | None,
                     sets_dir: str) -> list[str]:
        if ids is not None and image_set is not None:
            raise ConfigError("give either image_set or ids, not both")
        if ids is not None:
            if isinstance(ids, str):
                raise ConfigError(f"ids must be a list of image ids, got the string {ids!r}")
            return [str(i) for i in ids]
        if image_set is None:
            found = list_files(self.annotations_dir)
            if not found:
                raise DataError(f"{self.annotations_dir}: no annotation files found; check the dataset root")
            return sorted(os.path.splitext(f)[0] for f in found if f.lower().endswith(".xml"))
        sets = [image_set] if isinstance(image_set, str) else list(image_set)
        out: list[str] = []
        for s in sets:
            if s.endswith(".txt") or "/" in s or os.sep in s:
                path = s if (is_url(s) or os.path.isabs(s)) else join(self.root, s)
            else:
                path = join(self.root, sets_dir, s + ".txt")
            out.extend(read_image_set(path))
        return out

    def _parse(self, ids: list[str]) -> tuple[list[RawImage], list[tuple[str, str, str]]]:
        images = list_files(self.images_dir)
        by_stem: dict[str, list[str]] = {}
        for f in images:
            stem, ext = os.path.splitext(f)
            if ext.lower() in IMAGE_EXTENSIONS:
                by_stem.setdefault(stem, []).append(f)
        raws: list[RawImage] = []
        excluded: list[tuple[str, str, str]] = []
        xml_paths = [join(self.annotations_dir, image_id + ".xml") for image_id in ids]
        for image_id, xml_path, data in zip(ids, xml_paths, read_many(xml_paths)):
            parsed: dict[str, Any]
            if isinstance(data, FileNotFoundError):
                parsed = {"error": ("missing_annotation", "annotation file not found")}
            elif isinstance(data, BaseException):
                parsed = {"error": ("bad_annotation", f"cannot read the file ({data})")}
            else:
                try:
                    parsed = parse_voc_xml(data, xml_path)
                except DataError as exc:
                    parsed = {"error": ("bad_annotation", str(exc).split(": ", 1)[-1])}
            if "error" in parsed:
                raws.append(self._error_raw(image_id, xml_path, by_stem, *parsed["error"]))
                continue
            fname = parsed["filename"]
            if fname and fname in images:
                img = fname
            elif image_id in by_stem:
                cands = sorted(by_stem[image_id], key=lambda f: (not f.lower().endswith((".jpg", ".jpeg")), f))
                img = cands[0]
            else:
                img = image_id + ".jpg"
            names, boxes, diff = [], [], []
            refs = []
            for j, o in enumerate(parsed["objects"]):
                if self.exclude_truncated and o["truncated"]:
                    excluded.append((xml_path, f"object {j}", "truncated object (exclude_truncated=True)"))
                    continue
                if self.exclude_difficult and o["difficult"]:
                    excluded.append((xml_path, f"object {j}", "difficult object (exclude_difficult=True)"))
                    continue
                names.append(o["name"])
                boxes.append(o["box"])
                diff.append(o["difficult"])
                refs.append(j)
            raws.append(RawImage(
                image_id=image_id, path=join(self.images_dir, img), source=xml_path, names=names,
                boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4), difficult=np.asarray(diff, dtype=bool),
                size=parsed["size"], refs=refs, ref_fmt="object {}",
            ))
        return raws, excluded

    def _error_raw(self, image_id: str, xml_path: str, by_stem: dict[str, list[str]], kind: str, msg: str) -> RawImage:
        r = RawImage(image_id=image_id, path=join(self.images_dir, (by_stem.get(image_id) or [image_id + ".jpg"])[0]),
                     source=xml_path, names=[], boxes=np.zeros((0, 4)), difficult=np.zeros(0, bool))
        r.extra["error"] = (kind, msg)
        return r


def _drop_objects(r: RawImage, drop: list[int]) -> None:
    if not drop:
        return
    keep = np.ones(len(r.names), dtype=bool)
    keep[drop] = False
    r.names = [n for n, k in zip(r.names, keep) if k]
    r.boxes = r.boxes[keep]
    r.difficult = r.difficult[keep]
    if r.refs is not None:
        r.refs = [x for x, k in zip(r.refs, keep) if k]


def _resolve_include(include: Sequence[str | int], base: list[str], given_raw: Sequence[str] | None) -> set[str]:
    if isinstance(include, str):
        if include == "all":
            return set(base)
        include = [include]
    with_bg = list(given_raw) if given_raw is not None else ["background", *base]
    has_bg = bool(with_bg) and str(with_bg[0]).strip().lower() in ("background", "__background__", "bg")
    out: set[str] = set()
    for c in include:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            idx = int(c)
            names = with_bg if has_bg else ["background", *with_bg]
            if not 1 <= idx < len(names):
                raise ConfigError(f"include_classes: class id {idx} is out of range 1..{len(names) - 1}")
            out.add(str(names[idx]))
        elif str(c) in base:
            out.add(str(c))
        else:
            raise ConfigError(f"include_classes: {c!r} is not one of the classes {base}")
    return out


def _short(root: str) -> str:
    return os.path.basename(root.rstrip("/")) or root
