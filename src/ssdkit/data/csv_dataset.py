"""CSV label files: one row per box, as the Keras ``DataGenerator.parse_csv``.

Two ways to say which column is which:

- ``input_format``: the column order, Keras style, e.g.
  ``['image_name', 'xmin', 'xmax', 'ymin', 'ymax', 'class_id']`` (the Keras default order; any
  order of these six names works, plus optional ``'width'``, ``'height'``, ``'difficult'`` and
  ``None``/``'ignore'`` for columns to skip). A first row whose coordinate fields are not numbers is
  a header and is skipped (the Keras parser always skipped the first row, losing a box when the
  file had no header; ssdkit checks). When that header names the columns differently from
  ``input_format`` (the classic "wrong column order" mistake) a ``DataError`` says so.
- no ``input_format``: the header names the columns (case-insensitive, aliases accepted), e.g. the
  raccoon / TensorFlow object-detection CSV ``filename,width,height,class,xmin,ymin,xmax,ymax`` or the
  Udacity ``frame,xmin,xmax,ymin,ymax,class_id``. A missing column is a ``DataError`` naming the file,
  the column, and the header found.

Classes may be names or integer ids (``1..n``; 0 is background). With ``classes`` given, a name is
looked up and an id ``k`` means ``classes[k - 1]``; without, names are discovered (sorted), ids
give ``['1', ..., str(max id)]`` so that id ``k`` is label ``k``. Messages name the CSV line
(1-based, the header being line 1). A row with a file name and empty box fields is an image
without boxes (that is how the converter writes negatives). Image ids are the file names without
extension; images keep the order of their first row.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from .base import DetectionDataset, RawImage, strip_background
from .io import join, read_text

__all__ = ["CSVDataset", "KERAS_INPUT_FORMAT", "parse_csv"]

KERAS_INPUT_FORMAT = ["image_name", "xmin", "xmax", "ymin", "ymax", "class_id"]

# canonical field -> accepted header names (lower case)
ALIASES: dict[str, tuple[str, ...]] = {
    "image_name": ("image_name", "filename", "file_name", "file", "image", "image_path", "path", "img", "frame",
                   "image_id", "imagename", "img_name", "name"),
    "class_id": ("class_id", "class", "label", "class_name", "category", "category_id", "label_id", "classname",
                 "object", "cls"),
    "xmin": ("xmin", "x_min", "x1", "left", "x0"),
    "ymin": ("ymin", "y_min", "y1", "top", "y0"),
    "xmax": ("xmax", "x_max", "x2", "right"),
    "ymax": ("ymax", "y_max", "y2", "bottom"),
    "width": ("width", "image_width", "img_width"),
    "height": ("height", "image_height", "img_height"),
    "difficult": ("difficult", "is_difficult"),
}
REQUIRED = ("image_name", "xmin", "ymin", "xmax", "ymax", "class_id")
_SKIP = (None, "ignore", "_", "")


def _canonical(name: str) -> str | None:
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    for field_, names in ALIASES.items():
        if key in names:
            return field_
    return None


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _columns_from_format(fmt: Sequence[str | None], source: str) -> dict[str, int]:
    cols: dict[str, int] = {}
    for i, f in enumerate(fmt):
        if f in _SKIP:
            continue
        canon = _canonical(str(f))
        if canon is None:
            raise ConfigError(
                f"input_format[{i}]: unknown column {f!r}; use the names {KERAS_INPUT_FORMAT} "
                "(plus optional 'width', 'height', 'difficult', or None to skip a column)"
            )
        if canon in cols:
            raise ConfigError(f"input_format: column {canon!r} given twice ({fmt})")
        cols[canon] = i
    missing = [f for f in REQUIRED if f not in cols]
    if missing:
        raise ConfigError(f"input_format {list(fmt)} for {source} lacks the column(s) {missing}")
    return cols


def parse_csv(
    text: str, source: str, input_format: Sequence[str | None] | None = None
) -> tuple[dict[str, int], list[tuple[int, list[str]]]]:
    """Column map and data rows ``[(line number, fields)]`` of a label CSV (see the module docstring)."""
    lines = text.splitlines()
    if not lines or not any(line.strip() for line in lines):
        raise DataError(f"{source}: the CSV file is empty")
    sample = "\n".join(lines[:5])
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = [(i + 1, [f.strip() for f in row]) for i, row in enumerate(csv.reader(io.StringIO(text), dialect))]
    rows = [(n, r) for n, r in rows if any(r)]
    first_n, first = rows[0]
    if input_format is not None:
        cols = _columns_from_format(input_format, source)
        coord_idx = [cols[k] for k in ("xmin", "ymin", "xmax", "ymax")]
        is_header = any(i >= len(first) or not _is_number(first[i]) for i in coord_idx)
        if is_header:
            named = {i: _canonical(h) for i, h in enumerate(first)}
            for f, i in cols.items():
                h = named.get(i)
                if h is not None and h != f and f in REQUIRED and all(v is not None for v in named.values()):
                    raise DataError(
                        f"{source}: input_format puts {f!r} in column {i + 1}, but the header (line {first_n}) "
                        f"calls that column {first[i]!r}: the column order is probably wrong. Header: "
                        f"{','.join(first)}; input_format: {list(input_format)}. Fix input_format, or remove it "
                        "to use the header names"
                    )
            rows = rows[1:]
        return cols, rows
    cols = {}
    for i, h in enumerate(first):
        canon = _canonical(h)
        if canon is not None and canon not in cols:
            cols[canon] = i
    missing = [f for f in REQUIRED if f not in cols]
    if missing:
        if all(_is_number(f) or not f for f in first[1:]):
            raise DataError(
                f"{source}: line {first_n} is not a header ({','.join(first)}) and no input_format was given; "
                f"pass input_format (e.g. {KERAS_INPUT_FORMAT}) or add a header row"
            )
        need = ", ".join(f"{m} (one of {list(ALIASES[m][:4])})" for m in missing)
        raise DataError(
            f"{source}: missing column(s) {need}; the header (line {first_n}) is {','.join(first)}. "
            "Rename the columns or pass input_format with the column order"
        )
    return cols, rows[1:]


class CSVDataset(DetectionDataset):
    """Images in ``images_dir`` labelled by one CSV file (see the module docstring).

    Args:
        images_dir: folder of the images (local path or URL); file names in the CSV are relative to it.
        labels_csv: the CSV file (local path or URL).
        input_format: column order (Keras style) or ``None`` to read the header.
        classes: class names (``'background'`` first is stripped) or ``None`` to discover.
        **options: :class:`~ssdkit.data.base.DetectionDataset` options.
    """

    format = "csv"

    def __init__(
        self,
        images_dir: str | os.PathLike[str],
        labels_csv: str | os.PathLike[str],
        input_format: Sequence[str | None] | None = None,
        classes: Sequence[str] | None = None,
        **options: Any,
    ) -> None:
        labels_csv = os.fspath(labels_csv)
        options.setdefault("name", f"csv:{os.path.basename(labels_csv)}")
        super().__init__(**options)
        self.images_dir = os.fspath(images_dir)
        self.labels_csv = labels_csv
        try:
            text = read_text(labels_csv)
        except FileNotFoundError:
            raise DataError(f"{labels_csv}: label CSV not found") from None
        cols, rows = parse_csv(text, labels_csv, input_format)
        given = strip_background(classes)
        raws = self._group(rows, cols, given)
        self._finalize(raws, given)

    def _group(self, rows: list[tuple[int, list[str]]], cols: dict[str, int],
               classes: list[str] | None) -> list[RawImage]:
        src = self.labels_csv
        ncol = max(cols.values()) + 1
        by_image: dict[str, dict[str, Any]] = {}
        for line, r in rows:
            if len(r) < ncol:
                r = r + [""] * (ncol - len(r))
            fname = r[cols["image_name"]]
            if not fname:
                raise DataError(f"{src}, line {line}: empty image file name")
            img = by_image.get(fname)
            if img is None:
                img = by_image[fname] = {"names": [], "boxes": [], "diff": [], "lines": [], "size": None}
            if "width" in cols and "height" in cols and img["size"] is None:
                w, h = r[cols["width"]], r[cols["height"]]
                if _is_number(w) and _is_number(h) and float(w) > 0 and float(h) > 0:
                    img["size"] = (int(float(h)), int(float(w)))
            cls = r[cols["class_id"]]
            coords = [r[cols[k]] for k in ("xmin", "ymin", "xmax", "ymax")]
            if not cls and not any(coords):
                continue  # an image without boxes
            img["names"].append(self._class_name(cls, classes))
            img["boxes"].append([float(c) if _is_number(c) else np.nan for c in coords])
            d = r[cols["difficult"]] if "difficult" in cols else ""
            img["diff"].append(d.lower() in ("1", "true", "yes", "1.0"))
            img["lines"].append(line)
        return [
            RawImage(
                image_id=os.path.splitext(f)[0], path=join(self.images_dir, f), source=src, names=v["names"],
                boxes=np.asarray(v["boxes"], dtype=np.float64).reshape(-1, 4),
                difficult=np.asarray(v["diff"], dtype=bool), size=v["size"], refs=v["lines"], ref_fmt="line {}",
            )
            for f, v in by_image.items()
        ]

    @staticmethod
    def _class_name(value: str, classes: list[str] | None) -> str:
        """Class name for a CSV value: a name as is, an integer id ``k`` -> ``classes[k - 1]``."""
        v = value.strip()
        if classes is not None and v in classes:
            return v
        if v.lstrip("-").isdigit() or (_is_number(v) and float(v).is_integer()):
            k = int(float(v))
            if k < 1:
                return f"<class id {k}: ids start at 1, 0 is background>"
            if classes is not None:
                return classes[k - 1] if 1 <= k <= len(classes) else f"<class id {k}>"
            return str(k)
        return v
