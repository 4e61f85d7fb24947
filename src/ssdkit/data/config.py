"""The ``data:`` config section: validation (``ConfigError`` naming the key path) and ``build_dataset``.

Schema (``docs/data.md`` has examples per format)::

    data:
      format: voc | csv | coco | yolo          # required
      root: path or URL                         # base of the relative paths below (relative to the CWD)
      classes: [names] | path/to/names.txt | null   # null: discovered over all configured splits
      train: <split spec>                       # at least one of train / val / test
      val: <split spec>
      test: <split spec>
      policy: {degenerate, out_of_image, keep_images_without_gt, unknown_class, bad_image,
               min_image_side, max_image_pixels, crowd}     # see ssdkit.data.base.Policy
      check_images: header                      # none | exists | header | decode
      cache: none                               # none | memory | hdf5
      cache_dir: null                           # folder of the HDF5 caches (default ~/.cache/ssdkit/data)
      yaml: data.yaml                           # yolo only: the Ultralytics data YAML (default root/data.yaml)

A split spec is a mapping, a shorthand string, or a list of specs (concatenated, e.g. VOC07+12):

- voc: ``{image_set: train | [train, val] | path.txt, ids: [...], include_classes: [...],
  exclude_truncated: false, exclude_difficult: false, images_dir: JPEGImages, annotations_dir: Annotations,
  image_sets_dir: ImageSets/Main, root: ...}``; shorthand: the image set.
- csv: ``{labels: path.csv, images_dir: ., input_format: [...], root: ...}``; shorthand: the CSV path.
- coco: ``{annotations: path.json, images_dir: ., root: ...}``; shorthand: the JSON path.
- yolo: ``{split: train | val | test, yaml: ..., root: ...}``; shorthand: the split name (default: the key).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigError
from .base import CHECK_LEVELS, ConcatDetectionDataset, DetectionDataset, Policy, strip_background
from .io import is_url, join, read_text

__all__ = ["build_dataset", "validate_data_config", "FORMATS", "SPLITS"]

FORMATS = ("voc", "csv", "coco", "yolo")
SPLITS = ("train", "val", "test")
DATA_KEYS = ("format", "root", "classes", "train", "val", "test", "policy", "check_images", "cache", "cache_dir",
             "yaml")
SPLIT_KEYS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "voc": {"image_set": (str, list), "ids": list, "include_classes": list, "exclude_truncated": bool,
            "exclude_difficult": bool, "images_dir": str, "annotations_dir": str, "image_sets_dir": str, "root": str},
    "csv": {"labels": str, "images_dir": str, "input_format": list, "root": str},
    "coco": {"annotations": str, "images_dir": str, "root": str},
    "yolo": {"split": str, "yaml": str, "root": str},
}
SHORTHAND = {"voc": "image_set", "csv": "labels", "coco": "annotations", "yolo": "split"}
REQUIRED = {"voc": (), "csv": ("labels",), "coco": ("annotations",), "yolo": ()}


def _unknown(path: str, key: str, known: Any) -> ConfigError:
    close = difflib.get_close_matches(str(key), list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {sorted(known)}"
    return ConfigError(f"{path}.{key}: unknown key{hint}")


def _type_name(t: type | tuple[type, ...]) -> str:
    ts = t if isinstance(t, tuple) else (t,)
    names = {str: "a string", list: "a list", bool: "true/false", int: "an integer", dict: "a mapping"}
    return " or ".join(names.get(x, x.__name__) for x in ts)


def _check_split(fmt: str, spec: Any, path: str) -> list[dict[str, Any]]:
    """Normalise a split spec to a list of mappings, raising ``ConfigError`` at ``path``."""
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{path}: an empty list; give a split spec or leave the key out")
        if fmt == "voc" and all(isinstance(s, str) for s in spec):
            return [{"image_set": list(spec)}]
        return [d for i, s in enumerate(spec) for d in _check_split(fmt, s, f"{path}[{i}]")]
    if isinstance(spec, str):
        return [{SHORTHAND[fmt]: spec}]
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{path}: must be a mapping, a string or a list, got {type(spec).__name__}")
    allowed = SPLIT_KEYS[fmt]
    out = dict(spec)
    for k, v in out.items():
        if k not in allowed:
            raise _unknown(path, k, allowed)
        t = allowed[k]
        if v is not None and not (isinstance(v, t) and not (isinstance(v, bool) and t is not bool)):
            raise ConfigError(f"{path}.{k}: must be {_type_name(t)}, got {v!r}")
        if k == "image_set" and isinstance(v, list) and not all(isinstance(x, str) for x in v):
            raise ConfigError(f"{path}.image_set: a list must hold set names (strings), got {v!r}")
    for k in REQUIRED[fmt]:
        if out.get(k) in (None, ""):
            raise ConfigError(f"{path}.{k}: required for format {fmt!r}")
    if fmt == "voc" and out.get("ids") is not None and out.get("image_set") is not None:
        raise ConfigError(f"{path}: give image_set or ids, not both")
    return [out]


def validate_data_config(data_cfg: Mapping[str, Any], section: str = "data") -> dict[str, Any]:
    """Check a ``data:`` section; returns it normalised (split specs as lists of mappings, a Policy).

    Raises :class:`~ssdkit.errors.ConfigError` naming the key path for unknown keys, wrong types and
    impossible values.
    """
    if not isinstance(data_cfg, Mapping):
        raise ConfigError(f"{section}: must be a mapping, got {type(data_cfg).__name__}")
    for k in data_cfg:
        if k not in DATA_KEYS:
            raise _unknown(section, k, DATA_KEYS)
    cfg = dict(data_cfg)
    fmt = cfg.get("format")
    if fmt not in FORMATS:
        raise ConfigError(f"{section}.format: must be one of {list(FORMATS)}, got {fmt!r}")
    root = cfg.get("root")
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise ConfigError(f"{section}.root: must be a path or URL string, got {root!r}")
    classes = cfg.get("classes")
    if classes is not None:
        if isinstance(classes, str):
            cfg["classes"] = _read_classes(classes, root, f"{section}.classes")
        elif not (isinstance(classes, list) and classes and all(isinstance(c, (str, int)) for c in classes)):
            raise ConfigError(f"{section}.classes: must be a non-empty list of names, a names file, or null")
        else:
            cfg["classes"] = [str(c) for c in classes]
        try:
            cfg["classes"] = strip_background(cfg["classes"])
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("data.classes", f"{section}.classes", 1)) from None
    splits = {s: _check_split(fmt, cfg[s], f"{section}.{s}") for s in SPLITS if cfg.get(s) is not None}
    if not splits:
        raise ConfigError(f"{section}: configure at least one of {list(SPLITS)}")
    if fmt == "voc" and root is None and any(not d.get("root") for specs in splits.values() for d in specs):
        raise ConfigError(f"{section}.root: required for format 'voc' (or give root in every split)")
    cfg.update(splits)
    try:
        cfg["policy"] = Policy.from_any(cfg.get("policy"))
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("data.policy", f"{section}.policy", 1)) from None
    if cfg.get("check_images", "header") not in CHECK_LEVELS:
        raise ConfigError(f"{section}.check_images: must be one of {list(CHECK_LEVELS)}, got {cfg['check_images']!r}")
    if cfg.get("cache", "none") not in (None, "none", "memory", "hdf5"):
        raise ConfigError(f"{section}.cache: must be one of ['none', 'memory', 'hdf5'], got {cfg['cache']!r}")
    if cfg.get("cache_dir") is not None and not isinstance(cfg["cache_dir"], str):
        raise ConfigError(f"{section}.cache_dir: must be a folder path, got {cfg['cache_dir']!r}")
    if cfg.get("yaml") is not None and fmt != "yolo":
        raise ConfigError(f"{section}.yaml: only used with format 'yolo'")
    return cfg


def _read_classes(path: str, root: Any, key: str) -> list[str]:
    p = path if (is_url(path) or os.path.isabs(path) or root is None or os.path.exists(path)) else join(str(root), path)
    try:
        names = [line.strip() for line in read_text(p).splitlines() if line.strip()]
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path!r} is neither a list of names nor an existing names file") from None
    if not names:
        raise ConfigError(f"{key}: the names file {p} is empty")
    return names


def _resolve(base: str | None, p: str | None) -> str | None:
    if p is None:
        return None
    p = os.path.expanduser(p)
    return p if base is None else join(base, p)


def _build_one(cfg: dict[str, Any], spec: dict[str, Any], split: str, classes: list[str] | None,
               transforms: Callable[..., Any] | None, options: dict[str, Any]) -> DetectionDataset:
    fmt = cfg["format"]
    base_root = cfg.get("root")
    base_root = os.path.expanduser(str(base_root)) if base_root is not None else None
    root = _resolve(base_root, spec.get("root")) if spec.get("root") else base_root
    common = dict(options, transforms=transforms)
    if fmt == "voc":
        from .voc import VOCDataset

        if root is None:
            raise ConfigError("data.root: required for format 'voc'")
        kw = {k: spec[k] for k in ("image_set", "ids", "include_classes", "exclude_truncated", "exclude_difficult",
                                     "images_dir", "annotations_dir", "image_sets_dir") if spec.get(k) is not None}
        return VOCDataset(root, classes=classes, **kw, **common)
    if fmt == "csv":
        from .csv_dataset import CSVDataset

        return CSVDataset(_resolve(root, spec.get("images_dir") or ".") or ".", _resolve(root, spec["labels"]) or "",
                          input_format=spec.get("input_format"), classes=classes, **common)
    if fmt == "coco":
        from .coco import COCODataset

        return COCODataset(_resolve(root, spec.get("images_dir") or ".") or ".",
                           _resolve(root, spec["annotations"]) or "", classes=classes, **common)
    from .yolo import YOLODataset

    y = spec.get("yaml") or cfg.get("yaml")
    if y is None:
        if root is None:
            raise ConfigError("data.root or data.yaml: required for format 'yolo'")
        y = root if str(root).endswith((".yaml", ".yml")) else join(root, "data.yaml")
    else:
        y = _resolve(root if not str(root or "").endswith((".yaml", ".yml")) else None, y)
    return YOLODataset(str(y), spec.get("split") or split, classes=classes, **common)


def _scan_classes(cfg: dict[str, Any]) -> list[str] | None:
    """Classes over every configured split (so train and val agree), or ``None`` to let the format decide."""
    if cfg["format"] == "yolo":
        return None
    from .validation import discover_classes

    found: list[str] = []
    for split in SPLITS:
        for spec in cfg.get(split) or []:
            ds = _build_one(cfg, spec, split, None, None,
                            {"check_images": "none", "raise_errors": False, "verbose": False,
                             "policy": {**_policy_dict(cfg["policy"]), "unknown_class": "skip"}})
            found.extend(c for c in ds.classes if c not in found)
    if cfg["format"] == "coco":
        return found  # category-id order of the first file, then new names
    return discover_classes(found)


def _policy_dict(p: Policy) -> dict[str, Any]:
    return {k: getattr(p, k) for k in p.__dataclass_fields__}


def build_dataset(data_cfg: Mapping[str, Any], split: str, transforms: Callable[..., Any] | None = None,
                  **options: Any) -> DetectionDataset:
    """Build the dataset of ``split`` (``'train'``, ``'val'`` or ``'test'``) from a ``data:`` section.

    ``options`` override dataset options (``check_images``, ``raise_errors``, ``cache``, ``name``...).
    With ``classes: null`` the classes are discovered over all configured splits, so labels agree.
    """
    cfg = validate_data_config(data_cfg)
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if cfg.get(split) is None:
        configured = [s for s in SPLITS if cfg.get(s) is not None]
        raise ConfigError(f"data.{split}: this split is not configured (configured: {configured})")
    classes = cfg.get("classes")
    if classes is None:
        classes = _scan_classes(cfg)
    opts: dict[str, Any] = {
        "policy": cfg["policy"],
        "check_images": cfg.get("check_images") or "header",
        "cache": cfg.get("cache") or "none",
    }
    opts.update(options)
    if cfg.get("cache_dir"):
        opts.setdefault("cache_dir", cfg["cache_dir"])
    specs = cfg[split]
    parts = [_build_one(cfg, spec, split, classes, transforms if len(specs) == 1 else None, dict(opts))
             for spec in specs]
    if len(parts) == 1:
        return parts[0]
    return ConcatDetectionDataset(parts, transforms=transforms)


def _guess_images_dir(anchor: str, first_file: str | None, hint: str | None) -> str:
    """Folder holding the images of a CSV/COCO file: ``hint``, or the first candidate containing ``first_file``."""
    if hint:
        return hint
    here = os.path.dirname(os.path.abspath(anchor))
    cands = [here, os.path.join(here, "images"), os.path.dirname(here), os.path.join(os.path.dirname(here), "images")]
    stem = os.path.splitext(os.path.basename(anchor))[0]
    cands.append(os.path.join(os.path.dirname(here), stem.replace("instances_", "")))
    for c in cands:
        if first_file and os.path.exists(os.path.join(c, first_file)):
            return c
    raise ConfigError(f"{anchor}: cannot find the images folder; pass it with --images")


def open_datasets(source: str, split: str | None = None, images_dir: str | None = None,
                  **options: Any) -> dict[str, DetectionDataset]:
    """Datasets found at ``source``: an ssdkit config (its ``data:`` section), a YOLO data YAML, a COCO
    JSON, a label CSV, or a folder (VOC layout with ``Annotations/``, ``annotations/`` + ``images/``, or a
    folder with ``data.yaml``). Returns ``{split name: dataset}`` (only ``split`` when given).
    """
    import yaml

    src = os.path.expanduser(source)
    lower = src.lower()
    out: dict[str, DetectionDataset] = {}
    if lower.endswith((".yaml", ".yml")):
        doc = yaml.safe_load(read_text(src)) or {}
        if isinstance(doc, Mapping) and "data" in doc:
            cfg = validate_data_config(doc["data"])
            for s in SPLITS:
                if cfg.get(s) is not None and split in (None, s):
                    out[s] = build_dataset(doc["data"], s, **options)
        elif isinstance(doc, Mapping) and "names" in doc:
            from .yolo import YOLODataset

            for s in SPLITS:
                if doc.get(s) and split in (None, s):
                    out[s] = YOLODataset(src, s, **options)
        else:
            raise ConfigError(f"{source}: neither an ssdkit config (no 'data:' section) "
                              "nor a YOLO data YAML (no 'names')")
    elif lower.endswith(".json"):
        from .coco import COCODataset, load_coco_json

        data = load_coco_json(src)
        first = data["images"][0]["file_name"] if data["images"] else None
        out[split or "all"] = COCODataset(_guess_images_dir(src, first, images_dir), src, **options)
    elif lower.endswith((".csv", ".tsv", ".txt")):
        from .csv_dataset import CSVDataset, parse_csv

        cols, rows = parse_csv(read_text(src), src, options.pop("input_format", None))
        first = rows[0][1][cols["image_name"]] if rows else None
        out[split or "all"] = CSVDataset(_guess_images_dir(src, first, images_dir), src, **options)
    elif os.path.isdir(src) or is_url(src):
        from .io import exists, list_files
        from .voc import VOCDataset

        if exists(join(src, "data.yaml")):
            return open_datasets(join(src, "data.yaml"), split, **options)
        ann = ("Annotations" if exists(join(src, "Annotations"))
               else "annotations" if exists(join(src, "annotations")) else None)
        if ann is None:
            raise ConfigError(f"{source}: no Annotations/ (VOC) or data.yaml (YOLO) folder found; "
                              "give a config, JSON or CSV")
        img_dir = images_dir or ("JPEGImages" if exists(join(src, "JPEGImages")) else "images")
        sets = sorted(os.path.splitext(f)[0] for f in list_files(join(src, "ImageSets", "Main"))
                      if f.endswith(".txt") and "_" not in f)
        if split is not None:
            sets = [split]
        if not sets:
            out["all"] = VOCDataset(src, None, images_dir=img_dir, annotations_dir=ann, **options)
        for s in sets:
            out[s] = VOCDataset(src, s, images_dir=img_dir, annotations_dir=ann, **options)
    else:
        raise ConfigError(f"{source}: not found, or not a config/JSON/CSV file or dataset folder")
    if not out:
        raise ConfigError(f"{source}: no split {split!r} found")
    return out
