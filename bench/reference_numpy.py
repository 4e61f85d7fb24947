"""Straightforward per-image numpy implementations of the reference SSD semantics.

These follow the classic Keras SSD code line by line (``SSDInputEncoder``, ``SSDLoss``,
``decode_detections``, ``decode_detections_fast``), with the deliberate changes of the reference
document (empty images allowed, sorted decoder output, every ground truth matched even at IoU 0).
They are the oracle of the tests and the baseline of ``bench/core.py``: slow on purpose, per image,
per class and per box, and independent of ``ssdkit``.
"""

from __future__ import annotations

import numpy as np


# ---------------------------------------------------------------------------- anchors
def anchors_numpy(
    img_h: int,
    img_w: int,
    feature_map_sizes: list,
    scales: list[float],
    aspect_ratios: list[list[float]],
    two_boxes_for_ar1: bool = True,
    steps: list | None = None,
    offsets: list | None = None,
    clip_boxes: bool = False,
    normalize_coords: bool = True,
) -> np.ndarray:
    out = []
    size = min(img_h, img_w)
    for k, fm in enumerate(feature_map_sizes):
        fh, fw = (fm, fm) if np.isscalar(fm) else fm
        wh = []
        for ar in aspect_ratios[k]:
            if ar == 1:
                wh.append((scales[k] * size, scales[k] * size))
                if two_boxes_for_ar1:
                    s = np.sqrt(scales[k] * scales[k + 1]) * size
                    wh.append((s, s))
            else:
                wh.append((scales[k] * size * np.sqrt(ar), scales[k] * size / np.sqrt(ar)))
        wh = np.array(wh)
        st = None if steps is None else steps[k]
        if st is None:
            sh, sw = img_h / fh, img_w / fw
        elif np.isscalar(st):
            sh = sw = st
        else:
            sh, sw = st
        of = None if offsets is None else offsets[k]
        if of is None:
            oh = ow = 0.5
        elif np.isscalar(of):
            oh = ow = of
        else:
            oh, ow = of
        cy = np.linspace(oh * sh, (oh + fh - 1) * sh, fh)
        cx = np.linspace(ow * sw, (ow + fw - 1) * sw, fw)
        cxg, cyg = np.meshgrid(cx, cy)
        n = len(wh)
        t = np.zeros((fh, fw, n, 4))
        t[..., 0] = np.tile(cxg[..., None], (1, 1, n))
        t[..., 1] = np.tile(cyg[..., None], (1, 1, n))
        t[..., 2] = wh[:, 0]
        t[..., 3] = wh[:, 1]
        c = np.empty_like(t)
        c[..., 0] = t[..., 0] - t[..., 2] / 2
        c[..., 1] = t[..., 1] - t[..., 3] / 2
        c[..., 2] = t[..., 0] + t[..., 2] / 2
        c[..., 3] = t[..., 1] + t[..., 3] / 2
        if clip_boxes:
            c[..., [0, 2]] = np.clip(c[..., [0, 2]], 0, img_w - 1)
            c[..., [1, 3]] = np.clip(c[..., [1, 3]], 0, img_h - 1)
        if normalize_coords:
            c[..., [0, 2]] /= img_w
            c[..., [1, 3]] /= img_h
        r = np.empty_like(c)
        r[..., 0] = (c[..., 0] + c[..., 2]) / 2
        r[..., 1] = (c[..., 1] + c[..., 3]) / 2
        r[..., 2] = c[..., 2] - c[..., 0]
        r[..., 3] = c[..., 3] - c[..., 1]
        out.append(r.reshape(-1, 4))
    return np.concatenate(out)


# ---------------------------------------------------------------------------- helpers
def _to_corners(b: np.ndarray) -> np.ndarray:
    return np.stack(
        [b[..., 0] - b[..., 2] / 2, b[..., 1] - b[..., 3] / 2, b[..., 0] + b[..., 2] / 2, b[..., 1] + b[..., 3] / 2],
        axis=-1,
    )


def _to_centroids(b: np.ndarray) -> np.ndarray:
    return np.stack(
        [(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2, b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]],
        axis=-1,
    )


