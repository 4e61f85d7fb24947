"""Shared dataset machinery: the validation policy, the validation report, and the dataset base class.

Item contract (``docs/architecture.md``, "Dataset items")::

    image, target = dataset[i]
    image:  Tensor[3, H, W] uint8 RGB
    target: boxes float32 [G, 4] xyxy pixels, labels int64 [G] in 1..n, difficult bool [G],
            image_id str, orig_size (H, W) of the file as read (EXIF orientation applied),
            inverse float32 [4] (sx, sy, ox, oy): orig = (net - (ox, oy)) / (sx, sy)

``dataset.load(i)`` gives the same before any transform as numpy (``image`` ``[H, W, 3]`` uint8,
target arrays), which is what the transforms of :mod:`ssdkit.data.transforms` consume.

Every dataset parses its annotations into :class:`RawImage` objects and hands them to
:func:`ssdkit.data.validation.validate`, so all formats share one validation policy
(:class:`Policy`) and one :class:`ValidationReport`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError

__all__ = [
    "Policy",
    "Problem",
    "ValidationReport",
    "RawImage",
    "Record",
    "DetectionDataset",
    "ConcatDetectionDataset",
    "CHECK_LEVELS",
    "to_tensors",
    "PER_BOX_KEYS",
]

log = logging.getLogger("ssdkit.data")

CHECK_LEVELS = ("none", "exists", "header", "decode")
PER_BOX_KEYS = ("boxes", "labels", "difficult")
BACKGROUND_NAMES = ("background", "__background__", "bg")

_CHOICES: dict[str, tuple[Any, ...]] = {
    "degenerate": ("remove", "error", "warn"),
    "out_of_image": ("clip", "drop", "error"),
    "unknown_class": ("error", "skip"),
    "bad_image": ("error", "skip"),
    "crowd": ("drop", "difficult"),
}


@dataclass(frozen=True)
class Policy:
    """What validation does with each kind of problem (the defaults are the documented policy).

    Attributes:
        degenerate: boxes with ``xmax <= xmin`` or ``ymax <= ymin`` (or non-numeric coordinates):
            ``'remove'`` (counted), ``'error'``, or ``'warn'`` (kept and counted, as the Keras
            ``DataGenerator`` did; the target encoder then needs ``degenerate='remove'``).
        out_of_image: boxes partly outside the image: ``'clip'`` to the image (counted),
            ``'drop'`` (counted) or ``'error'``. Boxes entirely outside are always dropped and
            counted (``'outside_image'``) unless this is ``'error'``.
        keep_images_without_gt: keep images that end up with no boxes (negatives; targets all
            background). ``False`` drops them (counted).
        unknown_class: an object whose class is not in ``classes``: ``'error'`` naming the file and
            object, or ``'skip'`` the object (counted).
        bad_image: a missing, unreadable, corrupt, too small or too large image, or an annotation
            file that cannot be parsed: ``'error'`` at dataset build / ``ssdkit data check``, or
            ``'skip'`` the image (counted).
        min_image_side: images with a side below this many pixels are bad images (a 1x1 file is
            almost always a failed download).
        max_image_pixels: images above this many pixels are bad images (decompression bombs);
            the default is Pillow's hard limit.
        crowd: COCO ``iscrowd`` boxes: ``'drop'`` (counted) or keep as ``'difficult'``.
    """

    degenerate: str = "remove"
    out_of_image: str = "clip"
    keep_images_without_gt: bool = True
    unknown_class: str = "error"
    bad_image: str = "error"
    min_image_side: int = 8
    max_image_pixels: int = 178_956_970
    crowd: str = "drop"

    def __post_init__(self) -> None:
        for key, choices in _CHOICES.items():
            v = getattr(self, key)
            if v not in choices:
                raise ConfigError(f"data.policy.{key}: must be one of {list(choices)}, got {v!r}")
        if not isinstance(self.keep_images_without_gt, bool):
            raise ConfigError(
                f"data.policy.keep_images_without_gt: must be true or false, got {self.keep_images_without_gt!r}"
            )
        for key in ("min_image_side", "max_image_pixels"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"data.policy.{key}: must be a positive integer, got {v!r}")

    @classmethod
    def from_any(cls, policy: Policy | Mapping[str, Any] | None) -> Policy:
        """A :class:`Policy` from ``None`` (defaults), a mapping (unknown keys raise ``ConfigError``) or itself."""
        if policy is None:
            return cls()
        if isinstance(policy, Policy):
            return policy
        if not isinstance(policy, Mapping):
            raise ConfigError(f"data.policy: must be a mapping, got {type(policy).__name__}")
        known = {f.name for f in fields(cls)}
        for k in policy:
            if k not in known:
                import difflib

                close = difflib.get_close_matches(str(k), sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {sorted(known)}"
                raise ConfigError(f"data.policy.{k}: unknown key{hint}")
        return cls(**dict(policy))


@dataclass(frozen=True)
class Problem:
    """One validation finding. ``where`` is the object index / CSV line / annotation id, or ``None``."""

    kind: str
    file: str
    where: str | None
    message: str
    action: str  # 'error', 'removed', 'clipped', 'dropped image', 'kept', 'excluded', 'converted'

    @property
    def severity(self) -> str:
        """``'error'`` (policy error), ``'warning'`` (data removed/changed, or suspicious) or ``'info'``."""
        if self.action == "error":
            return "error"
        if self.action in ("kept", "excluded", "converted") and self.kind not in ("size_mismatch", "duplicate_box"):
            return "info"
        return "warning"

    def __str__(self) -> str:
        loc = f"{self.file}, {self.where}" if self.where else self.file
        tag = self.kind if self.kind == self.action else f"{self.kind}: {self.action}"
        return f"{loc}: {self.message} [{tag}]"


# kind -> short description used in summaries
KINDS: dict[str, str] = {
    "missing_image": "image file not found",
    "corrupt_image": "image unreadable/corrupt/not an image",
    "small_image": "image too small",
    "large_image": "image too large",
    "bad_annotation": "annotation file unreadable",
    "missing_annotation": "annotation file not found",
    "unknown_class": "unknown class",
    "degenerate": "degenerate box (xmax <= xmin or ymax <= ymin)",
    "invalid_box": "box with missing/non-numeric coordinates",
    "out_of_image": "box partly outside the image",
    "outside_image": "box entirely outside the image",
    "no_boxes": "image without boxes",
    "duplicate_id": "duplicate image id",
    "duplicate_box": "same box and class twice",
    "size_mismatch": "annotated size differs from the image",
    "orphan_annotation": "annotation for an unknown image",
    "no_label_file": "no label file (background image)",
    "excluded": "excluded by include_classes/exclude_* options or crowd policy",
    "converted": "image normalised to RGB uint8",
}


class ValidationReport:
    """What validation found in one dataset: counts by kind, every finding, and dataset statistics.

    Attributes:
        name: the dataset's name (for messages).
        problems: every :class:`Problem` in the order found.
        n_images, n_boxes: images and boxes kept.
        boxes_per_class: ``{class name: boxes kept}`` (all classes listed, zeros included).
        difficult_per_class: ``{class name: difficult boxes kept}``.
        sizes: ``[(H, W), ...]`` of the kept images whose size is known.
        modes: Pillow modes of the image files seen by header/decode checks (``{'RGB': 290, 'L': 2}``).
    """

    def __init__(self, name: str = "dataset") -> None:
        self.name = name
        self.problems: list[Problem] = []
        self.n_images = 0
        self.n_boxes = 0
        self.boxes_per_class: dict[str, int] = {}
        self.difficult_per_class: dict[str, int] = {}
        self.sizes: list[tuple[int, int]] = []
        self.modes: Counter[str] = Counter()
        self.check_level = "none"

    def add(self, kind: str, file: str, where: str | None, message: str, action: str) -> Problem:
        p = Problem(kind, str(file), where, message, action)
        self.problems.append(p)
        return p

    @property
    def counts(self) -> Counter[str]:
        """Problems by kind (every severity)."""
        return Counter(p.kind for p in self.problems)

    def by_action(self) -> Counter[tuple[str, str]]:
        return Counter((p.kind, p.action) for p in self.problems)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def has_errors(self) -> bool:
        return any(p.action == "error" for p in self.problems)

    def count(self, kind: str, action: str | None = None) -> int:
        return sum(1 for p in self.problems if p.kind == kind and (action is None or p.action == action))

    def summary_line(self) -> str:
        """One line: images, boxes, and every non-info problem count with its action."""
        parts = [f"{self.name}: {self.n_images} images, {self.n_boxes} boxes"]
        for (kind, action), n in sorted(self.by_action().items()):
            if action in ("kept", "converted", "excluded") and kind not in ("excluded",):
                continue
            parts.append(f"{n} {kind} {action}")
        return "; ".join(parts)

    def format(self, max_examples: int = 3) -> str:
        """Multi-line summary: sizes, boxes per class, image-size spread, problems by kind with examples."""
        lines = [f"{self.name}",
                 f"  images: {self.n_images}    boxes: {self.n_boxes}    (image check: {self.check_level})"]
        if self.boxes_per_class:
            lines.append("  boxes per class:")
            width = max(len(c) for c in self.boxes_per_class)
            for c, n in self.boxes_per_class.items():
                d = self.difficult_per_class.get(c, 0)
                extra = f"  ({d} difficult)" if d else ""
                lines.append(f"    {c:<{width}}  {n:>7}{extra}")
        if self.sizes:
            hw = np.asarray(self.sizes, dtype=np.int64)
            h, w = hw[:, 0], hw[:, 1]
            uniq = len({(int(a), int(b)) for a, b in hw})
            lines.append(
                f"  image size (HxW): min {h.min()}x{w.min()}, median {int(np.median(h))}x{int(np.median(w))}, "
                f"max {h.max()}x{w.max()}; {uniq} distinct size(s)"
            )
        if self.modes:
            lines.append("  file modes: " + ", ".join(f"{m} {n}" for m, n in self.modes.most_common()))
        by_kind: dict[str, list[Problem]] = {}
        for p in self.problems:
            by_kind.setdefault(p.kind, []).append(p)
        if not by_kind:
            lines.append("  problems: none")
        else:
            lines.append("  problems by kind:")
            for kind, ps in sorted(by_kind.items(), key=lambda kv: (-_rank(kv[1]), kv[0])):
                acts = Counter(p.action for p in ps)
                act = ", ".join(f"{a} {n}" for a, n in acts.most_common())
                sev = max((p.severity for p in ps), key=lambda s: ("info", "warning", "error").index(s))
                lines.append(f"    {sev.upper():<7} {kind} ({KINDS.get(kind, kind)}): {len(ps)} [{act}]")
                for p in ps[:max_examples]:
                    lines.append(f"      - {p}")
                if len(ps) > max_examples:
                    lines.append(f"      ... {len(ps) - max_examples} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_images": self.n_images,
            "n_boxes": self.n_boxes,
            "boxes_per_class": dict(self.boxes_per_class),
            "counts": dict(self.counts),
            "errors": [str(p) for p in self.errors],
        }

    def merge(self, other: ValidationReport) -> ValidationReport:
        """A combined report (for concatenated datasets)."""
        out = ValidationReport(f"{self.name} + {other.name}")
        out.problems = self.problems + other.problems
        out.n_images = self.n_images + other.n_images
        out.n_boxes = self.n_boxes + other.n_boxes
        for src in (self, other):
            for c, n in src.boxes_per_class.items():
                out.boxes_per_class[c] = out.boxes_per_class.get(c, 0) + n
            for c, n in src.difficult_per_class.items():
                out.difficult_per_class[c] = out.difficult_per_class.get(c, 0) + n
        out.sizes = self.sizes + other.sizes
        out.modes = self.modes + other.modes
        out.check_level = self.check_level
        return out

    def __repr__(self) -> str:
        return f"ValidationReport({self.summary_line()!r})"


def _rank(ps: list[Problem]) -> int:
    return max(("info", "warning", "error").index(p.severity) for p in ps)


@dataclass
class RawImage:
    """One image as parsed from an annotation file, before validation.

    ``boxes`` is ``float64 [G, 4]`` xyxy in pixels (or normalised to ``[0, 1]`` when ``normalized``),
    NaN where a coordinate is missing or not a number. ``names`` are class names (str). Object ``j``
    is referred to in messages as ``ref_fmt.format(refs[j] if refs else j)``.
    """

    image_id: str
    path: str
    source: str
    names: list[str]
    boxes: np.ndarray
    difficult: np.ndarray
    size: tuple[int, int] | None = None
    normalized: bool = False
    refs: Sequence[Any] | None = None
    ref_fmt: str = "object {}"
    extra: dict[str, Any] = field(default_factory=dict)

    def ref(self, j: int) -> str:
        return self.ref_fmt.format(self.refs[j] if self.refs is not None else j)


@dataclass
class Record:
    """One validated image: what ``dataset.load(i)`` needs to build the item."""

    image_id: str
    path: str
    boxes: np.ndarray  # float32 [G, 4]
    labels: np.ndarray  # int64 [G]
    difficult: np.ndarray  # bool [G]
    size: tuple[int, int] | None  # (H, W) when known before decoding
    normalized: bool = False
    source: str = ""


def strip_background(classes: Sequence[str] | None) -> list[str] | None:
    """Class names without a leading ``'background'`` entry (the Keras convention); ``None`` stays ``None``."""
    if classes is None:
        return None
    if isinstance(classes, str):
        raise ConfigError(f"data.classes: must be a list of class names, got the string {classes!r}")
    names = [str(c) for c in classes]
    if names and names[0].strip().lower() in BACKGROUND_NAMES:
        names = names[1:]
    if not names:
        raise ConfigError("data.classes: the class list is empty")
    dup = [c for c, n in Counter(names).items() if n > 1]
    if dup:
        raise ConfigError(f"data.classes: duplicate class names {dup}")
    bg = [c for c in names if c.strip().lower() in BACKGROUND_NAMES]
    if bg:
        raise ConfigError(
            f"data.classes: {bg[0]!r} may only be the first entry (label 0 is background); remove it from the list"
        )
    return names


def to_tensors(image: np.ndarray, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """numpy ``[H, W, 3]`` uint8 + numpy target -> the item contract (``Tensor[3, H, W]`` uint8, tensors)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"image {target.get('image_id')}: expected [H, W, 3], got {image.shape}")
    img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    out: dict[str, Any] = dict(target)
    out["boxes"] = torch.as_tensor(np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4))
    out["labels"] = torch.as_tensor(np.asarray(target["labels"], dtype=np.int64).reshape(-1))
    out["difficult"] = torch.as_tensor(np.asarray(target["difficult"], dtype=bool).reshape(-1))
    inv = target.get("inverse")
    out["inverse"] = torch.as_tensor(np.asarray(inv if inv is not None else (1, 1, 0, 0), dtype=np.float32))
    out["orig_size"] = tuple(int(v) for v in target["orig_size"])
    return img, out


