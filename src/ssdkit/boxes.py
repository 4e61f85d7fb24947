"""Box math: format conversions, pairwise IoU, and the SSD centroid offset encoding.

Formats (all tensors ``[..., 4]``, any floating dtype, any device):

- ``xyxy``:   ``(xmin, ymin, xmax, ymax)``
- ``cxcywh``: ``(cx, cy, w, h)``
- ``xywh``:   ``(xmin, ymin, w, h)`` (COCO)

Conversions are unit-agnostic: they work on absolute pixels and on coordinates normalised to
``[0, 1]`` alike. IoU here uses continuous coordinates (no ``+1`` pixel convention), which is what
training-time matching and COCO use; the VOC evaluation IoU with inclusive pixel corners lives in
:mod:`ssdkit.eval.voc`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "xyxy_to_cxcywh",
    "cxcywh_to_xyxy",
    "xyxy_to_xywh",
    "xywh_to_xyxy",
    "cxcywh_to_xywh",
    "xywh_to_cxcywh",
    "convert",
    "box_area",
    "box_iou",
    "encode",
    "decode",
    "DEFAULT_VARIANCES",
]

DEFAULT_VARIANCES: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``[..., 4]`` corners -> centroids."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``[..., 4]`` centroids -> corners."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``[..., 4]`` corners -> top-left corner + size (COCO)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack((x0, y0, x1 - x0, y1 - y0), dim=-1)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``[..., 4]`` top-left corner + size (COCO) -> corners."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack((x, y, x + w, y + h), dim=-1)


def cxcywh_to_xywh(boxes: Tensor) -> Tensor:
    """``[..., 4]`` centroids -> top-left corner + size."""
    return xyxy_to_xywh(cxcywh_to_xyxy(boxes))


def xywh_to_cxcywh(boxes: Tensor) -> Tensor:
    """``[..., 4]`` top-left corner + size -> centroids."""
    return xyxy_to_cxcywh(xywh_to_xyxy(boxes))


_CONVERTERS = {
    ("xyxy", "cxcywh"): xyxy_to_cxcywh,
    ("cxcywh", "xyxy"): cxcywh_to_xyxy,
    ("xyxy", "xywh"): xyxy_to_xywh,
    ("xywh", "xyxy"): xywh_to_xyxy,
    ("cxcywh", "xywh"): cxcywh_to_xywh,
    ("xywh", "cxcywh"): xywh_to_cxcywh,
}


def convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert ``[..., 4]`` boxes between ``'xyxy'``, ``'cxcywh'`` and ``'xywh'``."""
    if in_fmt == out_fmt:
        return boxes.clone()
    try:
        return _CONVERTERS[(in_fmt, out_fmt)](boxes)
    except KeyError:
        raise ValueError(
            f"unknown box format pair {in_fmt!r} -> {out_fmt!r}; use 'xyxy', 'cxcywh' or 'xywh'"
        ) from None


def box_area(boxes_xyxy: Tensor) -> Tensor:
    """Area of ``[..., 4]`` xyxy boxes (continuous coordinates; negative sizes give 0)."""
    w = (boxes_xyxy[..., 2] - boxes_xyxy[..., 0]).clamp(min=0)
    h = (boxes_xyxy[..., 3] - boxes_xyxy[..., 1]).clamp(min=0)
    return w * h


def box_iou(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> Tensor:
    """Pairwise IoU of ``boxes1 [..., M, 4]`` and ``boxes2 [..., N, 4]`` -> ``[..., M, N]``.

    Continuous coordinates (``w = xmax - xmin``). Leading batch dimensions broadcast, so
    ``[B, G, 4]`` x ``[N, 4]`` gives ``[B, G, N]``. Pairs with zero union give 0 (not NaN).
    For plain 2-D xyxy inputs this matches :func:`torchvision.ops.box_iou`; the batched form is
    what target encoding needs and torchvision does not offer.
    """
    if fmt != "xyxy":
        boxes1 = convert(boxes1, fmt, "xyxy")
        boxes2 = convert(boxes2, fmt, "xyxy")
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)


def _variances(variances: Sequence[float] | Tensor, like: Tensor) -> Tensor:
    v = torch.as_tensor(variances, dtype=like.dtype, device=like.device)
    if v.shape != (4,):
        raise ValueError(f"variances must have 4 values, got {tuple(v.shape)}")
    if bool((v <= 0).any()):
        raise ValueError(f"variances must be positive, got {v.tolist()}")
    return v


def encode(
    gt_cxcywh: Tensor,
    anchors: Tensor,
    variances: Sequence[float] | Tensor = DEFAULT_VARIANCES,
) -> Tensor:
    """SSD centroid offsets of ground truth relative to anchors.

    Args:
        gt_cxcywh: ``[..., 4]`` ground-truth boxes ``(cx, cy, w, h)``, same coordinate system as
            ``anchors`` (both normalised or both pixels); ``w, h > 0``.
        anchors: ``[..., 4]`` anchors ``(cx, cy, w, h)``, broadcastable to ``gt_cxcywh``.
        variances: ``(v0, v1, v2, v3)``.

    Returns:
        ``[..., 4]`` offsets ``((cx-cxa)/(wa*v0), (cy-cya)/(ha*v1), log(w/wa)/v2, log(h/ha)/v3)``.
    """
    v = _variances(variances, gt_cxcywh)
    dxy = (gt_cxcywh[..., :2] - anchors[..., :2]) / (anchors[..., 2:] * v[:2])
    dwh = torch.log(gt_cxcywh[..., 2:] / anchors[..., 2:]) / v[2:]
    return torch.cat((dxy, dwh), dim=-1)


def decode(
    deltas: Tensor,
    anchors: Tensor,
    variances: Sequence[float] | Tensor = DEFAULT_VARIANCES,
) -> Tensor:
    """Inverse of :func:`encode`: ``[..., 4]`` offsets -> ``[..., 4]`` boxes ``(cx, cy, w, h)``.

    ``cx = dx*v0*wa + cxa``, ``w = exp(dw*v2)*wa`` (same for y/h). The result is in the anchors'
    coordinate system (normalised when the anchors are).
    """
    v = _variances(variances, deltas)
    cxy = deltas[..., :2] * v[:2] * anchors[..., 2:] + anchors[..., :2]
    wh = torch.exp(deltas[..., 2:] * v[2:]) * anchors[..., 2:]
    return torch.cat((cxy, wh), dim=-1)
