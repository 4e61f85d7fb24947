"""Validation shared by every dataset format (the policy is :class:`ssdkit.data.base.Policy`).

Policy (defaults in brackets); nothing is lost silently: every removal, clip, skip and exclusion
is a :class:`~ssdkit.data.base.Problem` in ``dataset.report`` and the build logs a one-line summary.

=====================  ==========================================================================
problem                what happens
=====================  ==========================================================================
duplicate image id     the later entry is dropped (counted)
missing image          ``bad_image`` [error]: error at build / ``data check``; ``skip`` drops the image
corrupt image          (non-image file, truncated JPEG/PNG, undecodable) same as a missing image
image too small/large  side < ``min_image_side`` [8] or pixels > ``max_image_pixels``: same
annotation unreadable  (malformed XML, missing XML for an id) same as a missing image
unknown class          ``unknown_class`` [error] naming file and object; ``skip`` drops the object
non-numeric box        dropped (counted as ``invalid_box``; an error when ``degenerate='error'``)
degenerate box         ``degenerate`` [remove]; ``error``; ``warn`` keeps it (Keras behaviour)
box partly outside     ``out_of_image`` [clip] to the image; ``drop``; ``error``
box entirely outside   dropped (counted); an error when ``out_of_image='error'``
image without boxes    ``keep_images_without_gt`` [true] keeps it (counted as info); false drops it
same box twice         kept, reported (info)
size mismatch          annotated size differs from the file: reported; boxes are checked against
                       the real image
=====================  ==========================================================================

Image checks (``check_images``): ``'none'``; ``'exists'`` (one listing per folder); ``'header'``
[default] reads each file, checks the signature and JPEG/PNG completeness, reads size, mode and EXIF
orientation; ``'decode'`` decodes every image (``ssdkit data check``). At ``'none'``/``'exists'``
the image size may be unknown at build time; boxes are then clipped to the image when it is loaded
(not counted) - run ``ssdkit data check`` to see those.

Box coordinates are kept as given (VOC's 1-based pixel indices are not shifted; see docs/data.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import DataError
from .base import Policy, RawImage, Record, ValidationReport, strip_background
from .io import ImageInfo, decode_image, list_files, probe_image, read_bytes

__all__ = ["validate", "discover_classes", "check_images"]

_MAX_LISTED = 5
_BAD = "data.policy.bad_image=skip"
_POLICY_HINT = {
    "missing_image": _BAD, "corrupt_image": _BAD, "small_image": _BAD, "large_image": _BAD,
    "bad_annotation": _BAD, "missing_annotation": _BAD, "unknown_class": "data.policy.unknown_class=skip",
    "degenerate": "data.policy.degenerate=remove", "invalid_box": "data.policy.degenerate=remove",
    "out_of_image": "data.policy.out_of_image=clip", "outside_image": "data.policy.out_of_image=clip",
}


def discover_classes(names: Sequence[str]) -> list[str]:
    """Class list from the names found: sorted; all-numeric ids give ``['1', ..., str(max)]`` so id k is label k."""
    uniq = sorted(set(names))
    if uniq and all(n.isdigit() for n in uniq):
        top = max(int(n) for n in uniq)
        return [str(i) for i in range(1, top + 1)]
    return uniq


def _fmt_box(b: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:g}" for v in b.tolist()) + "]"


def _parallel(fn: Any, items: list[Any], desc: str) -> list[Any]:
    n = len(items)
    workers = min(32, 4 * (os.cpu_count() or 1), max(1, n))
    if n <= 8:
        return [fn(x) for x in items]
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(fn, items, chunksize=16), total=n, desc=desc, disable=None if n > 2000 else True,
                         leave=False))


def check_images(
    raws: list[RawImage], level: str, policy: Policy, report: ValidationReport
) -> list[ImageInfo | bool | None]:
    """Per image: an :class:`ImageInfo` (header/decode), ``None`` (not checked / exists),
    or ``False`` (bad; reported)."""
    action = "error" if policy.bad_image == "error" else "dropped image"
    out: list[ImageInfo | bool | None] = [None] * len(raws)
    if level == "none" or not raws:
        return out
    if level == "exists":
        by_dir: dict[str, list[int]] = {}
        for i, r in enumerate(raws):
            by_dir.setdefault(_dirname(r.path), []).append(i)
        for d, idx in by_dir.items():
            present = list_files(d)
            for i in idx:
                if _basename(raws[i].path) not in present:
                    report.add("missing_image", raws[i].path, None,
                               f"image file not found (annotated in {raws[i].source})", action)
                    out[i] = False
        return out

    def one(path: str) -> ImageInfo | tuple[str, str]:
        try:
            data = read_bytes(path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return ("missing_image", "image file not found")
        except OSError as exc:
            return ("corrupt_image", f"cannot read the file ({exc})")
        try:
            info = probe_image(data, path)
            if level == "decode":
                img = decode_image(data, path)
                if img.shape[:2] != (info.height, info.width):
                    info = ImageInfo(img.shape[0], img.shape[1], info.format, info.mode, info.orientation, info.n_bytes)
            return info
        except DataError as exc:
            msg = str(exc)
            msg = msg[len(path) + 2:] if msg.startswith(path + ": ") else msg
            return ("corrupt_image", msg.split("; replace or re-export")[0])

    results = _parallel(one, [r.path for r in raws], f"checking images ({level})")
    for i, (r, res) in enumerate(zip(raws, results)):
        if isinstance(res, tuple):
            kind, msg = res
            if kind == "missing_image":
                msg = f"{msg} (annotated in {r.source})"
            report.add(kind, r.path, None, msg, action)
            out[i] = False
            continue
        info: ImageInfo = res
        report.modes[info.mode] += 1
        if min(info.height, info.width) < policy.min_image_side:
            report.add("small_image", r.path, None,
                       f"image is {info.height}x{info.width} (HxW), below data.policy.min_image_side="
                       f"{policy.min_image_side} (a failed download?)", action)
            out[i] = False
            continue
        if info.height * info.width > policy.max_image_pixels:
            report.add("large_image", r.path, None,
                       f"image is {info.height}x{info.width} = {info.height * info.width} pixels, above "
                       f"data.policy.max_image_pixels={policy.max_image_pixels}", action)
            out[i] = False
            continue
        notes = []
        if info.mode not in ("RGB",):
            notes.append(f"mode {info.mode} converted to RGB uint8")
        if info.orientation != 1:
            notes.append(f"EXIF orientation {info.orientation} applied")
        if notes:
            report.add("converted", r.path, None, "; ".join(notes), "converted")
        out[i] = info
    return out


def _dirname(path: str) -> str:
    return path.rsplit("/", 1)[0] if "://" in path else os.path.dirname(path)


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1] if "://" in path else os.path.basename(path)


def validate(
    raws: list[RawImage],
    classes: Sequence[str] | None,
    policy: Policy,
    check_level: str = "header",
    name: str = "dataset",
    raise_errors: bool = True,
    notes: Sequence[tuple[str, str, str | None, str, str]] = (),
) -> tuple[list[str], list[Record], ValidationReport]:
    """Apply the policy to parsed images; returns ``(classes, records, report)``.

    Raises :class:`~ssdkit.errors.DataError` listing the first problems whose policy is ``'error'``
    when ``raise_errors`` (the erroneous objects/images are otherwise left out and reported).
    A :class:`RawImage` with ``extra['error'] = (kind, message)`` (an annotation the parser could not
    read) is a bad image under ``policy.bad_image``. ``notes`` are the parser's own findings
    ``(kind, file, where, message, action)``, added to the report as they are.
    """
    report = ValidationReport(name)
    report.check_level = check_level
    for note in notes:
        report.add(*note)
    bad_act = "error" if policy.bad_image == "error" else "dropped image"
    broken = [r for r in raws if "error" in r.extra]
    for r in broken:
        kind, msg = r.extra["error"]
        report.add(kind, r.source, None, f"{msg}; fix the file or drop the image with data.policy.bad_image=skip",
                   bad_act)
    if broken:
        raws = [r for r in raws if "error" not in r.extra]
    cls = strip_background(classes)
    if cls is None:
        cls = discover_classes([n for r in raws for n in r.names])
    cmap = {c: i + 1 for i, c in enumerate(cls)}

    seen: dict[str, str] = {}
    uniq: list[RawImage] = []
    for r in raws:
        if r.image_id in seen:
            report.add("duplicate_id", r.source, None,
                       f"image id {r.image_id!r} appears again (first in {seen[r.image_id]}); this entry is dropped",
                       "dropped image")
            continue
        seen[r.image_id] = r.source
        uniq.append(r)

    infos = check_images(uniq, check_level, policy, report)
    records: list[Record] = []
    per_class = np.zeros(len(cls) + 1, dtype=np.int64)
    per_class_diff = np.zeros(len(cls) + 1, dtype=np.int64)
    for r, info in zip(uniq, infos):
        if info is False:
            continue
        size = r.size
        if isinstance(info, ImageInfo):
            real = (info.height, info.width)
            if size is not None and tuple(size) != real and not r.normalized:
                report.add("size_mismatch", r.source, None,
                           f"annotation gives {size[0]}x{size[1]} (HxW) but {r.path} is {real[0]}x{real[1]}; "
                           "boxes are checked against the image", "kept")
            size = real
        rec = _validate_boxes(r, size, cmap, cls, policy, report)
        if rec is None:
            continue
        if len(rec.labels) == 0:
            if policy.keep_images_without_gt:
                report.add("no_boxes", r.source, None, "no boxes (kept as a negative image)", "kept")
            else:
                report.add("no_boxes", r.source, None,
                           "no boxes left; dropped (data.policy.keep_images_without_gt=false)", "dropped image")
                continue
        records.append(rec)
        per_class += np.bincount(rec.labels, minlength=len(cls) + 1)
        per_class_diff += np.bincount(rec.labels[rec.difficult], minlength=len(cls) + 1)
        if rec.size is not None:
            report.sizes.append((int(rec.size[0]), int(rec.size[1])))

    report.n_images = len(records)
    report.n_boxes = int(per_class.sum())
    report.boxes_per_class = {c: int(per_class[i + 1]) for i, c in enumerate(cls)}
    report.difficult_per_class = {c: int(per_class_diff[i + 1]) for i, c in enumerate(cls)}
    if raise_errors and report.has_errors:
        errs = report.errors
        listed = "\n".join(f"  - {p}" for p in errs[:_MAX_LISTED])
        more = f"\n  ... and {len(errs) - _MAX_LISTED} more" if len(errs) > _MAX_LISTED else ""
        keys = sorted({_POLICY_HINT[p.kind] for p in errs if p.kind in _POLICY_HINT})
        hint = f" (e.g. {', '.join(keys)})" if keys else ""
        raise DataError(
            f"{name}: {len(errs)} data error(s) under the current policy:\n{listed}{more}\n"
            f"Fix the files, or change data.policy{hint}; see docs/data.md. `ssdkit data check` lists everything."
        )
    return cls, records, report


def _validate_boxes(
    r: RawImage,
    size: tuple[int, int] | None,
    cmap: dict[str, int],
    classes: list[str],
    policy: Policy,
    report: ValidationReport,
) -> Record | None:
    g = len(r.names)
    boxes = np.asarray(r.boxes, dtype=np.float64).reshape(-1, 4)
    difficult = np.asarray(r.difficult, dtype=bool).reshape(-1)
    if boxes.shape[0] != g or difficult.shape[0] != g:
        raise DataError(f"{r.source}: internal parser error: {g} names but {boxes.shape[0]} boxes")
    labels = np.zeros(g, dtype=np.int64)
    keep = np.ones(g, dtype=bool)
    for j, nm in enumerate(r.names):
        lab = cmap.get(nm)
        if lab is None:
            act = "error" if policy.unknown_class == "error" else "removed"
            shown = classes if len(classes) <= 30 else [*classes[:30], "..."]
            report.add("unknown_class", r.source, r.ref(j),
                       f"class {nm!r} is not one of the classes {shown}; add it to data.classes or set "
                       "data.policy.unknown_class=skip", act)
            keep[j] = False
        else:
            labels[j] = lab
    deg_act = {"remove": "removed", "error": "error", "warn": "warned"}[policy.degenerate]
    finite = np.isfinite(boxes).all(axis=1)
    for j in np.nonzero(keep & ~finite)[0].tolist():
        report.add("invalid_box", r.source, r.ref(j),
                   f"box {_fmt_box(boxes[j])} has missing or non-numeric coordinates",
                   "error" if policy.degenerate == "error" else "removed")
        keep[j] = False
    with np.errstate(invalid="ignore"):
        degen = keep & ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
    for j in np.nonzero(degen)[0].tolist():
        b = boxes[j]
        what = "inverted" if (b[2] < b[0] or b[3] < b[1]) else "zero-size"
        report.add("degenerate", r.source, r.ref(j),
                   f"{what} box {_fmt_box(b)} (xmin, ymin, xmax, ymax): xmax <= xmin or ymax <= ymin", deg_act)
        if policy.degenerate != "warn":
            keep[j] = False
    if size is not None or r.normalized:
        w, h = (1.0, 1.0) if r.normalized else (float(size[1]), float(size[0]))  # type: ignore[index]
        unit = "" if r.normalized else " px"
        b = boxes
        tol = 1e-6 if r.normalized else 1e-3  # float noise (x + w sums, YOLO centre/size) is not "outside"
        with np.errstate(invalid="ignore"):
            overlaps = (b[:, 2] > 0) & (b[:, 0] < w) & (b[:, 3] > 0) & (b[:, 1] < h)
            sticks_out = (b[:, 0] < -tol) | (b[:, 1] < -tol) | (b[:, 2] > w + tol) | (b[:, 3] > h + tol)
        extent = f"the {w:g}x{h:g}{unit} (WxH) image" if not r.normalized else "the image ([0, 1] normalised)"
        for j in np.nonzero(keep & ~degen & ~overlaps)[0].tolist():
            report.add("outside_image", r.source, r.ref(j), f"box {_fmt_box(b[j])} lies entirely outside {extent}",
                       "error" if policy.out_of_image == "error" else "removed")
            keep[j] = False
        part = keep & ~degen & overlaps & sticks_out
        act = {"clip": "clipped", "drop": "removed", "error": "error"}[policy.out_of_image]
        for j in np.nonzero(part)[0].tolist():
            report.add("out_of_image", r.source, r.ref(j), f"box {_fmt_box(b[j])} extends outside {extent}", act)
        if policy.out_of_image != "clip":
            keep &= ~part
        boxes = np.clip(boxes, 0, [w, h, w, h])  # clips the counted boxes, and float noise of the others
    boxes, labels, difficult = boxes[keep], labels[keep], difficult[keep]
    if len(labels) > 1:
        rows = np.concatenate([labels[:, None].astype(np.float64), boxes], axis=1)
        _, first, counts = np.unique(rows, axis=0, return_index=True, return_counts=True)
        for k in np.nonzero(counts > 1)[0]:
            j = int(np.nonzero(keep)[0][first[k]])
            report.add("duplicate_box", r.source, r.ref(j),
                       f"box {_fmt_box(rows[first[k], 1:])} of class {classes[int(rows[first[k], 0]) - 1]!r} "
                       f"appears {counts[k]} times", "kept")
    return Record(
        image_id=r.image_id,
        path=r.path,
        boxes=boxes.astype(np.float32),
        labels=labels,
        difficult=difficult,
        size=tuple(size) if size is not None else None,  # type: ignore[arg-type]
        normalized=r.normalized,
        source=r.source,
    )