class DetectionDataset(torch.utils.data.Dataset):
    """Base class of the VOC/CSV/COCO/YOLO datasets (see the module docstring for the item contract).

    Subclasses parse their annotations into :class:`RawImage` objects and call :meth:`_finalize`.

    Common args:
        transforms: applied by ``__getitem__``: an ssdkit transform (numpy fast path, see
            :mod:`ssdkit.data.transforms`) or any callable on ``(Tensor image, target)`` such as a
            ``torchvision.transforms.v2`` pipeline (boxes passed as ``tv_tensors.BoundingBoxes``).
        policy: :class:`Policy` or mapping (see its docstring for the defaults).
        check_images: ``'none'`` | ``'exists'`` (one directory listing) | ``'header'`` (read each file,
            check signature/truncation, get the size and mode; the default) | ``'decode'`` (full decode,
            what ``ssdkit data check`` uses).
        cache: ``'none'`` (read + decode per item), ``'memory'`` (decode everything once into one
            shared array) or ``'hdf5'`` (one file of decoded images, see :mod:`ssdkit.data.cache`).
        cache_path: HDF5 file (default: ``<cache_dir>/<name>-<hash>.h5``).
        cache_dir: folder of the default HDF5 file (default ``$SSDKIT_CACHE_DIR`` or ``~/.cache/ssdkit/data``).
        verbose: log the one-line validation summary at build (warning level when something was
            removed, clipped or skipped).
        raise_errors: ``True`` raises :class:`~ssdkit.errors.DataError` listing the problems whose
            policy is ``'error'``; ``False`` keeps going (erroneous objects/images are left out) and
            leaves them in :attr:`report` (what ``ssdkit data check`` does).
        name: shown in messages (default: format and split).
    """

    format = "base"

    def __init__(
        self,
        transforms: Callable[..., Any] | None = None,
        policy: Policy | Mapping[str, Any] | None = None,
        check_images: str = "header",
        cache: str | None = "none",
        cache_path: str | None = None,
        raise_errors: bool = True,
        name: str | None = None,
        cache_dir: str | None = None,
        verbose: bool = True,
    ) -> None:
        if check_images not in CHECK_LEVELS:
            raise ConfigError(f"data.check_images: must be one of {list(CHECK_LEVELS)}, got {check_images!r}")
        cache = "none" if cache in (None, False) else cache
        if cache not in ("none", "memory", "hdf5"):
            raise ConfigError(f"data.cache: must be one of ['none', 'memory', 'hdf5'], got {cache!r}")
        self.transforms = transforms
        self.policy = Policy.from_any(policy)
        self.check_images = check_images
        self.cache_mode = cache
        self.cache_path = cache_path
        self.raise_errors = raise_errors
        self.name = name or self.format
        self.cache_dir = cache_dir
        self.verbose = verbose
        self.records: list[Record] = []
        self.classes: list[str] = []
        self.report = ValidationReport(self.name)
        self._cache: Any = None

    # ------------------------------------------------------------------ building
    def _finalize(
        self,
        raws: list[RawImage],
        classes: Sequence[str] | None,
        notes: Sequence[tuple[str, str, str | None, str, str]] = (),
    ) -> None:
        """Validate parsed images (see :func:`ssdkit.data.validation.validate`), log the summary, build the cache.

        ``notes`` are findings of the parser itself ``(kind, file, where, message, action)``, e.g.
        objects excluded by ``exclude_difficult``; they go into the report before the summary.
        """
        from .validation import validate

        self.classes, self.records, self.report = validate(
            raws, classes, self.policy, self.check_images, name=self.name, raise_errors=self.raise_errors,
            notes=notes,
        )
        self._log_summary()
        if self.cache_mode != "none":
            from .cache import build_cache

            self._cache = build_cache(self, self.cache_mode, self.cache_path, self.cache_dir)

    def _log_summary(self) -> None:
        if not self.verbose:
            return
        r = self.report
        lossy = [p for p in r.problems if p.severity != "info"]
        line = r.summary_line()
        if lossy:
            log.warning("%s (details: dataset.report.format() or `ssdkit data check`)", line)
        else:
            log.info("%s", line)

    # ------------------------------------------------------------------ public API
    @property
    def image_ids(self) -> list[str]:
        return [r.image_id for r in self.records]

    @property
    def class_to_label(self) -> dict[str, int]:
        """``{class name: label}`` with labels ``1..n``."""
        return {c: i + 1 for i, c in enumerate(self.classes)}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, index: int) -> str:
        return self.records[index].path

    def annotation(self, index: int) -> dict[str, Any]:
        """The target of image ``index`` without reading the image (tensors, original pixels).

        Needs the image size for normalised (YOLO) boxes; it is known after a header check.
        """
        rec = self.records[index]
        if rec.normalized and rec.size is None:
            raise DataError(
                f"{rec.path}: the image size is unknown (check_images={self.check_images!r}); "
                "build the dataset with check_images='header' to read annotations without decoding"
            )
        return to_tensors(np.zeros((1, 1, 3), np.uint8), self._target(rec, rec.size))[1]

    def read_image(self, index: int) -> np.ndarray:
        """The decoded image ``[H, W, 3]`` uint8 RGB (from the cache when there is one)."""
        if self._cache is not None:
            return self._cache.get(index)
        from .io import read_image

        return read_image(self.records[index].path)

    def load(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Image ``[H, W, 3]`` uint8 and numpy target, before transforms (``inverse`` = identity)."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        for attempt in range(min(len(self), 16)):
            try:
                image = self.read_image(index)
                return image, self._target(self.records[index], image.shape[:2])
            except DataError as exc:
                if self.policy.bad_image != "skip" or attempt == min(len(self), 16) - 1:
                    raise
                # A file that broke after the dataset was checked (or was never checked): say so, use the next.
                warnings.warn(f"{exc}; using the next image instead (data.policy.bad_image=skip)", stacklevel=2)
                index = (index + 1) % len(self)
        raise DataError(f"{self.name}: no readable image found")  # pragma: no cover - loop always returns/raises

    def _target(self, rec: Record, hw: tuple[int, int] | None) -> dict[str, Any]:
        boxes = rec.boxes.astype(np.float32, copy=True)
        labels, difficult = rec.labels, rec.difficult
        h, w = (int(hw[0]), int(hw[1])) if hw is not None else (0, 0)
        if rec.normalized:
            boxes *= np.array([w, h, w, h], dtype=np.float32)
        if hw is not None and len(boxes) and (boxes.min() < 0 or boxes[:, 2].max() > w or boxes[:, 3].max() > h):
            # Safety net for sizes unknown at build time (validated boxes are already inside).
            np.clip(boxes, 0, [w, h, w, h], out=boxes)
            ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, labels, difficult = boxes[ok], labels[ok], difficult[ok]
        return {
            "boxes": boxes,
            "labels": labels.copy(),
            "difficult": difficult.copy(),
            "image_id": rec.image_id,
            "orig_size": (h, w),
            "inverse": np.array([1.0, 1.0, 0.0, 0.0], dtype=np.float32),
        }

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image, target = self.load(index)
        if self.transforms is not None:
            from .transforms import apply_transform

            image, target = apply_transform(self.transforms, image, target)
        return to_tensors(image, target)

    def with_transforms(self, transforms: Callable[..., Any] | None) -> DetectionDataset:
        """A shallow copy sharing records and cache, with other transforms."""
        import copy

        other = copy.copy(self)
        other.transforms = transforms
        return other

    def fingerprint_items(self) -> list[str]:
        """Image paths (what the HDF5 cache fingerprint covers, with their sizes and mtimes)."""
        return [r.path for r in self.records]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, images={len(self)}, classes={self.classes})"


