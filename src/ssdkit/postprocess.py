"""Decoding of raw SSD outputs into detections with NMS (reference section 4), batched.

Both Keras decoders are here: ``nms='per_class'`` (``decode_detections``, the Caffe-style decoder) and
``nms='global'`` (``decode_detections_fast``: argmax class including background, one class-agnostic NMS).

Numerics: thresholds, scores and NMS are evaluated in float64 on the candidate anchors only (a
float32 pass with a small margin finds the candidates), so the detection sets equal those of a
float64 reference while the full ``[B, N, C+1]`` softmax stays float32. NMS is
:func:`torchvision.ops.batched_nms` (suppresses ``IoU > iou_threshold``, like the reference).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from .anchors import AnchorGenerator, SizeLike, _pair
from .boxes import DEFAULT_VARIANCES, cxcywh_to_xyxy, decode

__all__ = ["decode_detections", "decode_boxes", "group_rank"]

# float32 softmax is accurate to ~1e-7 relative; candidates are found with this margin, then re-checked in float64
_MARGIN = 1e-4


def group_rank(groups: Tensor) -> Tensor:
    """For an already ordered sequence, the 0-based position of each element within its group id."""
    if groups.numel() == 0:
        return groups.clone()
    order = torch.argsort(groups, stable=True)
    sorted_g = groups[order]
    pos = torch.arange(groups.numel(), device=groups.device)
    is_start = torch.ones_like(sorted_g, dtype=torch.bool)
    is_start[1:] = sorted_g[1:] != sorted_g[:-1]
    start = torch.cummax(torch.where(is_start, pos, torch.zeros_like(pos)), 0).values
    rank = torch.empty_like(pos)
    rank[order] = pos - start
    return rank


def decode_boxes(
    box_deltas: Tensor,
    anchors: Tensor,
    image_size: SizeLike,
    variances: Sequence[float] = DEFAULT_VARIANCES,
    normalize_coords: bool = True,
) -> Tensor:
    """``[..., 4]`` offsets + ``[..., 4]`` anchors (cxcywh) -> ``[..., 4]`` xyxy boxes in input pixels."""
    boxes = cxcywh_to_xyxy(decode(box_deltas, anchors.to(box_deltas.dtype), variances))
    if normalize_coords:
        h, w = _pair(image_size, "image_size")
        boxes = boxes * torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
    return boxes


def decode_detections(
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors: Tensor | AnchorGenerator,
    image_size: SizeLike,
    confidence_thresh: float = 0.01,
    iou_threshold: float | None = 0.45,
    top_k: int | str | None = 200,
    nms: str = "per_class",
    variances: Sequence[float] = DEFAULT_VARIANCES,
    nms_max_output_size: int | None = None,
    normalize_coords: bool | None = None,
) -> list[Tensor]:
    """Turn raw network outputs into per-image detections.

    Args:
        cls_logits: ``[B, N, C+1]`` raw class scores (background at 0); scores are their softmax.
        box_deltas: ``[B, N, 4]`` offsets.
        anchors: ``[N, 4]`` ``(cx, cy, w, h)`` (normalised when ``normalize_coords``) or an
            :class:`~ssdkit.anchors.AnchorGenerator`.
        image_size: network input ``H`` or ``(H, W)``; boxes come out in these pixels.
        confidence_thresh: per-class mode keeps scores ``> confidence_thresh``; global mode keeps
            ``>= confidence_thresh`` (0.5 is its usual value).
        iou_threshold: NMS suppresses boxes with ``IoU > iou_threshold``; ``None`` or 0 in global mode
            skips NMS (as the Keras fast decoder).
        top_k: keep at most this many detections per image (``None`` or ``'all'``: no limit).
        nms: ``'per_class'`` or ``'global'``.
        variances: offset variances.
        nms_max_output_size: per-class cap on the boxes NMS keeps (the Keras ``DecodeDetections``
            layer's ``tf.image.non_max_suppression(max_output_size=...)``); ``None`` = no cap.
        normalize_coords: whether anchors are normalised (default: generator's setting, else True).

    Returns:
        list of ``B`` tensors ``[K, 6]``: ``[class_id, score, xmin, ymin, xmax, ymax]``, input
        pixels, sorted by descending score; ``K`` may be 0. dtype float32 (float64 for float64 input).
    """
    if isinstance(anchors, AnchorGenerator):
        if normalize_coords is None:
            normalize_coords = anchors.normalize_coords
        anchors = anchors.anchors(device=cls_logits.device, dtype=torch.float64)
    normalize_coords = True if normalize_coords is None else normalize_coords
    if nms not in ("per_class", "global"):
        raise ValueError(f"nms must be 'per_class' or 'global', got {nms!r}")
    if cls_logits.dim() != 3:
        raise ValueError(f"cls_logits must be [B, N, C+1], got {tuple(cls_logits.shape)}")
    b, n, c1 = cls_logits.shape
    if box_deltas.shape != (b, n, 4):
        raise ValueError(f"box_deltas must be [{b}, {n}, 4] to match cls_logits, got {tuple(box_deltas.shape)}")
    if anchors.shape != (n, 4):
        raise ValueError(f"anchors must be [{n}, 4] to match the outputs, got {tuple(anchors.shape)}")
    if top_k == "all":
        top_k = None
    if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be a non-negative int, 'all' or None, got {top_k!r}")
    out_dtype = torch.float64 if cls_logits.dtype == torch.float64 else torch.float32
    dev = cls_logits.device
    anchors64 = anchors.to(device=dev, dtype=torch.float64)

    probs32 = torch.softmax(cls_logits.float(), dim=-1)
    lo = confidence_thresh * (1 - _MARGIN) - 1e-12
    if nms == "per_class":
        cand = torch.nonzero(probs32[..., 1:] > lo)  # [K, 3] (image, anchor, class-1)
        bi, ai, ci = cand[:, 0], cand[:, 1], cand[:, 2] + 1
        uniq, inv = torch.unique(bi * n + ai, return_inverse=True)
        p64 = torch.softmax(cls_logits.reshape(b * n, c1)[uniq].double(), dim=-1)
        scores = p64[inv, ci]
        ok = scores > confidence_thresh
    else:
        best_fg = probs32[..., 1:].amax(dim=-1)
        cand = torch.nonzero(best_fg >= lo)  # [K, 2]
        bi, ai = cand[:, 0], cand[:, 1]
        p64 = torch.softmax(cls_logits[bi, ai].double(), dim=-1)
        ci = p64.argmax(dim=-1)  # first maximum, as numpy's argmax
        scores = p64.gather(1, ci[:, None]).squeeze(1)
        ok = (ci != 0) & (scores >= confidence_thresh)
    bi, ai, ci, scores = bi[ok], ai[ok], ci[ok], scores[ok]
    boxes = decode_boxes(box_deltas[bi, ai].double(), anchors64[ai], image_size, variances, normalize_coords)

    if nms == "per_class":
        groups = bi * c1 + ci
    else:
        groups = bi
    if iou_threshold is None or (nms == "global" and not iou_threshold):
        keep = torch.argsort(scores, descending=True, stable=True)
    else:
        keep = batched_nms(boxes, scores, groups, float(iou_threshold))
    if nms_max_output_size is not None:
        keep = keep[group_rank(groups[keep]) < int(nms_max_output_size)]
    # keep is sorted by descending score; order per image and cap at top_k
    img = bi[keep]
    if top_k is not None:
        keep = keep[group_rank(img) < top_k]
        img = bi[keep]
    rows = torch.cat(
        (ci[keep, None].to(torch.float64), scores[keep, None], boxes[keep]), dim=1
    ).to(out_dtype)
    order = torch.argsort(img, stable=True)
    rows = rows[order]
    counts = torch.bincount(img, minlength=b).tolist()
    return list(torch.split(rows, counts))
