"""Transforms on ``(image, target)`` pairs: the Keras SSD photometric, geometric and patch ops.

Contract. ``image``: ``np.ndarray[H, W, 3]`` uint8 RGB (a ``Tensor[3, H, W]`` uint8 is accepted
too and the same type comes back). ``target``: dict with ``boxes`` float32 ``[G, 4]`` xyxy pixels,
``labels`` int64 ``[G]``, ``difficult`` bool ``[G]`` (filtered together), ``inverse`` float32 ``[4]``
(added if missing) and any other keys (passed through). Ops never modify their inputs.

Randomness. Each random op fires with its probability ``p`` and draws from a
``numpy.random.Generator``: ``op(image, target, rng=...)`` takes a Generator, a seed, a
``torch.Generator`` or ``None`` (then the op's own generator: ``op.seed(s)`` makes it reproducible;
in a DataLoader worker it is re-seeded from the worker's ``torch.initial_seed()`` so workers never
repeat each other). :func:`ssdkit.data.build_loader` passes one generator per sample derived from
``(seed, epoch, index)``, so augmentation is identical for any number of workers.

Inverse. Every geometric op updates ``target['inverse'] = (sx, sy, ox, oy)`` so that
``net = orig * s + o`` per axis, i.e. ``orig = (net - o) / s``; flips give a negative ``s`` (use
:func:`invert_boxes`, which re-orders the corners), 90/270 degree rotations make it NaN.

Coordinates are continuous (the image spans ``[0, W] x [0, H]``): a flip maps ``x -> W - x``,
boxes are clipped to ``[0, W]``, "centre inside" means ``0 <= cx <= W``. The Keras code clipped to
``W - 1`` and tested centres against ``W - 1`` (pixel-index habits); see docs/data.md for this
and the other documented differences.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "Transform", "Compose", "RandomChoice", "RandomApply", "as_generator", "apply_transform", "invert_boxes",
    "BoxFilter", "ImageValidator", "FilterBoxes",
    "PhotometricDistort", "RandomBrightness", "RandomContrast", "RandomSaturation", "RandomHue", "RandomGamma",
    "RandomHistogramEqualization", "RandomChannelSwap",
    "Resize", "Flip", "RandomFlip", "CropPad", "PadToAspect", "RandomTranslate", "RandomScale", "RandomRotate",
    "RandomExpand", "SSDRandomCrop", "RandomPatch",
    "INTERPOLATIONS",
]

Target = dict[str, Any]
SizeLike = int | Sequence[int]
Color = Sequence[float] | float

INTERPOLATIONS = {
    "nearest": 0, "linear": 1, "bilinear": 1, "cubic": 2, "bicubic": 2, "area": 3, "lanczos": 4, "lanczos4": 4,
}
SSD_INTERPOLATIONS = ("nearest", "linear", "cubic", "area", "lanczos")


# ------------------------------------------------------------------------------------ randomness
def as_generator(rng: Any = None) -> np.random.Generator:
    """A numpy Generator from ``None`` (fresh entropy), an int / SeedSequence, a Generator, or a ``torch.Generator``."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, torch.Generator):
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=rng)))
    return np.random.default_rng(rng)


# ------------------------------------------------------------------------------------ target helpers
def _empty_target() -> Target:
    return {
        "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64), "difficult": np.zeros(0, bool),
    }


def _select(target: Target, keep: np.ndarray) -> Target:
    out = dict(target)
    for k in ("boxes", "labels", "difficult"):
        if k in out and out[k] is not None:
            out[k] = np.asarray(out[k])[keep]
    return out


def _set_boxes(target: Target, boxes: np.ndarray) -> Target:
    out = dict(target)
    out["boxes"] = boxes.astype(np.float32, copy=False)
    return out


def _affine(target: Target, ax: float, ay: float, bx: float, by: float) -> Target:
    """Compose ``net' = a * net + b`` (per axis) into ``target['inverse']`` (``net = s * orig + o``)."""
    inv = np.asarray(target.get("inverse", (1.0, 1.0, 0.0, 0.0)), dtype=np.float64)
    sx, sy, ox, oy = inv
    out = dict(target)
    out["inverse"] = np.array([ax * sx, ay * sy, ax * ox + bx, ay * oy + by], dtype=np.float32)
    return out


def _no_inverse(target: Target) -> Target:
    out = dict(target)
    out["inverse"] = np.full(4, np.nan, dtype=np.float32)
    return out


def _boxes(target: Target) -> np.ndarray:
    return np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4)


def invert_boxes(boxes: Any, inverse: Any) -> Any:
    """Map ``[..., 4]`` xyxy boxes from network pixels back to original pixels with ``inverse (sx, sy, ox, oy)``.

    ``orig = (net - o) / s``; with a negative scale (a flip) the corners are re-ordered so that
    ``xmin <= xmax``. Works on numpy arrays and tensors (``inverse`` ``[4]`` or ``[B, 4]`` with ``boxes [B, N, 4]``).
    """
    if isinstance(boxes, torch.Tensor):
        t_inv = torch.as_tensor(inverse, dtype=boxes.dtype, device=boxes.device)
        t_s = torch.cat([t_inv[..., 0:2], t_inv[..., 0:2]], -1)
        t_o = torch.cat([t_inv[..., 2:4], t_inv[..., 2:4]], -1)
        if t_inv.dim() == 2:
            t_s, t_o = t_s[:, None, :], t_o[:, None, :]
        tb = (boxes - t_o) / t_s
        return torch.cat([torch.minimum(tb[..., :2], tb[..., 2:]), torch.maximum(tb[..., :2], tb[..., 2:])], -1)
    inv = np.asarray(inverse, dtype=np.float64)
    s = np.concatenate([inv[..., 0:2], inv[..., 0:2]], -1)
    o = np.concatenate([inv[..., 2:4], inv[..., 2:4]], -1)
    if inv.ndim == 2:
        s, o = s[:, None, :], o[:, None, :]
    b = (np.asarray(boxes, dtype=np.float64) - o) / s
    return np.concatenate([np.minimum(b[..., :2], b[..., 2:]), np.maximum(b[..., :2], b[..., 2:])], -1)