class ConcatDetectionDataset(DetectionDataset):
    """Several datasets with the same classes as one (e.g. VOC2007 + VOC2012 trainval)."""

    format = "concat"

    def __init__(self, datasets: Iterable[DetectionDataset], transforms: Callable[..., Any] | None = None) -> None:
        parts = list(datasets)
        if not parts:
            raise ConfigError("cannot concatenate zero datasets")
        for d in parts[1:]:
            if d.classes != parts[0].classes:
                raise DataError(
                    f"cannot concatenate {d.name} (classes {d.classes}) with {parts[0].name} "
                    f"(classes {parts[0].classes}); give the same data.classes to every part"
                )
        super().__init__(transforms=transforms, policy=parts[0].policy, check_images=parts[0].check_images,
                         name=" + ".join(d.name for d in parts))
        self.parts = parts
        self.classes = list(parts[0].classes)
        self.records = [r for d in parts for r in d.records]
        self._owner = np.concatenate([np.full(len(d), k, dtype=np.int64) for k, d in enumerate(parts)])
        self._offset = np.concatenate([[0], np.cumsum([len(d) for d in parts])])
        rep = parts[0].report
        for d in parts[1:]:
            rep = rep.merge(d.report)
        self.report = rep

    def read_image(self, index: int) -> np.ndarray:
        k = int(self._owner[index])
        return self.parts[k].read_image(index - int(self._offset[k]))


def with_policy_overrides(policy: Policy, **kw: Any) -> Policy:
    return replace(policy, **kw)


def env_cache_dir() -> str:
    return os.environ.get("SSDKIT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "ssdkit", "data")
