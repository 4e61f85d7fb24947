"""SSD anchor (default/prior) boxes, exactly as the Keras SSD ``AnchorBoxes`` / ``SSDInputEncoder``.

See ``docs/core.md`` and the reference semantics, section 1. The anchors are computed in float64 and returned in
the requested dtype, so two generators with the same parameters give bit-identical anchors on
any device.

Example::

    >>> gen = AnchorGenerator.preset("ssd300_voc")
    >>> gen.num_anchors
    8732
    >>> gen.anchors()[0]            # (cx, cy, w, h), normalised
    tensor([0.0133, 0.0133, 0.1000, 0.1000])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["PRESETS", "AnchorGenerator", "SizeLike"]  # plus the lazy analysis names in _ANALYSIS

_ANALYSIS = ("coverage", "fit_anchors", "CoverageReport", "FitResult", "best_anchor_iou", "plot_anchor_coverage")


def __getattr__(name: str) -> object:
    # the analysis tools live in ssdkit.anchor_analysis (they need the encoder, which needs this module)
    if name in _ANALYSIS:
        from . import anchor_analysis

        return getattr(anchor_analysis, name)
    raise AttributeError(f"module 'ssdkit.anchors' has no attribute {name!r}")

SizeLike = int | Sequence[int]
_Pair = float | Sequence[float] | None


def _pair(value: SizeLike, what: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int or an (H, W) pair, got {value!r}")
    if isinstance(value, int | float):
        if int(value) != value:
            raise ValueError(f"{what} must be whole numbers, got {value!r}")
        return int(value), int(value)
    vals = tuple(value)
    if len(vals) != 2:
        raise ValueError(f"{what} must be an int or an (H, W) pair, got {value!r}")
    if any(int(v) != v for v in vals):
        raise ValueError(f"{what} must be whole numbers, got {value!r}")
    return int(vals[0]), int(vals[1])


def _per_layer_pair(values: Sequence[_Pair] | None, n_layers: int, what: str) -> list[tuple[float, float] | None]:
    """Normalise ``steps``/``offsets``: ``None`` or one entry per layer (None, scalar or pair)."""
    if values is None:
        return [None] * n_layers
    if isinstance(values, int | float):
        raise ValueError(
            f"{what} must be a list with one entry per predictor layer ({n_layers}), got the scalar {values!r}"
        )
    values = list(values)
    if len(values) != n_layers:
        raise ValueError(f"{what} must have one entry per predictor layer ({n_layers}), got {len(values)}: {values}")
    out: list[tuple[float, float] | None] = []
    for k, v in enumerate(values):
        if v is None:
            out.append(None)
        elif isinstance(v, int | float):
            out.append((float(v), float(v)))
        else:
            pair = tuple(float(x) for x in v)
            if len(pair) != 2:
                raise ValueError(f"{what}[{k}] must be a number or an (h, w) pair, got {v!r}")
            out.append(pair)  # type: ignore[arg-type]
    return out


class AnchorGenerator:
    """Generates the SSD anchors for one input size and a list of predictor feature maps.

    Args:
        image_size: network input ``H`` (square) or ``(H, W)`` in pixels.
        feature_map_sizes: one ``f`` or ``(fh, fw)`` per predictor layer.
        scales: ``n_layers + 1`` scales as fractions of ``min(H, W)``; when ``None`` they are
            ``linspace(min_scale, max_scale, n_layers + 1)``. The last scale only sizes the second
            ``ar == 1`` box of the last layer.
        min_scale, max_scale: used when ``scales`` is ``None``.
        aspect_ratios: one global list (e.g. ``(0.5, 1.0, 2.0)``) or one list per layer. Order is kept.
        two_boxes_for_ar1: add a second square of side ``sqrt(s_k * s_{k+1}) * min(H, W)`` right after
            each ``ar == 1`` box.
        steps: ``None`` (``H/fh, W/fw``) or one entry per layer: ``None``, a scalar, or ``(step_h, step_w)``
            in pixels.
        offsets: ``None`` (0.5) or one entry per layer: ``None``, a scalar, or ``(off_h, off_w)`` as a
            fraction of the step.
        clip_boxes: clamp anchor corners to ``x in [0, W-1]``, ``y in [0, H-1]``.
        normalize_coords: divide x by ``W`` and y by ``H`` (anchors in ``[0, 1]``).

    Attributes:
        boxes_per_layer: boxes per feature-map cell for each layer.
        num_anchors: total number of anchors ``N``.
    """

    def __init__(
        self,
        image_size: SizeLike,
        feature_map_sizes: Sequence[SizeLike],
        scales: Sequence[float] | None = None,
        min_scale: float = 0.1,
        max_scale: float = 0.9,
        aspect_ratios: Sequence[float] | Sequence[Sequence[float]] = (0.5, 1.0, 2.0),
        two_boxes_for_ar1: bool = True,
        steps: Sequence[_Pair] | None = None,
        offsets: Sequence[_Pair] | None = None,
        clip_boxes: bool = False,
        normalize_coords: bool = True,
    ) -> None:
        self.image_size = _pair(image_size, "image_size")
        if min(self.image_size) <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        fms = list(feature_map_sizes)
        if not fms:
            raise ValueError("feature_map_sizes is empty: an SSD needs at least one predictor layer")
        self.feature_map_sizes = [_pair(f, f"feature_map_sizes[{k}]") for k, f in enumerate(fms)]
        for k, (fh, fw) in enumerate(self.feature_map_sizes):
            if fh <= 0 or fw <= 0:
                raise ValueError(f"feature_map_sizes[{k}] must be positive, got {(fh, fw)}")
        n = len(self.feature_map_sizes)

        if scales is None:
            if not (0 < min_scale <= max_scale):
                raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
            scales = torch.linspace(min_scale, max_scale, n + 1, dtype=torch.float64).tolist()
        self.scales = [float(s) for s in scales]
        if len(self.scales) != n + 1:
            raise ValueError(
                f"scales must have n_layers + 1 = {n + 1} values (the last one sizes the second "
                f"ar=1 box of the last layer), got {len(self.scales)}: {self.scales}"
            )
        if any(not math.isfinite(s) or s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive and finite, got {self.scales}")

        ars = list(aspect_ratios)
        if not ars:
            raise ValueError("aspect_ratios is empty")
        if all(isinstance(a, int | float) for a in ars):
            per_layer = [[float(a) for a in ars] for _ in range(n)]
        else:
            if len(ars) != n:
                raise ValueError(
                    f"aspect_ratios per layer must have one list per predictor layer ({n}), got {len(ars)}"
                )
            per_layer = [[float(a) for a in layer] for layer in ars]  # type: ignore[union-attr]
        for k, layer in enumerate(per_layer):
            if not layer:
                raise ValueError(f"aspect_ratios[{k}] is empty")
            if any(not math.isfinite(a) or a <= 0 for a in layer):
                raise ValueError(f"aspect_ratios[{k}] must be positive, got {layer}")
        self.aspect_ratios = per_layer
        self.two_boxes_for_ar1 = bool(two_boxes_for_ar1)
        self.steps = _per_layer_pair(steps, n, "steps")
        self.offsets = _per_layer_pair(offsets, n, "offsets")
        self.clip_boxes = bool(clip_boxes)
        self.normalize_coords = bool(normalize_coords)
        self._cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> AnchorGenerator:
        """Build one of :data:`PRESETS` (``ssd300_voc``, ``ssd300_coco``, ``ssd512_voc``, ``ssd512_coco``)."""
        try:
            cfg = dict(PRESETS[name])
        except KeyError:
            raise ValueError(f"unknown anchor preset {name!r}; choose from {sorted(PRESETS)}") from None
        cfg.update(overrides)
        return cls(**cfg)

    def config(self) -> dict[str, Any]:
        """Plain-Python constructor arguments (YAML/JSON/checkpoint friendly) that rebuild this generator."""

        def unpair(p: tuple[float, float] | None) -> list[float] | None:
            return None if p is None else [p[0], p[1]]

        return {
            "image_size": list(self.image_size),
            "feature_map_sizes": [list(f) for f in self.feature_map_sizes],
            "scales": list(self.scales),
            "aspect_ratios": [list(a) for a in self.aspect_ratios],
            "two_boxes_for_ar1": self.two_boxes_for_ar1,
            "steps": None if all(s is None for s in self.steps) else [unpair(s) for s in self.steps],
            "offsets": None if all(o is None for o in self.offsets) else [unpair(o) for o in self.offsets],
            "clip_boxes": self.clip_boxes,
            "normalize_coords": self.normalize_coords,
        }

    # ------------------------------------------------------------------ properties
    @property
    def n_layers(self) -> int:
        return len(self.feature_map_sizes)

    @property
    def boxes_per_layer(self) -> list[int]:
        """Boxes per feature-map cell for each predictor layer."""
        return [
            len(ars) + (1 if self.two_boxes_for_ar1 and 1.0 in ars else 0) for ars in self.aspect_ratios
        ]

    @property
    def anchors_per_layer(self) -> list[int]:
        """Number of anchors contributed by each predictor layer (``fh * fw * boxes``)."""
        return [fh * fw * b for (fh, fw), b in zip(self.feature_map_sizes, self.boxes_per_layer)]

    @property
    def num_anchors(self) -> int:
        return sum(self.anchors_per_layer)

    def box_sizes(self, layer: int) -> Tensor:
        """``[boxes_per_layer[layer], 2]`` float64 ``(w, h)`` in pixels, in emission order."""
        size = min(self.image_size)
        s_k = self.scales[layer]
        s_next = self.scales[layer + 1]
        wh: list[tuple[float, float]] = []
        for ar in self.aspect_ratios[layer]:
            if ar == 1.0:
                side = s_k * size
                wh.append((side, side))
                if self.two_boxes_for_ar1:
                    side = math.sqrt(s_k * s_next) * size
                    wh.append((side, side))
            else:
                wh.append((s_k * size * math.sqrt(ar), s_k * size / math.sqrt(ar)))
        return torch.tensor(wh, dtype=torch.float64)

    # ------------------------------------------------------------------ anchors
    def _layer_anchors(self, layer: int) -> Tensor:
        img_h, img_w = self.image_size
        fh, fw = self.feature_map_sizes[layer]
        step = self.steps[layer]
        step_h, step_w = (img_h / fh, img_w / fw) if step is None else step
        off = self.offsets[layer]
        off_h, off_w = (0.5, 0.5) if off is None else off
        cy = torch.linspace(off_h * step_h, (off_h + fh - 1) * step_h, fh, dtype=torch.float64)
        cx = torch.linspace(off_w * step_w, (off_w + fw - 1) * step_w, fw, dtype=torch.float64)
        wh = self.box_sizes(layer)  # [A, 2]
        n_boxes = wh.shape[0]
        cy_g, cx_g = torch.meshgrid(cy, cx, indexing="ij")  # [fh, fw]
        cxcy = torch.stack((cx_g, cy_g), dim=-1)[:, :, None, :].expand(fh, fw, n_boxes, 2)
        whs = wh[None, None].expand(fh, fw, n_boxes, 2)
        half = whs / 2
        corners = torch.cat((cxcy - half, cxcy + half), dim=-1)  # [fh, fw, A, 4] xyxy pixels
        if self.clip_boxes:
            corners[..., 0::2] = corners[..., 0::2].clamp(0, img_w - 1)
            corners[..., 1::2] = corners[..., 1::2].clamp(0, img_h - 1)
        if self.normalize_coords:
            corners = corners / torch.tensor([img_w, img_h, img_w, img_h], dtype=torch.float64)
        x0, y0, x1, y1 = corners.unbind(-1)
        return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1).reshape(-1, 4)

    def anchors(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """All anchors, ``Tensor[N, 4]`` ``(cx, cy, w, h)``.

        Normalised to ``[0, 1]`` (x by W, y by H) when ``normalize_coords``, else pixels. Order:
        layer, then row (y), then column (x), then box within the cell. Cached per device/dtype.
        """
        dev = torch.device(device) if device is not None else torch.device("cpu")
        key = (dev, dtype)
        if key not in self._cache:
            if (torch.device("cpu"), torch.float64) not in self._cache:
                self._cache[(torch.device("cpu"), torch.float64)] = torch.cat(
                    [self._layer_anchors(k) for k in range(self.n_layers)]
                )
            self._cache[key] = self._cache[(torch.device("cpu"), torch.float64)].to(device=dev, dtype=dtype)
        return self._cache[key]

    def anchors_xyxy_pixels(self, device: torch.device | str | None = None) -> Tensor:
        """Anchors as ``Tensor[N, 4]`` float32 xyxy in input-image pixels (for plots and analysis)."""
        a = self.anchors(device, torch.float64)
        x0 = a[:, 0] - a[:, 2] / 2
        y0 = a[:, 1] - a[:, 3] / 2
        x1 = a[:, 0] + a[:, 2] / 2
        y1 = a[:, 1] + a[:, 3] / 2
        out = torch.stack((x0, y0, x1, y1), dim=-1)
        if self.normalize_coords:
            h, w = self.image_size
            out = out * torch.tensor([w, h, w, h], dtype=out.dtype, device=out.device)
        return out.float()

    def layer_slices(self) -> list[slice]:
        """Slice of the flattened anchor list belonging to each predictor layer."""
        out, start = [], 0
        for n in self.anchors_per_layer:
            out.append(slice(start, start + n))
            start += n
        return out

    def __repr__(self) -> str:
        return (
            f"AnchorGenerator(image_size={self.image_size}, feature_map_sizes={self.feature_map_sizes}, "
            f"scales={self.scales}, boxes_per_layer={self.boxes_per_layer}, num_anchors={self.num_anchors})"
        )


_SSD300_ARS = [[1.0, 2.0, 0.5]] + [[1.0, 2.0, 0.5, 3.0, 1.0 / 3.0]] * 3 + [[1.0, 2.0, 0.5]] * 2
_SSD512_ARS = [[1.0, 2.0, 0.5]] + [[1.0, 2.0, 0.5, 3.0, 1.0 / 3.0]] * 4 + [[1.0, 2.0, 0.5]] * 2

_SSD300 = {
    "image_size": 300,
    "feature_map_sizes": [38, 19, 10, 5, 3, 1],
    "aspect_ratios": _SSD300_ARS,
    "two_boxes_for_ar1": True,
    "steps": [8, 16, 32, 64, 100, 300],
    "offsets": [0.5] * 6,
    "clip_boxes": False,
    "normalize_coords": True,
}
_SSD512 = {
    "image_size": 512,
    "feature_map_sizes": [64, 32, 16, 8, 4, 2, 1],
    "aspect_ratios": _SSD512_ARS,
    "two_boxes_for_ar1": True,
    "steps": [8, 16, 32, 64, 128, 256, 512],
    "offsets": [0.5] * 7,
    "clip_boxes": False,
    "normalize_coords": True,
}

#: Constructor arguments of the reference anchor configurations (reference section 1).
PRESETS: dict[str, dict[str, Any]] = {
    "ssd300_voc": {**_SSD300, "scales": [0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05]},
    "ssd300_coco": {**_SSD300, "scales": [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]},
    "ssd512_voc": {**_SSD512, "scales": [0.07, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.05]},
    "ssd512_coco": {**_SSD512, "scales": [0.04, 0.1, 0.26, 0.42, 0.58, 0.74, 0.9, 1.06]},
}
