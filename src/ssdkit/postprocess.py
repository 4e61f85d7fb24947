"""Decoding of raw SSD outputs into detections with NMS (reference section 4), batched.

Both Keras decoders are here: ``nms='per_class'`` (``decode_detections``, the Caffe-style decoder) and
``nms='global'`` (``decode_detections_fast``: argmax class including background, one class-agnostic NMS).

Numerics: thresholds, scores and NMS are evaluated in float64 on the candidate anchors only (a
float32 pass with a small margin finds the candidates), so the detection sets equal those of a
float64 reference while the full ``[B, N, C+1]`` softmax stays float32. NMS is
:func:`torchvision.ops.batched_nms` (suppresses ``IoU > iou_threshold``, like the reference).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchvision.ops import nms

from .anchors import AnchorGenerator, SizeLike, _pair
from .boxes import DEFAULT_VARIANCES, cxcywh_to_xyxy, decode

__all__ = ["decode_detections", "decode_boxes", "group_rank"]

# float32 softmax is accurate to ~1e-7 relative; candidates are found with this margin, then re-checked in float64
_MARGIN = 1e-4
# smallest per-group candidate count kept before NMS when top_k bounds the output
_MIN_CANDIDATES = 64
# above this many candidates in over-full groups, top-M uses topk on dense rows instead of a sort
_SORT_MAX = 50_000
# one NMS kernel call for an image's groups (shifted apart) while boxes <= K * sqrt(groups)
_OFFSET_NMS_K = 250.0


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
    if b == 0 or top_k == 0:
        return [torch.zeros((0, 6), dtype=out_dtype, device=dev) for _ in range(b)]

    probs32 = torch.softmax(cls_logits.float(), dim=-1)
    lo = confidence_thresh * (1 - _MARGIN) - 1e-12
    # candidates (float32 score above the threshold minus a margin), contiguous per image;
    # NMS groups per image are the classes (per-class NMS) or one group (global NMS)
    if nms == "per_class":
        n_groups = c1 - 1
        cand = torch.nonzero(probs32[..., 1:] > lo)  # (image, anchor, class - 1)
        bi, ai, gi = cand[:, 0], cand[:, 1], cand[:, 2]
        s32 = probs32.view(-1).index_select(0, (bi * n + ai) * c1 + gi + 1)
    else:
        n_groups = 1
        fg = probs32[..., 1:].amax(-1)  # [B, N]
        cand = torch.nonzero(fg > lo)
        bi, ai = cand[:, 0], cand[:, 1]
        gi = torch.zeros_like(bi)
        s32 = fg.view(-1).index_select(0, bi * n + ai)
    group = bi * n_groups + gi
    n_cand = torch.bincount(group, minlength=b * n_groups)  # [B * G]

    def dense_rows() -> Tensor:
        if nms == "per_class":
            return probs32[..., 1:].transpose(1, 2).reshape(b * n_groups, n)
        return fg.view(b, n)
    m_needed = int(n_cand.max()) if n_cand.numel() else 0
    # Greedy NMS over a group's M best boxes keeps exactly the full result's boxes scoring above the
    # M-th score, so only the top M per group are needed when top_k bounds the output; the check
    # in _decode_candidates proves it per batch and otherwise we retry with a larger M.
    # Start with a share of 2 * top_k per group (at least _MIN_CANDIDATES): usually exact at once.
    m = m_needed if top_k is None else min(m_needed, max(_MIN_CANDIDATES, -(-2 * top_k // n_groups)))
    while True:
        sel, mth = _top_m(group, ai, s32, n_cand, m, dense_rows)
        rows, counts, exact = _decode_candidates(
            cls_logits, box_deltas, anchors64, image_size, bi[sel], ai[sel], gi[sel], mth, confidence_thresh,
            iou_threshold, top_k, nms, variances, nms_max_output_size, normalize_coords, n_groups,
        )
        if exact or m >= m_needed:
            break
        m = min(m_needed, 4 * m)
    return list(torch.split(rows.to(out_dtype), counts))


def _top_m(
    group: Tensor, anchor: Tensor, score: Tensor, n_cand: Tensor, m: int, dense_rows: Callable[[], Tensor]
) -> tuple[Tensor, Tensor | None]:
    """Indices of each group's ``m`` best candidates (all of them in smaller groups), in input order.

    Returns ``(indices, mth)`` where ``mth [n_groups_total]`` is the ``m``-th best score of each
    truncated group (``-inf`` elsewhere), or ``None`` when nothing is truncated. Few over-full
    candidates are sorted; many (an untrained model puts every anchor above 0.01) go through
    ``topk`` on the dense ``[groups_total, N]`` score rows from ``dense_rows()``.
    """
    if m >= int(n_cand.max()):
        return torch.arange(group.numel(), device=group.device), None
    dev = group.device
    over = torch.nonzero(n_cand.index_select(0, group) > m).flatten()
    mth = torch.full((n_cand.numel(),), -float("inf"), dtype=torch.float64, device=dev)
    keep = torch.ones(group.numel(), dtype=torch.bool, device=dev)
    keep[over] = False
    if over.numel() <= _SORT_MAX:
        g_over = group.index_select(0, over)
        order = torch.argsort(score.index_select(0, over), descending=True, stable=True)
        order = order[torch.argsort(g_over[order], stable=True)]
        rank = group_rank(g_over[order])
        keep[over[order[rank < m]]] = True
        at_m = order[rank == m - 1]
        mth[g_over[at_m]] = score.index_select(0, over[at_m]).double()
    else:
        rows = dense_rows()  # [groups_total, N]
        truncated = torch.nonzero(n_cand > m).flatten()
        vals, idx = rows.index_select(0, truncated).topk(m, dim=-1)
        chosen = torch.zeros((n_cand.numel(), rows.shape[1]), dtype=torch.bool, device=dev)
        chosen[truncated[:, None], idx] = True
        keep[over] = chosen[group.index_select(0, over), anchor.index_select(0, over)]
        mth[truncated] = vals[:, m - 1].double()
    return torch.nonzero(keep).flatten(), mth


def _offset_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """One :func:`torchvision.ops.nms` call for several groups, shifted apart so they never overlap.

    (torchvision's own offset trick assumes coordinates > -1; shifting by the minimum first makes it
    safe for boxes that leave the image.) Returns kept indices by descending score.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    lo = boxes.min()
    span = boxes.max() - lo + 1
    shifted = boxes - lo + (groups.to(boxes.dtype) * span)[:, None]
    return nms(shifted, scores, iou_threshold)