def iou_outer(b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """Pairwise IoU of corner boxes, continuous coordinates (Keras ``border_pixels='half'``)."""
    mins = np.maximum(b1[:, None, :2], b2[None, :, :2])
    maxs = np.minimum(b1[:, None, 2:], b2[None, :, 2:])
    side = np.maximum(0, maxs - mins)
    inter = side[..., 0] * side[..., 1]
    a1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    a2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    return inter / (a1[:, None] + a2[None, :] - inter)


def _match_bipartite_greedy(w: np.ndarray) -> np.ndarray:
    """Greedy global-max matching; used rows/columns are removed (set below any IoU)."""
    w = w.copy()
    n_gt = w.shape[0]
    matches = np.zeros(n_gt, dtype=np.int64)
    for _ in range(n_gt):
        flat = int(np.argmax(w))  # row-major first maximum: smallest gt, then smallest anchor
        g, a = divmod(flat, w.shape[1])
        matches[g] = a
        w[g, :] = -1.0
        w[:, a] = -1.0
    return matches


# ---------------------------------------------------------------------------- encoder
def encode_numpy(
    gt_boxes: list[np.ndarray],
    gt_labels: list[np.ndarray],
    anchors_cxcywh: np.ndarray,
    img_h: int,
    img_w: int,
    matching: str = "multi",
    pos_iou_threshold: float = 0.5,
    neg_iou_limit: float = 0.3,
    variances=(0.1, 0.1, 0.2, 0.2),
    normalize_coords: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Keras ``SSDInputEncoder``. Returns ``labels [B, N]`` (-1 neutral) and offsets ``[B, N, 4]``."""
    n = anchors_cxcywh.shape[0]
    b = len(gt_boxes)
    anchors_c = _to_corners(anchors_cxcywh)
    labels_out = np.zeros((b, n), dtype=np.int64)
    targets = np.zeros((b, n, 4), dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    for i in range(b):
        boxes = np.asarray(gt_boxes[i], dtype=np.float64).reshape(-1, 4).copy()
        labs = np.asarray(gt_labels[i]).reshape(-1)
        if boxes.shape[0] == 0:
            continue
        if np.any(boxes[:, 2] - boxes[:, 0] <= 0) or np.any(boxes[:, 3] - boxes[:, 1] <= 0):
            raise ValueError(f"degenerate box in image {i}")
        if normalize_coords:
            boxes[:, [0, 2]] /= img_w
            boxes[:, [1, 3]] /= img_h
        cent = _to_centroids(boxes)
        sim = iou_outer(_to_corners(cent), anchors_c)
        matched_gt = np.full(n, -1, dtype=np.int64)
        bip = _match_bipartite_greedy(sim)
        matched_gt[bip] = np.arange(len(bip))
        sim[:, bip] = 0
        if matching == "multi":
            gt_idx = np.argmax(sim, axis=0)
            ov = sim[gt_idx, np.arange(n)]
            met = np.nonzero(ov >= pos_iou_threshold)[0]
            matched_gt[met] = gt_idx[met]
            sim[:, met] = 0
        max_bg = np.amax(sim, axis=0)
        neutral = (max_bg >= neg_iou_limit) & (matched_gt < 0)
        labels_out[i, neutral] = -1
        pos = matched_gt >= 0
        labels_out[i, pos] = labs[matched_gt[pos]]
        g = cent[matched_gt[pos]]
        a = anchors_cxcywh[pos]
        t = np.empty_like(g)
        t[:, :2] = (g[:, :2] - a[:, :2]) / (a[:, 2:] * v[:2])
        t[:, 2:] = np.log(g[:, 2:] / a[:, 2:]) / v[2:]
        targets[i, pos] = t
    return labels_out, targets


# ---------------------------------------------------------------------------- loss
def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def loss_numpy(
    cls_logits: np.ndarray,
    box_deltas: np.ndarray,
    labels: np.ndarray,
    box_targets: np.ndarray,
    neg_pos_ratio: int = 3,
    n_neg_min: int = 0,
    alpha: float = 1.0,
) -> dict[str, float]:
    """Keras ``SSDLoss`` (batch-wide hard negative mining), reported per the reference formula."""
    ce = -_log_softmax(cls_logits.astype(np.float64))[
        np.arange(labels.shape[0])[:, None], np.arange(labels.shape[1])[None, :], np.clip(labels, 0, None)
    ]
    d = np.abs(box_deltas.astype(np.float64) - box_targets)
    sl1 = np.where(d < 1, 0.5 * d**2, d - 0.5).sum(-1)
    pos = labels > 0
    neg = labels == 0
    n_pos = int(pos.sum())
    neg_losses = (ce * neg).reshape(-1)
    n_nonzero = int(np.count_nonzero(neg_losses))
    k = int(min(max(neg_pos_ratio * n_pos, n_neg_min), n_nonzero))
    neg_sum = float(np.sort(neg_losses)[::-1][:k].sum()) if k > 0 else 0.0
    cls = (float((ce * pos).sum()) + neg_sum) / max(1, n_pos)
    box = float((sl1 * pos).sum()) / max(1, n_pos)
    return {"loss": cls + alpha * box, "cls_loss": cls, "box_loss": box}


# ---------------------------------------------------------------------------- decoding
def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _decode_boxes(deltas, anchors, variances, img_h, img_w, normalize_coords=True):
    v = np.asarray(variances)
    cxy = deltas[..., :2] * v[:2] * anchors[..., 2:] + anchors[..., :2]
    wh = np.exp(deltas[..., 2:] * v[2:]) * anchors[..., 2:]
    c = _to_corners(np.concatenate([cxy, wh], axis=-1))
    if normalize_coords:
        c[..., [0, 2]] *= img_w
        c[..., [1, 3]] *= img_h
    return c


def _iou_one(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    mins = np.maximum(boxes[:, :2], box[:2])
    maxs = np.minimum(boxes[:, 2:], box[2:])
    side = np.maximum(0, maxs - mins)
    inter = side[:, 0] * side[:, 1]
    a1 = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    a2 = (box[2] - box[0]) * (box[3] - box[1])
    return inter / (a1 + a2 - inter)


def greedy_nms_numpy(pred: np.ndarray, iou_threshold: float) -> np.ndarray:
    """``pred`` rows ``[score, x0, y0, x1, y1]``; greedy NMS, suppress IoU > threshold."""
    left = pred.copy()
    kept = []
    while left.shape[0] > 0:
        i = int(np.argmax(left[:, 0]))
        best = left[i].copy()
        kept.append(best)
        left = np.delete(left, i, axis=0)
        if left.shape[0] == 0:
            break
        left = left[_iou_one(left[:, 1:], best[1:]) <= iou_threshold]
    return np.array(kept).reshape(-1, 5)


def decode_numpy(
    cls_logits: np.ndarray,
    box_deltas: np.ndarray,
    anchors_cxcywh: np.ndarray,
    img_h: int,
    img_w: int,
    confidence_thresh: float = 0.01,
    iou_threshold: float = 0.45,
    top_k: int | None = 200,
    nms: str = "per_class",
    variances=(0.1, 0.1, 0.2, 0.2),
    normalize_coords: bool = True,
) -> list[np.ndarray]:
    """Keras ``decode_detections`` (per class) / ``decode_detections_fast`` (global), sorted output."""
    probs = _softmax(cls_logits.astype(np.float64))
    boxes = _decode_boxes(box_deltas.astype(np.float64), anchors_cxcywh, variances, img_h, img_w, normalize_coords)
    out = []
    for i in range(probs.shape[0]):
        if nms == "per_class":
            pred = []
            for c in range(1, probs.shape[-1]):
                sc = probs[i, :, c]
                m = sc > confidence_thresh
                if not m.any():
                    continue
                kept = greedy_nms_numpy(np.concatenate([sc[m, None], boxes[i, m]], axis=1), iou_threshold)
                pred.append(np.concatenate([np.full((len(kept), 1), c), kept], axis=1))
            pred = np.concatenate(pred) if pred else np.zeros((0, 6))
        else:
            cls = np.argmax(probs[i], axis=-1)
            sc = np.max(probs[i], axis=-1)
            m = (cls != 0) & (sc >= confidence_thresh)
            rows = np.concatenate([sc[m, None], boxes[i, m]], axis=1)
            kept = greedy_nms_numpy(rows, iou_threshold) if iou_threshold else rows
            # recover class ids of the kept rows
            cls_m = cls[m]
            ids = []
            for r in kept:
                j = int(np.nonzero((rows == r).all(axis=1))[0][0])
                ids.append(cls_m[j])
            pred = np.concatenate([np.array(ids, dtype=np.float64).reshape(-1, 1), kept], axis=1)
        order = np.argsort(-pred[:, 1], kind="stable")
        pred = pred[order]
        if top_k is not None and pred.shape[0] > top_k:
            pred = pred[:top_k]
        out.append(pred)
    return out