# ------------------------------------------------------------------------------------ base classes
class Transform:
    """Base class: subclasses implement :meth:`apply` on numpy ``(image, target)`` with a Generator."""

    _seed: Any = None
    _gen: np.random.Generator | None = None
    _gen_pid: int = -1

    def seed(self, seed: Any) -> Transform:
        """Make the op's own generator reproducible (``seed``: int, Generator, torch.Generator)."""
        self._seed = seed
        self._gen = as_generator(seed)
        self._gen_pid = os.getpid()
        return self

    @property
    def generator(self) -> np.random.Generator:
        if self._gen is None or self._gen_pid != os.getpid():
            if self._gen is not None:
                # A forked DataLoader worker: derive a distinct stream from the worker's torch seed.
                base = self._seed if isinstance(self._seed, int) else 0
                self._gen = np.random.default_rng([base, torch.initial_seed() % (2**63)])
            else:
                self._gen = np.random.default_rng()
            self._gen_pid = os.getpid()
        return self._gen

    def __call__(self, image: Any, target: Target | None = None, rng: Any = None) -> tuple[Any, Target]:
        is_tensor = isinstance(image, torch.Tensor)
        img, tgt = _to_numpy(image, target)
        gen = as_generator(rng) if rng is not None else self.generator
        img, tgt = self.apply(img, tgt, gen)
        return _to_torch(img, tgt) if is_tensor else (img, tgt)

    def apply(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply transforms in order (one generator shared by the chain)."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def apply(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        for t in self.transforms:
            image, target = apply_transform(t, image, target, rng)
        return image, target

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"Compose([\n  {inner}\n])"


class RandomChoice(Transform):
    """Apply one of ``transforms``, chosen with probabilities ``p`` (uniform by default)."""

    def __init__(self, transforms: Sequence[Transform], p: Sequence[float] | None = None) -> None:
        self.transforms = list(transforms)
        self.p = None if p is None else list(p)

    def apply(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        k = int(rng.choice(len(self.transforms), p=self.p))
        return apply_transform(self.transforms[k], image, target, rng)


class RandomApply(Transform):
    """Apply ``transform`` with probability ``p``."""

    def __init__(self, transform: Transform, p: float = 0.5) -> None:
        self.transform, self.p = transform, float(p)

    def apply(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        if rng.random() < self.p:
            return apply_transform(self.transform, image, target, rng)
        return image, target


def _to_numpy(image: Any, target: Target | None) -> tuple[np.ndarray, Target]:
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 Tensor[3, H, W], got {image.dtype} {tuple(image.shape)}")
        img = np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())
    else:
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected a uint8 array [H, W, 3], got {img.dtype} {img.shape}")
    tgt: Target = _empty_target() if target is None else dict(target)
    for k in ("boxes", "labels", "difficult", "inverse"):
        v = tgt.get(k)
        if isinstance(v, torch.Tensor):
            tgt[k] = v.detach().cpu().numpy()
    tgt["boxes"] = np.asarray(tgt.get("boxes", np.zeros((0, 4))), dtype=np.float32).reshape(-1, 4)
    n = len(tgt["boxes"])
    tgt["labels"] = np.asarray(tgt.get("labels", np.zeros(n)), dtype=np.int64).reshape(-1)
    tgt["difficult"] = np.asarray(tgt.get("difficult", np.zeros(n, bool)), dtype=bool).reshape(-1)
    if "inverse" not in tgt:
        tgt["inverse"] = np.array([1.0, 1.0, 0.0, 0.0], dtype=np.float32)
    return img, tgt


def _to_torch(image: np.ndarray, target: Target) -> tuple[torch.Tensor, Target]:
    img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    out = dict(target)
    out["boxes"] = torch.as_tensor(np.asarray(target["boxes"], dtype=np.float32))
    out["labels"] = torch.as_tensor(np.asarray(target["labels"], dtype=np.int64))
    out["difficult"] = torch.as_tensor(np.asarray(target["difficult"], dtype=bool))
    out["inverse"] = torch.as_tensor(np.asarray(target["inverse"], dtype=np.float32))
    return img, out


def apply_transform(t: Callable[..., Any], image: np.ndarray, target: Target,
                    rng: Any = None) -> tuple[np.ndarray, Target]:
    """Run ``t`` on a numpy pair: ssdkit transforms directly; any other callable (e.g. a
    ``torchvision.transforms.v2`` pipeline) on ``(Tensor[3, H, W], target with tv_tensors.BoundingBoxes)``.

    For foreign transforms ``inverse`` is kept when the size is unchanged and set to NaN otherwise,
    and ``difficult`` must stay aligned with the boxes (give ``SanitizeBoundingBoxes`` a
    ``labels_getter`` returning ``(labels, difficult)``).
    """
    if isinstance(t, Transform):
        return t.apply(image, target, as_generator(rng) if rng is not None else t.generator)
    from torchvision import tv_tensors

    h, w = image.shape[:2]
    img_t = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))
    tgt = dict(target)
    tgt["boxes"] = tv_tensors.BoundingBoxes(torch.from_numpy(_boxes(target).copy()), format="XYXY", canvas_size=(h, w))
    tgt["labels"] = torch.from_numpy(np.asarray(target["labels"], dtype=np.int64).copy())
    tgt["difficult"] = torch.from_numpy(np.asarray(target["difficult"], dtype=bool).copy())
    out = t(img_t, tgt)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
        raise TypeError(f"transform {t!r} must return (image, target), got {type(out).__name__}")
    img_o, tgt_o = out
    arr = np.ascontiguousarray(torch.as_tensor(img_o).permute(1, 2, 0).numpy())
    res = dict(tgt_o)
    for k in ("boxes", "labels", "difficult"):
        res[k] = torch.as_tensor(tgt_o[k]).numpy()
    res["boxes"] = res["boxes"].astype(np.float32).reshape(-1, 4)
    if len(res["difficult"]) != len(res["boxes"]) or len(res["labels"]) != len(res["boxes"]):
        raise ValueError(
            f"transform {t!r} changed the number of boxes without filtering labels/difficult alike; "
            "use SanitizeBoundingBoxes(labels_getter=lambda s: (s[1]['labels'], s[1]['difficult']))"
        )
    if arr.shape[:2] != (h, w):
        res = _no_inverse(res)
    return arr, res