def _nms_by_image(
    boxes: Tensor, scores: Tensor, img: Tensor, grp: Tensor, n_images: int, iou_threshold: float
) -> Tensor:
    """Greedy NMS within each (image, group); candidates must be contiguous per image.

    Returns kept indices, image by image, by descending score within an image. Per image, either one
    kernel call with the groups shifted apart (cost ~ n^2: the kernel compares every kept box with
    all later ones) or one call per group (cost ~ groups x call overhead, ~0.15 ms here), whichever
    is cheaper: one call while ``n <= 250 * sqrt(groups)`` (measured break-even on 2 CPU cores, e.g.
    ~1100 boxes for 20 classes). On SSDLite outputs (91 classes, ~200 candidates per image, batch
    8) that is 8 calls instead of ~580 and 5x faster; with many candidates it stays per class.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    n_groups = int(grp.max()) + 1
    per_img = torch.bincount(img, minlength=n_images)
    groups_img = torch.bincount(img * n_groups + grp, minlength=n_images * n_groups).view(n_images, n_groups)
    groups_img = (groups_img > 0).sum(1)
    single = per_img.double() <= _OFFSET_NMS_K * groups_img.double().clamp(min=1).sqrt()
    if bool(single.all()) and boxes.shape[0] <= _OFFSET_NMS_K * n_images**0.5 * n_groups**0.5:
        keep = _offset_nms(boxes, scores, img * n_groups + grp, iou_threshold)  # small batch: one call
        return keep[torch.argsort(img[keep], stable=True)]
    kept, start = [], 0
    for c, one_call in zip(per_img.tolist(), single.tolist()):
        if c == 0:
            continue
        sl = slice(start, start + c)
        if one_call:
            k = _offset_nms(boxes[sl], scores[sl], grp[sl], iou_threshold)
        else:
            order = torch.argsort(grp[sl], stable=True)
            parts, s0 = [], 0
            for gc in torch.unique_consecutive(grp[sl][order], return_counts=True)[1].tolist():
                o = order[s0 : s0 + gc]
                parts.append(o[nms(boxes[sl][o], scores[sl][o], iou_threshold)])
                s0 += gc
            k = torch.cat(parts)
            k = k[torch.argsort(scores[sl][k], descending=True, stable=True)]
        kept.append(k + start)
        start += c
    return torch.cat(kept)


def _decode_candidates(
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors64: Tensor,
    image_size: SizeLike,
    bi: Tensor,
    ai: Tensor,
    gi: Tensor,
    mth: Tensor | None,
    confidence_thresh: float,
    iou_threshold: float | None,
    top_k: int | None,
    nms: str,
    variances: Sequence[float],
    nms_max_output_size: int | None,
    normalize_coords: bool,
    n_groups: int,
) -> tuple[Tensor, list[int], bool]:
    """Decode the candidates ``(image, anchor, group)``; also say whether the result is provably exact.

    ``mth`` is the m-th best float32 score of each truncated group (see :func:`_top_m`).
    """
    b, n, c1 = cls_logits.shape
    dev = cls_logits.device
    flat = bi * n + ai
    # exact float64 scores on the candidate anchors only (each anchor once, whatever its class count)
    mark = torch.zeros(b * n, dtype=torch.bool, device=dev)
    mark[flat] = True
    uniq = torch.nonzero(mark).flatten()
    slot = torch.empty(b * n, dtype=torch.int64, device=dev)
    slot[uniq] = torch.arange(uniq.numel(), device=dev)
    rows64 = cls_logits.reshape(b * n, c1).index_select(0, uniq).double()
    row = slot.index_select(0, flat)
    if nms == "per_class":
        ci = gi + 1
        lse = torch.logsumexp(rows64, dim=-1)
        scores = torch.exp(rows64[row, ci] - lse[row])
        ok = scores > confidence_thresh
    else:
        p64 = torch.softmax(rows64, dim=-1).index_select(0, row)
        ci = p64.argmax(dim=-1)  # first maximum, as numpy's argmax (background included)
        scores = p64.gather(1, ci[:, None]).squeeze(1)
        ok = (ci != 0) & (scores >= confidence_thresh)
    keep_c = torch.nonzero(ok).flatten()
    bi, gi, ci, scores, flat = (t.index_select(0, keep_c) for t in (bi, gi, ci, scores, flat))
    deltas64 = box_deltas.reshape(b * n, 4).index_select(0, flat).double()
    boxes = decode_boxes(deltas64, anchors64.index_select(0, flat % n), image_size, variances, normalize_coords)
    groups = bi * n_groups + gi
    if iou_threshold is None or (nms == "global" and not iou_threshold):
        keep = torch.argsort(scores, descending=True, stable=True)
        keep = keep[torch.argsort(bi[keep], stable=True)]
    else:
        keep = _nms_by_image(boxes, scores, bi, gi, b, float(iou_threshold))
    if nms_max_output_size is not None:
        keep = keep[group_rank(groups[keep]) < int(nms_max_output_size)]
    # keep is image by image, by descending score within an image: cap at top_k
    img = bi[keep]
    if top_k is not None:
        keep = keep[group_rank(img) < top_k]
        img = bi[keep]
    exact = True
    if top_k is not None and mth is not None:
        # cut-off score of each image's output (-inf when it is not full) must beat every truncated
        # group's m-th score; float32 m-th scores get the same margin as the candidate threshold
        counts_img = torch.bincount(img, minlength=b)
        last = torch.full((b,), -float("inf"), dtype=torch.float64, device=dev)
        full = counts_img >= top_k
        if bool(full.any()):
            last_score = torch.full((b,), float("inf"), dtype=torch.float64, device=dev)
            last_score.scatter_reduce_(0, img, scores[keep], reduce="amin")
            last[full] = last_score[full]
        truncated = mth.view(b, n_groups) > -float("inf")
        bound = mth.view(b, n_groups) * (1 + _MARGIN) + 1e-12
        exact = bool((~truncated | (last[:, None] > bound)).all())
    rows = torch.cat((ci[keep, None].to(torch.float64), scores[keep, None], boxes[keep]), dim=1)
    counts = torch.bincount(img, minlength=b).tolist()
    return rows, counts, exact
