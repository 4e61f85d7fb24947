"""YOLO (Ultralytics) datasets: a data YAML plus one ``.txt`` label file per image.

Data YAML (Ultralytics format)::

    path: ../datasets/coco8      # dataset root; relative paths resolve against the YAML's folder
    train: images/train          # a folder of images, a .txt list of image paths, or a list of these
    val: images/val
    test:                        # optional
    names: {0: person, 1: bicycle}   # or a list

Labels: for ``.../images/.../x.jpg`` the file ``.../labels/.../x.txt`` (the last ``/images/`` in the
path replaced by ``/labels/``), one object per line ``class cx cy w h`` normalised to ``[0, 1]``;
class ids are 0-based and become labels ``id + 1``. A line with more than 5 numbers is a polygon
``class x1 y1 x2 y2 ...`` (Ultralytics segments) and gives its bounding box. A missing label file is
an image without boxes (Ultralytics' background images), counted as ``no_label_file``.

Boxes are converted to pixels with the image size (read by the default ``check_images='header'``,
or at load time otherwise). Image ids are the image paths relative to the split folder, without
extension.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from .base import DetectionDataset, RawImage, strip_background
from .io import IMAGE_EXTENSIONS, exists, is_url, isdir, join, list_files, read_many, read_text

__all__ = ["YOLODataset", "load_data_yaml", "label_path_for"]


def load_data_yaml(path: str) -> dict[str, Any]:
    """Read an Ultralytics data YAML; ``names`` becomes a list (index = class id) and ``path`` absolute."""
    import yaml

    try:
        cfg = yaml.safe_load(read_text(path))
    except FileNotFoundError:
        raise DataError(f"{path}: YOLO data YAML not found") from None
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: invalid YAML ({exc})") from None
    if not isinstance(cfg, dict):
        raise DataError(f"{path}: a YOLO data YAML must be a mapping with 'names' and 'train'/'val'")
    names = cfg.get("names")
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DataError(f"{path}: 'names' keys must be integer class ids, got {list(names)}") from None
        if ids != list(range(len(ids))):
            raise DataError(f"{path}: 'names' ids must be 0..{len(ids) - 1} without gaps, got {ids}")
        names = [str(names[k] if k in names else names[str(k)]) for k in ids]
    elif isinstance(names, list):
        names = [str(n) for n in names]
    else:
        raise DataError(f"{path}: 'names' (the class names) is missing or not a list/mapping")
    cfg["names"] = names
    here = path.rsplit("/", 1)[0] if is_url(path) else os.path.dirname(os.path.abspath(path))
    root = cfg.get("path")
    if root in (None, ""):
        root = here
    else:
        root = str(root)
        if not (is_url(root) or os.path.isabs(root)):
            cand = join(here, root)
            root = cand if exists(cand) or not os.path.exists(root) else os.path.abspath(root)
    cfg["path"] = root
    return cfg


def label_path_for(image_path: str) -> str:
    """Ultralytics' rule: the last ``/images/`` becomes ``/labels/`` and the extension ``.txt``."""
    sa, sb = "/images/", "/labels/"
    p = image_path.replace(os.sep, "/") if not is_url(image_path) else image_path
    if sa in p:
        head, tail = p.rsplit(sa, 1)
        p = head + sb + tail
    return os.path.splitext(p)[0] + ".txt"


class YOLODataset(DetectionDataset):
    """An Ultralytics-style dataset split (see the module docstring).

    Args:
        data_yaml: the data YAML (local path or URL).
        split: ``'train'``, ``'val'`` or ``'test'`` (the YAML key).
        classes: override/check the names (must equal the YAML's ``names`` when given).
        **options: :class:`~ssdkit.data.base.DetectionDataset` options.
    """

    format = "yolo"

    def __init__(self, data_yaml: str | os.PathLike[str], split: str = "train",
                 classes: Sequence[str] | None = None, **options: Any) -> None:
        data_yaml = os.fspath(data_yaml)
        options.setdefault("name", f"yolo:{os.path.basename(data_yaml)}:{split}")
        super().__init__(**options)
        cfg = load_data_yaml(data_yaml)
        self.data_yaml = data_yaml
        self.root = cfg["path"]
        names = cfg["names"]
        given = strip_background(classes)
        if given is not None and given != names:
            raise ConfigError(f"data.classes {given} differ from the names in {data_yaml} ({names})")
        spec = cfg.get(split)
        if spec in (None, "", []):
            raise DataError(f"{data_yaml}: no {split!r} entry "
                            f"(the YAML has {sorted(k for k in cfg if k in ('train', 'val', 'test'))})")
        images = self._image_list(spec if isinstance(spec, list) else [spec])
        raws: list[RawImage] = []
        notes: list[tuple[str, str, str | None, str, str]] = []
        texts = read_many([label_path_for(path) for _, path in images])
        for (base, path), data in zip(images, texts):
            raws.append(self._parse_labels(base, path, data, names, notes))
        self._finalize(raws, names, notes)

    def _image_list(self, specs: list[Any]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for s in specs:
            p = join(self.root, str(s))
            if isdir(p):
                found = list_files(p, recursive=True)
                files = sorted(f for f in found if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
                if not files:
                    raise DataError(f"{p}: no images found")
                out.extend((p, join(p, f)) for f in files)
            elif str(s).endswith(".txt"):
                try:
                    lines = read_text(p).splitlines()
                except FileNotFoundError:
                    raise DataError(f"{p}: image list not found") from None
                parent = p.rsplit("/", 1)[0] if is_url(p) else os.path.dirname(p)
                for line in lines:
                    line = line.strip()
                    if line:
                        out.append((self.root, join(parent, line) if line.startswith("./") else join(self.root, line)))
            else:
                raise DataError(f"{p}: not a folder of images or a .txt image list")
        return out

    def _parse_labels(self, base: str, path: str, data: bytes | BaseException, names: list[str],
                      notes: list[tuple[str, str, str | None, str, str]]) -> RawImage:
        rel = path[len(base):].lstrip("/") if path.startswith(base) else os.path.basename(path)
        image_id = os.path.splitext(rel)[0]
        lp = label_path_for(path)
        cls: list[str] = []
        boxes: list[list[float]] = []
        refs: list[int] = []
        if isinstance(data, FileNotFoundError):
            notes.append(("no_label_file", lp, None, f"no label file for {path}: a background image", "kept"))
            text = ""
        elif isinstance(data, BaseException):
            raise DataError(f"{lp}: cannot read the label file ({data})")
        else:
            text = data.decode("utf-8", errors="replace")
        for n, line in enumerate(text.splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                vals = [float(v) for v in parts]
            except ValueError:
                vals = []
            if len(vals) == 5:
                c, cx, cy, w, h = vals
                box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
            elif len(vals) >= 7 and len(vals) % 2 == 1:
                c = vals[0]
                xs, ys = vals[1::2], vals[2::2]
                box = [min(xs), min(ys), max(xs), max(ys)]
            else:
                c = vals[0] if vals and float(vals[0]).is_integer() else -1
                box = [np.nan] * 4
            ci = int(c) if float(c).is_integer() else -1
            cls.append(names[ci] if 0 <= ci < len(names) else f"<class id {parts[0]}>")
            boxes.append(box)
            refs.append(n)
        return RawImage(
            image_id=image_id, path=path, source=lp, names=cls,
            boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4), difficult=np.zeros(len(cls), dtype=bool),
            size=None, normalized=True, refs=refs, ref_fmt="line {}",
        )
