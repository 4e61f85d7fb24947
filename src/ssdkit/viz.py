"""Drawing boxes and labels on images, and image grids (Pillow only, no matplotlib state).

Images are accepted as ``Tensor[3, H, W]`` uint8 RGB (the dataset/model convention), ``ndarray[H, W, 3]``
uint8 RGB, or a PIL image; functions return ``ndarray[H, W, 3]`` uint8 RGB. Boxes are xyxy pixels of
that image.

Example::

    from ssdkit.viz import draw_boxes, image_grid, save_image
    dets = model.predict(img)[0]                                    # [K, 6]
    canvas = draw_boxes(img, dets[:, 2:], dets[:, 0], dets[:, 1], class_names=model.class_names)
    save_image("pred.png", image_grid([canvas, other], ncols=2))
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["color_for", "to_numpy_image", "enlarge", "draw_boxes", "draw_detections", "caption", "image_grid",
           "save_image"]

_PALETTE = [
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230),
    (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128), (255, 225, 25),
]


def color_for(label: int) -> tuple[int, int, int]:
    """A distinct RGB colour per class label (cycles after 20)."""
    return _PALETTE[(int(label) - 1) % len(_PALETTE)]


def to_numpy_image(image: Any) -> np.ndarray:
    """``ndarray[H, W, 3]`` uint8 RGB from a ``Tensor[3, H, W]``, an HWC/HW array or a PIL image."""
    try:
        import torch

        if isinstance(image, torch.Tensor):
            t = image.detach().cpu()
            if t.dim() == 3 and t.shape[0] in (1, 3):
                t = t.permute(1, 2, 0)
            image = t.numpy()
    except ImportError:  # pragma: no cover
        pass
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an image [H, W, 3] or [3, H, W], got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])


def enlarge(image: Any, min_side: int = 256) -> tuple[np.ndarray, float]:
    """The image scaled up (bilinear) so that its short side is at least ``min_side``, and the factor
    (1.0 when it is already large enough); multiply box coordinates by the factor to follow it."""
    from PIL import Image

    arr = to_numpy_image(image)
    h, w = arr.shape[:2]
    f = min_side / min(h, w)
    if f <= 1.0:
        return arr, 1.0
    big = Image.fromarray(arr).resize((round(w * f), round(h * f)), Image.BILINEAR)
    return np.asarray(big), f


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1 without sizes
        return ImageFont.load_default()


def _as_list(x: Any) -> list[Any]:
    if x is None:
        return []
    if hasattr(x, "tolist"):
        return list(x.tolist())
    return list(x)


def draw_boxes(
    image: Any,
    boxes: Any,
    labels: Any = None,
    scores: Any = None,
    class_names: Sequence[str] | None = None,
    color: tuple[int, int, int] | None = None,
    thickness: int | None = None,
    font_size: int | None = None,
) -> np.ndarray:
    """Draw ``boxes`` ``[K, 4]`` (xyxy pixels) with ``label name score`` tags; returns a new RGB array.

    Args:
        image: the image (see the module docstring); not modified.
        boxes: ``[K, 4]`` tensor/array/list.
        labels: ``[K]`` class ids ``1..C`` (colours and names), or ``None``.
        scores: ``[K]`` scores shown after the name, or ``None``.
        class_names: names without background (``class_names[k - 1]`` names label ``k``).
        color: one colour for every box instead of the per-class palette.
        thickness, font_size: default scale with the image size.
    """
    from PIL import Image, ImageDraw

    arr = to_numpy_image(image)
    h, w = arr.shape[:2]
    im = Image.fromarray(arr)
    draw = ImageDraw.Draw(im)
    thickness = thickness or max(1, round(min(h, w) / 200))
    font = _font(font_size or max(9, round(min(h, w) / 30)))
    bl = [[float(v) for v in b] for b in _as_list(boxes)]
    ll = _as_list(labels)
    sl = _as_list(scores)
    for i, b in enumerate(bl):
        lab = int(ll[i]) if i < len(ll) else None
        col = color or (color_for(lab) if lab is not None else (255, 0, 0))
        x0, y0, x1, y1 = b
        draw.rectangle([x0, y0, x1, y1], outline=col, width=thickness)
        parts = []
        if lab is not None:
            parts.append(class_names[lab - 1] if class_names and 1 <= lab <= len(class_names) else str(lab))
        if i < len(sl):
            parts.append(f"{float(sl[i]):.2f}")
        if parts:
            text = " ".join(parts)
            tb = draw.textbbox((0, 0), text, font=font)
            tw, th = tb[2] - tb[0], tb[3] - tb[1]
            ty = y0 - th - 3 if y0 - th - 3 >= 0 else y0
            draw.rectangle([x0, ty, x0 + tw + 4, ty + th + 3], fill=col)
            draw.text((x0 + 2, ty - tb[1] + 1), text, fill=(0, 0, 0) if sum(col) > 380 else (255, 255, 255), font=font)
    return np.asarray(im)


def draw_detections(image: Any, detections: Any, class_names: Sequence[str] | None = None,
                    score_threshold: float = 0.0, **kw: Any) -> np.ndarray:
    """Draw a ``[K, 6]`` detection tensor (``[class_id, score, x1, y1, x2, y2]``) above ``score_threshold``."""
    d = np.asarray(detections.detach().cpu() if hasattr(detections, "detach") else detections, dtype=np.float64)
    d = d.reshape(-1, 6)
    d = d[d[:, 1] >= score_threshold]
    return draw_boxes(image, d[:, 2:], d[:, 0].astype(int), d[:, 1], class_names=class_names, **kw)


def caption(image: Any, text: str, height: int | None = None) -> np.ndarray:
    """The image with a white strip on top holding ``text``."""
    from PIL import Image, ImageDraw

    arr = to_numpy_image(image)
    h, w = arr.shape[:2]
    bar = height or max(14, round(min(h, w) / 12))
    im = Image.new("RGB", (w, h + bar), (255, 255, 255))
    im.paste(Image.fromarray(arr), (0, bar))
    ImageDraw.Draw(im).text((3, 1), text, fill=(0, 0, 0), font=_font(max(9, bar - 4)))
    return np.asarray(im)


def image_grid(images: Sequence[Any], ncols: int, pad: int = 4, background: int = 255) -> np.ndarray:
    """Tile images row by row in ``ncols`` columns; cells are as large as the largest image."""
    arrs = [to_numpy_image(im) for im in images]
    if not arrs:
        raise ValueError("image_grid needs at least one image")
    ncols = max(1, min(int(ncols), len(arrs)))
    nrows = -(-len(arrs) // ncols)
    ch = max(a.shape[0] for a in arrs)
    cw = max(a.shape[1] for a in arrs)
    out = np.full((nrows * ch + (nrows + 1) * pad, ncols * cw + (ncols + 1) * pad, 3), background, np.uint8)
    for i, a in enumerate(arrs):
        r, c = divmod(i, ncols)
        y, x = pad + r * (ch + pad), pad + c * (cw + pad)
        out[y:y + a.shape[0], x:x + a.shape[1]] = a
    return out


def save_image(path: str | os.PathLike[str], image: Any) -> Path:
    """Write an image (format from the suffix, e.g. ``.png``, ``.jpg``) atomically; returns the path."""
    from PIL import Image

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(p.suffix.lower(), "PNG")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(to_numpy_image(image)).save(f, format=fmt)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