# ------------------------------------------------------------------------------------ box filters
class BoxFilter:
    """Which boxes to keep after a geometric op (Keras ``BoxFilter``), continuous coordinates.

    Args:
        check_overlap: apply ``overlap_criterion``.
        check_min_area: keep boxes with ``area >= min_area`` (before clipping, as Keras).
        check_degenerate: keep boxes with ``xmax > xmin`` and ``ymax > ymin``.
        overlap_criterion: ``'center_point'`` (centre inside ``[0, W] x [0, H]``), ``'iou'`` (IoU of
            box and image in ``(lower, upper]``) or ``'area'`` (fraction of the box area inside the
            image in ``[lower, upper]``, ``> 0`` when ``lower == 0``).
        overlap_bounds: ``(lower, upper)``.
        min_area: in pixels.
    """

    def __init__(
        self,
        check_overlap: bool = True,
        check_min_area: bool = True,
        check_degenerate: bool = True,
        overlap_criterion: str = "center_point",
        overlap_bounds: tuple[float, float] = (0.3, 1.0),
        min_area: float = 16,
    ) -> None:
        if overlap_criterion not in ("center_point", "iou", "area"):
            raise ValueError(f"overlap_criterion must be 'center_point', 'iou' or 'area', got {overlap_criterion!r}")
        lo, hi = overlap_bounds
        if lo > hi:
            raise ValueError(f"overlap_bounds: lower {lo} > upper {hi}")
        self.check_overlap = check_overlap
        self.check_min_area = check_min_area
        self.check_degenerate = check_degenerate
        self.overlap_criterion = overlap_criterion
        self.overlap_bounds = (float(lo), float(hi))
        self.min_area = float(min_area)

    def mask(self, boxes: np.ndarray, height: float, width: float,
             bounds: tuple[float, float] | None = None) -> np.ndarray:
        """``bool [G]``: which of ``boxes`` (in the coordinates of a ``height x width`` image) pass."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        ok = np.ones(len(b), dtype=bool)
        if self.check_degenerate:
            ok &= (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        if self.check_min_area:
            ok &= (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) >= self.min_area
        if self.check_overlap:
            ok &= overlap_mask(b, height, width, self.overlap_criterion, bounds or self.overlap_bounds)
        return ok

    def __call__(self, target: Target, height: float, width: float) -> Target:
        return _select(target, self.mask(_boxes(target), height, width))

    def __repr__(self) -> str:
        return (f"BoxFilter(check_overlap={self.check_overlap}, check_min_area={self.check_min_area}, "
                f"check_degenerate={self.check_degenerate}, overlap_criterion={self.overlap_criterion!r}, "
                f"overlap_bounds={self.overlap_bounds}, min_area={self.min_area:g})")


def overlap_mask(b: np.ndarray, height: float, width: float, criterion: str, bounds: tuple[float, float]) -> np.ndarray:
    """The overlap test of :class:`BoxFilter` for boxes ``b [..., G, 4]`` and an image ``[0, W] x [0, H]``.

    ``height``/``width`` may be arrays broadcasting against ``b[..., 0]`` (one patch per row).
    """
    lo, hi = bounds
    h = np.asarray(height, dtype=np.float64)
    w = np.asarray(width, dtype=np.float64)
    if criterion == "center_point":
        cx = (b[..., 0] + b[..., 2]) / 2
        cy = (b[..., 1] + b[..., 3]) / 2
        return (cx >= 0) & (cx <= w) & (cy >= 0) & (cy <= h)
    area = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    iw = np.clip(np.minimum(b[..., 2], w) - np.maximum(b[..., 0], 0), 0, None)
    ih = np.clip(np.minimum(b[..., 3], h) - np.maximum(b[..., 1], 0), 0, None)
    inter = iw * ih
    if criterion == "iou":
        union = area + w * h - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        return (iou > lo) & (iou <= hi)
    lower = inter > lo * area if lo == 0.0 else inter >= lo * area
    return lower & (inter <= hi * area)


class ImageValidator:
    """Whether a patch is a valid training image: at least ``n_boxes_min`` boxes (or ``'all'``)
    meet ``overlap_criterion`` within ``bounds`` (Keras ``ImageValidator``). No boxes -> invalid."""

    def __init__(self, overlap_criterion: str = "center_point", bounds: tuple[float, float] = (0.3, 1.0),
                 n_boxes_min: int | str = 1) -> None:
        if not ((isinstance(n_boxes_min, int) and n_boxes_min > 0) or n_boxes_min == "all"):
            raise ValueError(f"n_boxes_min must be a positive int or 'all', got {n_boxes_min!r}")
        self.filter = BoxFilter(True, False, False, overlap_criterion, bounds)
        self.n_boxes_min = n_boxes_min

    def valid(self, boxes: np.ndarray, height: Any, width: Any, bounds: tuple[float, float] | None = None) -> Any:
        """``boxes [..., G, 4]`` in patch coordinates; ``height``/``width`` scalars or per-row arrays."""
        m = overlap_mask(np.asarray(boxes, dtype=np.float64), height, width, self.filter.overlap_criterion,
                         bounds or self.filter.overlap_bounds)
        n = m.sum(axis=-1)
        g = m.shape[-1]
        return (n == g) & (g > 0) if self.n_boxes_min == "all" else n >= self.n_boxes_min

    def __call__(self, boxes: np.ndarray, height: float, width: float) -> bool:
        return bool(self.valid(boxes, height, width))

    def __repr__(self) -> str:
        return (f"ImageValidator(overlap_criterion={self.filter.overlap_criterion!r}, "
                f"bounds={self.filter.overlap_bounds}, n_boxes_min={self.n_boxes_min!r})")


class FilterBoxes(Transform):
    """Apply a :class:`BoxFilter` (default: drop degenerate boxes only) against the current image size."""

    def __init__(self, box_filter: BoxFilter | None = None) -> None:
        self.box_filter = box_filter or BoxFilter(check_overlap=False, check_min_area=False, check_degenerate=True)

    def apply(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        return image, self.box_filter(target, image.shape[0], image.shape[1])


# ------------------------------------------------------------------------------------ photometric
# float32 like the Keras ops (a float32 image with Python-float parameters stays float32), so the tables
# reproduce them bit for bit, rounding of exact .5 values included.
_ID = np.arange(256, dtype=np.float32)


def _lut_u8(x: np.ndarray) -> np.ndarray:
    return np.round(x).astype(np.uint8)


def _bc_lut(delta: float | None, factor: float | None) -> np.ndarray:
    """Keras brightness (``clip(x + delta)``) then contrast (``clip(127.5 + f (x - 127.5))``), rounded once."""
    x = _ID
    if delta is not None:
        x = np.clip(x + float(delta), 0, 255)
    if factor is not None:
        x = np.clip(127.5 + float(factor) * (x - 127.5), 0, 255)
    return _lut_u8(x)


def _hsv_lut(hue: float | None, sat: float | None, equalize_v: np.ndarray | None = None) -> np.ndarray:
    h = _lut_u8(np.mod(_ID + float(hue), 180.0)) if hue is not None else _ID.astype(np.uint8)
    s = _lut_u8(np.clip(_ID * float(sat), 0, 255)) if sat is not None else _ID.astype(np.uint8)
    v = equalize_v if equalize_v is not None else _ID.astype(np.uint8)
    return np.stack([h, s, v], axis=-1).reshape(256, 1, 3)


def _lut(image: np.ndarray, lut: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.LUT(image, lut)


def _hsv_apply(image: np.ndarray, hue: float | None, sat: float | None) -> np.ndarray:
    import cv2

    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv = cv2.LUT(hsv, _hsv_lut(hue, sat))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _draw(rng: np.random.Generator, p: float, lo: float, hi: float) -> float | None:
    """With probability ``p`` a uniform draw in ``[lo, hi)``, else ``None`` (two draws either way)."""
    fire = rng.random() < p
    v = rng.uniform(lo, hi)
    return float(v) if fire else None


class _RandomValue(Transform):
    """With probability ``p``, draw a value uniform in ``[lower, upper)`` and apply :meth:`change`."""

    positive = True

    def __init__(self, lower: float, upper: float, p: float = 0.5) -> None:
        if lower >= upper or (self.positive and lower <= 0):
            raise ValueError(f"{type(self).__name__}: need {'0 < ' if self.positive else ''}lower < upper, "
                             f"got ({lower}, {upper})")
        self.lower, self.upper, self.p = float(lower), float(upper), float(p)

    def change(self, image: np.ndarray, value: float) -> np.ndarray:
        raise NotImplementedError

    def apply(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        v = _draw(rng, self.p, self.lower, self.upper)
        return (image if v is None else self.change(image, v)), target


class RandomBrightness(_RandomValue):
    """Add a uniform ``delta`` in ``[lower, upper)`` to every channel, clip to ``[0, 255]`` (probability ``p``)."""

    positive = False

    def __init__(self, lower: float = -84, upper: float = 84, p: float = 0.5) -> None:
        super().__init__(lower, upper, p)

    def change(self, image: np.ndarray, value: float) -> np.ndarray:
        return _lut(image, _bc_lut(value, None))


class RandomContrast(_RandomValue):
    """``127.5 + f (x - 127.5)`` with ``f`` uniform in ``[lower, upper)``, clipped (probability ``p``)."""

    def __init__(self, lower: float = 0.5, upper: float = 1.5, p: float = 0.5) -> None:
        super().__init__(lower, upper, p)

    def change(self, image: np.ndarray, value: float) -> np.ndarray:
        return _lut(image, _bc_lut(None, value))


class RandomSaturation(_RandomValue):
    """Scale the HSV saturation by ``f`` uniform in ``[lower, upper)``, clipped (probability ``p``)."""

    def __init__(self, lower: float = 0.3, upper: float = 2.0, p: float = 0.5) -> None:
        super().__init__(lower, upper, p)

    def change(self, image: np.ndarray, value: float) -> np.ndarray:
        return _hsv_apply(image, None, value)


class RandomHue(_RandomValue):
    """Shift the OpenCV hue (0..180, i.e. 2 degrees per unit) by a uniform ``delta`` in ``[-max_delta, max_delta)``."""

    positive = False

    def __init__(self, max_delta: float = 18, p: float = 0.5) -> None:
        if not 0 < max_delta <= 180:
            raise ValueError("max_delta must be in (0, 180]")
        super().__init__(-max_delta, max_delta, p)
        self.max_delta = float(max_delta)

    def change(self, image: np.ndarray, value: float) -> np.ndarray:
        return _hsv_apply(image, value, None)


class RandomGamma(_RandomValue):
    """Gamma curve ``255 (x / 255) ** (1 / gamma)`` (truncated to uint8, as Keras), ``gamma`` uniform in
    ``[lower, upper)``."""

    def __init__(self, lower: float = 0.25, upper: float = 2.0, p: float = 0.5) -> None:
        super().__init__(lower, upper, p)

    def change(self, image: np.ndarray, value: float) -> np.ndarray:
        return _lut(image, ((_ID / 255.0) ** (1.0 / value) * 255).astype(np.uint8))


class RandomHistogramEqualization(Transform):
    """Equalise the HSV value channel (Keras ``HistogramEqualization``) with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def apply(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        if rng.random() >= self.p:
            return image, target
        import cv2

        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[:, :, 2] = cv2.equalizeHist(np.ascontiguousarray(hsv[:, :, 2]))
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), target


_SWAPS = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


class RandomChannelSwap(Transform):
    """Permute the channels with one of the 5 non-identity orders (probability ``p``)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def apply(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        fire = rng.random() < self.p
        k = int(rng.integers(len(_SWAPS)))
        return (np.ascontiguousarray(image[:, :, list(_SWAPS[k])]) if fire else image), target


class PhotometricDistort(Transform):
    """The SSD photometric distortions as one op, computed with lookup tables.

    Equivalent to the Keras sequences (``SSDPhotometricDistortions`` and the first part of the other
    chains): brightness then contrast in float, rounded to uint8; saturation and hue in HSV
    (OpenCV 8-bit HSV, hue in 0..180); or, in the second order, contrast after the HSV part.
    Each of the four fires independently with its probability. Because each step is a per-value
    function of a uint8 channel, 256-entry tables computed in float32 reproduce the Keras float32
    arithmetic bit for bit, at a fraction of the cost.

    Args:
        brightness: ``(lower, upper, p)``.
        contrast: ``(lower, upper, p)``.
        saturation: ``(lower, upper, p)``.
        hue: ``(max_delta, p)``.
        channel_swap: probability of a random channel permutation at the end (0 in SSD).
        order: ``'random'`` (each order with probability 1/2, the SSD chain), ``'contrast_first'``
            or ``'contrast_last'``.
    """

    def __init__(
        self,
        brightness: tuple[float, float, float] = (-32, 32, 0.5),
        contrast: tuple[float, float, float] = (0.5, 1.5, 0.5),
        saturation: tuple[float, float, float] = (0.5, 1.5, 0.5),
        hue: tuple[float, float] = (18, 0.5),
        channel_swap: float = 0.0,
        order: str = "random",
    ) -> None:
        if order not in ("random", "contrast_first", "contrast_last"):
            raise ValueError(f"order must be 'random', 'contrast_first' or 'contrast_last', got {order!r}")
        for nm, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if len(v) != 3 or v[0] >= v[1]:
                raise ValueError(f"{nm} must be (lower, upper, p) with lower < upper, got {v}")
        if len(hue) != 2:
            raise ValueError(f"hue must be (max_delta, p), got {hue}")
        self.brightness = tuple(float(x) for x in brightness)
        self.contrast = tuple(float(x) for x in contrast)
        self.saturation = tuple(float(x) for x in saturation)
        self.hue = tuple(float(x) for x in hue)
        self.channel_swap = float(channel_swap)
        self.order = order

    def apply(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        first = self.order == "contrast_first" or (self.order == "random" and rng.random() < 0.5)
        b_lo, b_hi, b_p = self.brightness
        c_lo, c_hi, c_p = self.contrast
        s_lo, s_hi, s_p = self.saturation
        h_max, h_p = self.hue
        d = _draw(rng, b_p, b_lo, b_hi)
        c = _draw(rng, c_p, c_lo, c_hi)
        s = _draw(rng, s_p, s_lo, s_hi)
        h = _draw(rng, h_p, -h_max, h_max)
        cf = c if first else None
        img = image if d is None and cf is None else _lut(image, _bc_lut(d, cf))
        if s is not None or h is not None:
            img = _hsv_apply(img, h, s)
        if not first and c is not None:
            img = _lut(img, _bc_lut(None, c))
        if self.channel_swap > 0:
            img, target = RandomChannelSwap(self.channel_swap).apply(img, target, rng)
        return img, target


# ------------------------------------------------------------------------------------ geometric
def _pair(size: SizeLike) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def _interp(mode: Any) -> int:
    if isinstance(mode, (int, np.integer)):
        return int(mode)
    try:
        return INTERPOLATIONS[str(mode).lower()]
    except KeyError:
        raise ValueError(f"unknown interpolation {mode!r}; use one of {sorted(INTERPOLATIONS)}") from None


def _bg(background: Color) -> tuple[int, int, int]:
    if isinstance(background, (int, float, np.integer, np.floating)):
        v = round(float(background))
        return (v, v, v)
    vals = tuple(round(float(v)) for v in background)
    if len(vals) != 3:
        raise ValueError(f"background must be one value or an (R, G, B) triple, got {background!r}")
    return vals  # type: ignore[return-value]


def _snap(boxes: np.ndarray, w: float, h: float) -> np.ndarray:
    """Move coordinates that exceed ``[0, w] x [0, h]`` by float rounding only (1e-5 relative) onto the border."""
    lim = np.array([w, h, w, h], dtype=np.float32)
    over = (boxes > lim) & (boxes <= lim * (1 + 1e-5))
    under = (boxes < 0) & (boxes >= -1e-5 * lim)
    if over.any() or under.any():
        boxes = np.where(over, lim, np.where(under, 0, boxes)).astype(np.float32)
    return boxes


class Resize(Transform):
    """Resize to ``size`` ``(H, W)`` (or square), scaling the boxes; deterministic unless several
    ``interpolation`` modes are given (then one is drawn per image, Keras ``ResizeRandomInterp``).

    Args:
        size: output ``H`` or ``(H, W)``.
        interpolation: ``'nearest' | 'linear' | 'cubic' | 'area' | 'lanczos'`` (OpenCV), or a list to draw from.
        box_filter: optional :class:`BoxFilter` applied after resizing.
        round_boxes: round the resized coordinates to integers (what the Keras ``Resize`` did).
    """

    def __init__(self, size: SizeLike, interpolation: str | int | Sequence[str | int] = "linear",
                 box_filter: BoxFilter | None = None, round_boxes: bool = False) -> None:
        self.size = _pair(size)
        modes = [interpolation] if isinstance(interpolation, (str, int)) else list(interpolation)
        self.interpolation = [_interp(m) for m in modes]
        self.box_filter = box_filter
        self.round_boxes = bool(round_boxes)

    def apply(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        import cv2

        oh, ow = self.size
        h, w = image.shape[:2]
        mode = (self.interpolation[0] if len(self.interpolation) == 1
                else self.interpolation[int(rng.integers(len(self.interpolation)))])
        if (h, w) != (oh, ow):
            image = cv2.resize(image, (ow, oh), interpolation=mode)
        sx, sy = ow / w, oh / h
        boxes = _boxes(target) * np.array([sx, sy, sx, sy], dtype=np.float32)
        boxes = _snap(boxes, ow, oh)
        if self.round_boxes:
            boxes = np.round(boxes)
        target = _affine(_set_boxes(target, boxes), sx, sy, 0.0, 0.0)
        if self.box_filter is not None:
            target = self.box_filter(target, oh, ow)
        return image, target


def _flip(image: np.ndarray, target: Target, horizontal: bool) -> tuple[np.ndarray, Target]:
    import cv2

    h, w = image.shape[:2]
    b = _boxes(target)
    if horizontal:
        nb = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], axis=1)
        return cv2.flip(image, 1), _affine(_set_boxes(target, nb), -1.0, 1.0, float(w), 0.0)
    nb = np.stack([b[:, 0], h - b[:, 3], b[:, 2], h - b[:, 1]], axis=1)
    return cv2.flip(image, 0), _affine(_set_boxes(target, nb), 1.0, -1.0, 0.0, float(h))


class Flip(Transform):
    """Flip ``'horizontal'`` (``x -> W - x``) or ``'vertical'``, deterministically."""

    def __init__(self, direction: str = "horizontal") -> None:
        if direction not in ("horizontal", "vertical"):
            raise ValueError("direction must be 'horizontal' or 'vertical'")
        self.direction = direction

    def apply(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        return _flip(image, target, self.direction == "horizontal")


class RandomFlip(Flip):
    """Flip with probability ``p``."""

    def __init__(self, p: float = 0.5, direction: str = "horizontal") -> None:
        super().__init__(direction)
        self.p = float(p)

    def apply(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        if rng.random() < self.p:
            return _flip(image, target, self.direction == "horizontal")
        return image, target


def crop_pad(image: np.ndarray, top: int, left: int, height: int, width: int,
             background: tuple[int, int, int]) -> np.ndarray:
    """The ``height x width`` patch whose top-left corner is ``(top, left)`` in image pixels; parts
    outside the image are ``background``. A patch inside the image is a view (no copy)."""
    import cv2

    h, w = image.shape[:2]
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + height, h), min(left + width, w)
    if top >= 0 and left >= 0 and top + height <= h and left + width <= w:
        return image[top:top + height, left:left + width]
    if y1 <= y0 or x1 <= x0:
        out = np.empty((height, width, 3), dtype=np.uint8)
        out[:] = background
        return out
    return cv2.copyMakeBorder(
        np.ascontiguousarray(image[y0:y1, x0:x1]), y0 - top, top + height - y1, x0 - left, left + width - x1,
        cv2.BORDER_CONSTANT, value=background,
    )


def _patch(image: np.ndarray, target: Target, top: int, left: int, height: int, width: int,
           background: tuple[int, int, int], box_filter: BoxFilter | None, clip: bool) -> tuple[np.ndarray, Target]:
    """Crop/pad and move the boxes into the patch; filter, then clip (the Keras ``CropPad`` order)."""
    out = crop_pad(image, top, left, height, width, background)
    b = _boxes(target) - np.array([left, top, left, top], dtype=np.float32)
    target = _affine(_set_boxes(target, b), 1.0, 1.0, float(-left), float(-top))
    if box_filter is not None:
        target = box_filter(target, height, width)
    if clip:
        target = _clip(target, width, height)
    return out, target


def _clip(target: Target, width: float, height: float) -> Target:
    """Clip boxes to the image; boxes left with no area (they were entirely outside) are dropped."""
    b = np.clip(_boxes(target), 0, [width, height, width, height])
    was_ok = (_boxes(target)[:, 2] > _boxes(target)[:, 0]) & (_boxes(target)[:, 3] > _boxes(target)[:, 1])
    now_bad = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    return _select(_set_boxes(target, b), ~(was_ok & now_bad))


class CropPad(Transform):
    """Deterministic crop and/or pad: the ``height x width`` patch at ``(top, left)`` (may stick out of
    the image; the outside is ``background``). Boxes are moved, filtered and clipped."""

    def __init__(self, top: int, left: int, height: int, width: int, clip_boxes: bool = True,
                 box_filter: BoxFilter | None = None, background: Color = (0, 0, 0)) -> None:
        self.top, self.left, self.height, self.width = int(top), int(left), int(height), int(width)
        self.clip_boxes, self.box_filter, self.background = clip_boxes, box_filter, _bg(background)

    def apply(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        return _patch(image, target, self.top, self.left, self.height, self.width, self.background,
                      self.box_filter, self.clip_boxes)


class PadToAspect(Transform):
    """Pad (never crop) to the aspect ratio ``W / H`` of ``aspect`` (a number or an ``(H, W)`` size),
    with the image at the top-left (``position='top_left'``) or centred. Deterministic."""

    def __init__(self, aspect: float | Sequence[int], background: Color = (0, 0, 0), position: str = "center") -> None:
        if position not in ("center", "top_left"):
            raise ValueError("position must be 'center' or 'top_left'")
        self.aspect = float(aspect) if isinstance(aspect, (int, float)) else float(aspect[1]) / float(aspect[0])
        self.background, self.position = _bg(background), position

    def apply(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        h, w = image.shape[:2]
        if w / h < self.aspect:
            ph, pw = h, round(h * self.aspect)
        else:
            ph, pw = round(w / self.aspect), w
        if (ph, pw) == (h, w):
            return image, target
        top, left = (0, 0) if self.position == "top_left" else (-((ph - h) // 2), -((pw - w) // 2))
        return _patch(image, target, top, left, ph, pw, self.background, None, False)


class _Trials(Transform):
    """Keras trial loop: with probability ``p``, up to ``n_trials`` proposals; the first whose moved boxes
    ``image_validator`` accepts (any, without a validator) is executed, otherwise the input is returned."""

    p: float
    n_trials: int
    image_validator: ImageValidator | None

    def propose(self, rng: np.random.Generator, h: int, w: int) -> Any:
        """A random proposal, or ``None`` to spend the trial."""
        raise NotImplementedError

    def preview(self, boxes: np.ndarray, prop: Any, h: int, w: int) -> tuple[np.ndarray, int, int]:
        """The boxes as they would be after ``prop`` and the output ``(height, width)``."""
        raise NotImplementedError

    def execute(self, image: np.ndarray, target: Target, prop: Any) -> tuple[np.ndarray, Target]:
        raise NotImplementedError

    def apply(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        if rng.random() >= self.p:
            return image, target
        h, w = image.shape[:2]
        b = _boxes(target)
        for _ in range(max(1, self.n_trials)):
            prop = self.propose(rng, h, w)
            if prop is None:
                continue
            if self.image_validator is not None and not self.image_validator(*self.preview(b, prop, h, w)):
                continue
            return self.execute(image, target, prop)
        return image, target


class RandomTranslate(_Trials):
    """Translate by a fraction of the image size (Keras ``RandomTranslate``), probability ``p``.

    The amounts ``|dy|`` in ``dy_minmax`` and ``|dx|`` in ``dx_minmax`` are uniform, each direction
    random; up to ``n_trials`` draws until ``image_validator`` accepts the moved boxes (else the input is
    returned). The uncovered area is ``background``; boxes are filtered by ``box_filter``, then clipped.
    """

    def __init__(self, dy_minmax: tuple[float, float] = (0.03, 0.3), dx_minmax: tuple[float, float] = (0.03, 0.3),
                 p: float = 0.5, clip_boxes: bool = True, box_filter: BoxFilter | None = None,
                 image_validator: ImageValidator | None = None, n_trials: int = 3,
                 background: Color = (0, 0, 0)) -> None:
        self.dy_minmax = (float(dy_minmax[0]), float(dy_minmax[1]))
        self.dx_minmax = (float(dx_minmax[0]), float(dx_minmax[1]))
        self.p, self.clip_boxes, self.box_filter = float(p), clip_boxes, box_filter
        self.image_validator, self.n_trials, self.background = image_validator, int(n_trials), _bg(background)

    def propose(self, rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int]:
        dy = rng.uniform(*self.dy_minmax) * (1 if rng.random() < 0.5 else -1)
        dx = rng.uniform(*self.dx_minmax) * (1 if rng.random() < 0.5 else -1)
        return round(h * dy), round(w * dx), h, w

    def preview(self, boxes: np.ndarray, prop: Any, h: int, w: int) -> tuple[np.ndarray, int, int]:
        ty, tx = prop[:2]
        return boxes + np.array([tx, ty, tx, ty], np.float32), h, w

    def execute(self, image: np.ndarray, target: Target, prop: Any) -> tuple[np.ndarray, Target]:
        ty, tx, h, w = prop
        return _patch(image, target, -ty, -tx, h, w, self.background, self.box_filter, self.clip_boxes)


class RandomScale(_Trials):
    """Zoom about the image centre by ``f`` uniform in ``[min_factor, max_factor)`` keeping the size
    (Keras ``RandomScale``: ``f > 1`` zooms in, ``f < 1`` out onto ``background``), probability ``p``,
    up to ``n_trials`` draws until ``image_validator`` accepts; boxes filtered then clipped."""

    def __init__(self, min_factor: float = 0.5, max_factor: float = 1.5, p: float = 0.5, clip_boxes: bool = True,
                 box_filter: BoxFilter | None = None, image_validator: ImageValidator | None = None,
                 n_trials: int = 3, background: Color = (0, 0, 0)) -> None:
        if not 0 < min_factor < max_factor:
            raise ValueError("need 0 < min_factor < max_factor")
        self.min_factor, self.max_factor, self.p = float(min_factor), float(max_factor), float(p)
        self.clip_boxes, self.box_filter, self.image_validator = clip_boxes, box_filter, image_validator
        self.n_trials, self.background = int(n_trials), _bg(background)

    def propose(self, rng: np.random.Generator, h: int, w: int) -> float:
        return float(rng.uniform(self.min_factor, self.max_factor))

    @staticmethod
    def _moved(boxes: np.ndarray, f: float, h: int, w: int) -> tuple[np.ndarray, float, float]:
        bx, by = (1 - f) * w / 2, (1 - f) * h / 2
        return boxes * f + np.array([bx, by, bx, by], dtype=np.float32), bx, by

    def preview(self, boxes: np.ndarray, prop: Any, h: int, w: int) -> tuple[np.ndarray, int, int]:
        return self._moved(boxes, prop, h, w)[0], h, w

    def execute(self, image: np.ndarray, target: Target, prop: Any) -> tuple[np.ndarray, Target]:
        import cv2

        h, w = image.shape[:2]
        f = prop
        nb, bx, by = self._moved(_boxes(target), f, h, w)
        # Continuous coordinates: pixel centres sit at i + 0.5, so the index-space matrix is
        # x_idx' = f x_idx + (f - 1) / 2 + bx.
        m = np.array([[f, 0, bx + (f - 1) / 2], [0, f, by + (f - 1) / 2]], dtype=np.float64)
        out = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=self.background)
        t = _affine(_set_boxes(target, nb), f, f, bx, by)
        if self.box_filter is not None:
            t = self.box_filter(t, h, w)
        if self.clip_boxes:
            t = _clip(t, w, h)
        return out, t


class RandomRotate(Transform):
    """Rotate counter-clockwise by an angle drawn from ``angles`` (multiples of 90) with probability ``p``; exact."""

    def __init__(self, angles: Sequence[int] = (90, 180, 270), p: float = 0.5) -> None:
        if any(a % 90 for a in angles) or not angles:
            raise ValueError(f"angles must be multiples of 90, got {angles}")
        self.angles, self.p = [int(a) % 360 for a in angles], float(p)

    def apply(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        fire = rng.random() < self.p
        a = self.angles[int(rng.integers(len(self.angles)))]
        if not fire or a == 0:
            return image, target
        import cv2

        h, w = image.shape[:2]
        b = _boxes(target)
        if a == 180:
            nb = np.stack([w - b[:, 2], h - b[:, 3], w - b[:, 0], h - b[:, 1]], axis=1)
            return cv2.rotate(image, cv2.ROTATE_180), _affine(_set_boxes(target, nb), -1, -1, float(w), float(h))
        if a == 90:  # (x, y) -> (y, W - x)
            nb = np.stack([b[:, 1], w - b[:, 2], b[:, 3], w - b[:, 0]], axis=1)
            out = cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
        else:  # 270: (x, y) -> (H - y, x)
            nb = np.stack([h - b[:, 3], b[:, 0], h - b[:, 1], b[:, 2]], axis=1)
            out = cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
        return out, _no_inverse(_set_boxes(target, nb))


def _position(rng: np.random.Generator, size: int, patch: int) -> int:
    """Keras ``PatchCoordinateGenerator`` placement: inside the image, or containing it when larger."""
    r = size - patch
    return int(rng.integers(0, r + 1)) if r >= 0 else int(rng.integers(r, 1))


def _positions(rng: np.random.Generator, size: int, patch: np.ndarray) -> np.ndarray:
    """Vectorised :func:`_position` for several patch sizes."""
    r = size - patch
    return rng.integers(np.minimum(r, 0), np.maximum(r, 0) + 1)


class RandomExpand(Transform):
    """Zoom out: place the image on a ``background`` canvas ``s`` times larger (``s`` uniform in
    ``[min_scale, max_scale)``, both sides), at a random position; probability ``p`` (Keras ``SSDExpand``)."""

    def __init__(self, min_scale: float = 1.0, max_scale: float = 4.0, p: float = 0.5,
                 background: Color = (123, 117, 104)) -> None:
        if not 1.0 <= min_scale < max_scale:
            raise ValueError("need 1 <= min_scale < max_scale")
        self.min_scale, self.max_scale, self.p, self.background = (
            float(min_scale), float(max_scale), float(p), _bg(background))

    def apply(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        if rng.random() >= self.p:
            return image, target
        h, w = image.shape[:2]
        s = rng.uniform(self.min_scale, self.max_scale)
        ph, pw = int(s * h), int(s * w)
        top, left = _position(rng, h, ph), _position(rng, w, pw)
        return _patch(image, target, top, left, ph, pw, self.background, None, False)


class SSDRandomCrop(Transform):
    """The SSD IoU-constrained random crop (Keras ``SSDRandomCrop`` / ``RandomPatchInf``).

    With probability ``1 - p`` the image is returned unchanged; otherwise a minimum IoU bound is
    drawn from ``bounds`` (``None`` = 0) and up to ``n_trials`` patches are drawn (each side
    ``[min_scale, max_scale)`` of the image independently, aspect ``W/H`` within
    ``[min_aspect_ratio, max_aspect_ratio]``); the first patch whose IoU with at least one box lies in
    ``(lower, upper]`` is taken: boxes whose centre is outside are dropped, the rest clipped. If all
    trials fail, a new bound is drawn (and the coin for ``p`` tossed again), as in Keras, for at most
    ``max_rounds`` rounds (Keras looped forever when no patch could satisfy any bound and ``p=1``).
    An image without boxes is returned unchanged (Keras loops until the coin says so: same result).
    """

    def __init__(self, min_scale: float = 0.3, max_scale: float = 1.0, min_aspect_ratio: float = 0.5,
                 max_aspect_ratio: float = 2.0,
                 bounds: Sequence[tuple[float | None, float | None]] = ((None, None), (0.1, None), (0.3, None),
                                                                          (0.5, None), (0.7, None), (0.9, None)),
                 n_trials: int = 50, p: float = 0.857, clip_boxes: bool = True, max_rounds: int = 100) -> None:
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.max_rounds = int(max_rounds)
        self.min_aspect_ratio, self.max_aspect_ratio = float(min_aspect_ratio), float(max_aspect_ratio)
        self.bounds = [(0.0 if lo is None else float(lo), 1.0 if hi is None else float(hi)) for lo, hi in bounds]
        self.n_trials, self.p, self.clip_boxes = int(n_trials), float(p), clip_boxes
        self.box_filter = BoxFilter(True, False, False, "center_point")
        self.validator = ImageValidator("iou", (0.0, 1.0), 1)

    def apply(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[np.ndarray, Target]:
        b = _boxes(target)
        if len(b) == 0 or self.p <= 0:
            return image, target
        h, w = image.shape[:2]
        for _ in range(self.max_rounds):  # Keras loops until success or the coin says stop (forever at p=1)
            if rng.random() >= self.p:
                return image, target
            lo, hi = self.bounds[int(rng.integers(len(self.bounds)))]
            n = max(1, self.n_trials)
            ph = (rng.uniform(self.min_scale, self.max_scale, n) * h).astype(np.int64)
            pw = (rng.uniform(self.min_scale, self.max_scale, n) * w).astype(np.int64)
            ys, xs = _positions(rng, h, ph), _positions(rng, w, pw)
            with np.errstate(divide="ignore", invalid="ignore"):
                ar = pw / ph
            ok = (ph > 0) & (pw > 0) & (ar >= self.min_aspect_ratio) & (ar <= self.max_aspect_ratio)
            shifted = b[None, :, :] - np.stack([xs, ys, xs, ys], axis=1)[:, None, :].astype(np.float32)
            ok &= self.validator.valid(shifted, ph[:, None], pw[:, None], (lo, hi))
            idx = np.flatnonzero(ok)
            if len(idx):
                k = int(idx[0])
                return _patch(image, target, int(ys[k]), int(xs[k]), int(ph[k]), int(pw[k]), (0, 0, 0),
                              self.box_filter, self.clip_boxes)
        return image, target


class RandomPatch(_Trials):
    """Sample a random patch (crop and/or pad) meeting a validator (Keras ``RandomPatch``).

    Patch shape (Keras ``PatchCoordinateGenerator``): ``must_match='h_w'`` draws both sides in
    ``[min_scale, max_scale)`` of the image (independently, or the same factor with
    ``scale_uniformly``); ``'h_ar'`` draws the height and an aspect ratio ``W/H`` in
    ``[min_aspect_ratio, max_aspect_ratio)``; ``'w_ar'`` the width and the aspect ratio. Scales above
    1 pad with ``background``. Up to ``n_trials`` patches; the first that ``image_validator`` accepts
    is used (any patch when there is no validator); otherwise the input is returned. Probability ``p``.
    """

    def __init__(self, must_match: str = "h_w", min_scale: float = 0.3, max_scale: float = 1.0,
                 scale_uniformly: bool = False, min_aspect_ratio: float = 0.5, max_aspect_ratio: float = 2.0,
                 box_filter: BoxFilter | None = None, image_validator: ImageValidator | None = None,
                 n_trials: int = 3, clip_boxes: bool = True, p: float = 1.0, background: Color = (0, 0, 0)) -> None:
        if must_match not in ("h_w", "h_ar", "w_ar"):
            raise ValueError("must_match must be 'h_w', 'h_ar' or 'w_ar'")
        if min_scale >= max_scale or min_aspect_ratio >= max_aspect_ratio:
            raise ValueError("need min_scale < max_scale and min_aspect_ratio < max_aspect_ratio")
        self.must_match, self.min_scale, self.max_scale = must_match, float(min_scale), float(max_scale)
        self.scale_uniformly = scale_uniformly
        self.min_aspect_ratio, self.max_aspect_ratio = float(min_aspect_ratio), float(max_aspect_ratio)
        self.box_filter, self.image_validator, self.n_trials = box_filter, image_validator, int(n_trials)
        self.clip_boxes, self.p, self.background = clip_boxes, float(p), _bg(background)

    def _shape(self, rng: np.random.Generator, h: int, w: int) -> tuple[int, int]:
        if self.must_match == "h_w":
            if self.scale_uniformly:
                f = rng.uniform(self.min_scale, self.max_scale)
                return int(f * h), int(f * w)
            return (int(rng.uniform(self.min_scale, self.max_scale) * h),
                    int(rng.uniform(self.min_scale, self.max_scale) * w))
        if self.must_match == "h_ar":
            ph = int(rng.uniform(self.min_scale, self.max_scale) * h)
            return ph, int(ph * rng.uniform(self.min_aspect_ratio, self.max_aspect_ratio))
        pw = int(rng.uniform(self.min_scale, self.max_scale) * w)
        return int(pw / rng.uniform(self.min_aspect_ratio, self.max_aspect_ratio)), pw

    def propose(self, rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int] | None:
        ph, pw = self._shape(rng, h, w)
        top, left = _position(rng, h, ph), _position(rng, w, pw)
        return (top, left, ph, pw) if ph >= 1 and pw >= 1 else None

    def preview(self, boxes: np.ndarray, prop: Any, h: int, w: int) -> tuple[np.ndarray, int, int]:
        top, left, ph, pw = prop
        return boxes - np.array([left, top, left, top], np.float32), ph, pw

    def execute(self, image: np.ndarray, target: Target, prop: Any) -> tuple[np.ndarray, Target]:
        top, left, ph, pw = prop
        return _patch(image, target, top, left, ph, pw, self.background, self.box_filter, self.clip_boxes)
