"""Exportable post-processing for :class:`~ssdkit.models.SSD` outputs: decoding, and decoding + NMS.

Exports are built in two parts so that the network part can be quantised (or swapped) on its own:
the network graph ``images -> (cls_logits, box_deltas)`` and a post-processing graph taking those
two tensors. :func:`ssdkit.deploy.export.export_model` exports both and merges them into one file.

Modules here take ``(cls_logits [B, N, C+1], box_deltas [B, N, 4])`` (the raw network outputs):

- :class:`DecodeBoxes`: ``(scores [B, N, C+1], boxes [B, N, 4])``: softmax scores (background at 0)
  and every anchor's box as ``xyxy`` in network-input pixels (float32 arithmetic).
- :class:`OnnxNMS`: ``(detections [B, K, 6], num_detections [B])`` with per-class ONNX
  ``NonMaxSuppression``; only meaningful inside ``torch.onnx.export`` (its eager forward is a
  reference that gives tracing the right shapes).
- :class:`ScriptNMS`: the same contract for TorchScript (``torch.jit.script``), with
  ``torchvision.ops.nms`` per class (the loading program must ``import torchvision``).
- :class:`WithPostprocess`: ``images -> post(*net(images))`` (the TorchScript exports and the
  eager references).

Detection contract (both NMS modules), ``K = min(top_k, n_classes * N)``: rows
``[class_id, score, xmin, ymin, xmax, ymax]`` in network-input pixels, sorted by descending score;
rows ``>= num_detections[b]`` are all zeros. Semantics follow
:func:`ssdkit.postprocess.decode_detections` in ``per_class`` mode: per class keep scores
``> confidence_thresh``, greedy NMS suppressing ``IoU > iou_threshold`` (ONNX Runtime's
``NonMaxSuppression`` uses the same strict comparisons; checked in the tests), at most
``nms_max_output_size`` boxes per class, pool the classes, keep the ``top_k`` best. Differences:
scores, boxes and IoU are float32 (ssdkit decodes candidates in float64), so a score within ~1e-7
of the threshold or an IoU within ~1e-7 of the NMS threshold can fall the other way; equal scores
are ordered by (class, anchor) by ``TopK`` rather than by ssdkit's stable sort.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import nms

__all__ = ["DecodeBoxes", "OnnxNMS", "ScriptNMS", "WithPostprocess", "anchors_in_pixels", "check_decode_args",
           "OUTPUT_NAMES"]

#: graph output names of each export kind (the ONNX/TorchScript output contract)
OUTPUT_NAMES: dict[str, tuple[str, str]] = {
    "raw": ("cls_logits", "box_deltas"),
    "decoded": ("scores", "boxes"),
    "nms": ("detections", "num_detections"),
}


def anchors_in_pixels(model: nn.Module) -> Tensor:
    """The model's anchors as ``[N, 4]`` float32 ``(cx, cy, w, h)`` in network-input pixels.

    Scaling the anchors once at export time (instead of scaling every decoded box) saves one
    ``[B, N, 4]`` multiply per run; computed in float64 from the generator, then rounded.
    """
    gen = model.anchor_generator
    a = gen.anchors(dtype=torch.float64).clone()
    if gen.normalize_coords:
        h, w = model.image_size
        a *= torch.tensor([w, h, w, h], dtype=torch.float64)
    return a.float()


class WithPostprocess(nn.Module):
    """``images -> post(*net(images))``; ``post=None`` returns the raw outputs."""

    def __init__(self, net: nn.Module, post: nn.Module | None = None) -> None:
        super().__init__()
        self.net = net
        self.post = post if post is not None else _Identity2()

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        cls_logits, box_deltas = self.net(images)
        return self.post(cls_logits, box_deltas)


class _Identity2(nn.Module):
    def forward(self, cls_logits: Tensor, box_deltas: Tensor) -> tuple[Tensor, Tensor]:
        return cls_logits, box_deltas


class DecodeBoxes(nn.Module):
    """``(cls_logits, box_deltas) -> (scores [B, N, C+1] softmax, boxes [B, N, 4] xyxy network pixels)``.

    Box decoding (reference section 4): ``cx = dx v0 wa + cxa``, ``w = exp(dw v2) wa`` (same for
    y/h), then corners.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        a = anchors_in_pixels(model)
        v = torch.tensor([float(x) for x in model.variances], dtype=torch.float32)
        self.register_buffer("anchor_xy", a[:, :2].contiguous(), persistent=False)
        self.register_buffer("anchor_wh", a[:, 2:].contiguous(), persistent=False)
        self.register_buffer("var_xy", v[:2] * a[:, 2:], persistent=False)  # v0 * wa, v1 * ha: one multiply less
        self.register_buffer("var_wh", v[2:].clone(), persistent=False)

    def decode(self, cls_logits: Tensor, box_deltas: Tensor) -> tuple[Tensor, Tensor]:
        scores = torch.softmax(cls_logits.float(), dim=-1)
        d = box_deltas.float()
        cxy = d[..., :2] * self.var_xy + self.anchor_xy
        half = torch.exp(d[..., 2:] * self.var_wh) * self.anchor_wh * 0.5
        return scores, torch.cat((cxy - half, cxy + half), dim=-1)

    def forward(self, cls_logits: Tensor, box_deltas: Tensor) -> tuple[Tensor, Tensor]:
        return self.decode(cls_logits, box_deltas)


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (per batch and class). ``boxes [B, N, 4]`` corners, ``scores
    [B, C, N]`` -> ``selected [K, 3]`` int64 ``(batch, class, box)``.

    ``symbolic`` emits the ONNX op; ``forward`` is an eager equivalent (ONNX Runtime semantics:
    keep ``score > score_threshold``, suppress ``IoU > iou_threshold``) so tracing sees the right
    shapes and dtypes.
    """

    @staticmethod
    def forward(ctx: Any, boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float,
                score_threshold: float) -> Tensor:
        out = []
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                ids = torch.nonzero(scores[b, c] > score_threshold).flatten()
                keep = ids[nms(boxes[b, ids], scores[b, c, ids], iou_threshold)][:max_per_class]
                col = torch.full_like(keep, b)
                out.append(torch.stack((col, torch.full_like(keep, c), keep), dim=1))
        return torch.cat(out) if out else torch.zeros((0, 3), dtype=torch.int64)

    @staticmethod
    def symbolic(g: Any, boxes: Any, scores: Any, max_per_class: int, iou_threshold: float,
                 score_threshold: float) -> Any:
        max_t = g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64))
        iou_t = g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32))
        score_t = g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32))
        return g.op("NonMaxSuppression", boxes, scores, max_t, iou_t, score_t, center_point_box_i=0)


def check_decode_args(confidence_thresh: float, iou_threshold: float, top_k: int,
                      nms_max_output_size: int | None = None, error: type[Exception] = ValueError) -> None:
    """Validate decoding settings (shared by the exports and the Predictor); raises ``error``."""
    if not 0.0 <= confidence_thresh < 1.0:
        raise error(f"confidence_thresh must be in [0, 1), got {confidence_thresh}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise error(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    if top_k < 1:
        raise error(f"top_k must be >= 1, got {top_k}")
    if nms_max_output_size is not None and nms_max_output_size < 1:
        raise error(f"nms_max_output_size must be >= 1, got {nms_max_output_size}")


class _NMSBase(DecodeBoxes):
    """Decoding plus the NMS settings shared by :class:`OnnxNMS` and :class:`ScriptNMS`.

    ``k = min(top_k, n_classes * N)`` output rows; ``max_per_class = min(top_k,
    nms_max_output_size)``: a class's boxes beyond its ``top_k`` best can never reach the pooled
    ``top_k``, so that cap is exact and lets NMS stop early.
    """

    def __init__(self, model: nn.Module, confidence_thresh: float, iou_threshold: float, top_k: int,
                 nms_max_output_size: int | None = None) -> None:
        super().__init__(model)
        from ..errors import ExportError

        check_decode_args(confidence_thresh, iou_threshold, top_k, nms_max_output_size, ExportError)
        self.confidence_thresh = float(confidence_thresh)
        self.iou_threshold = float(iou_threshold)
        self.k = min(int(top_k), int(model.n_classes) * int(model.num_anchors))
        self.max_per_class = min(int(top_k), int(nms_max_output_size or top_k))
        self.n_anchors = int(model.num_anchors)


class OnnxNMS(_NMSBase):
    """Decoding + per-class NMS + top-k in the ONNX graph (see the module docstring for the contract).

    After ``NonMaxSuppression`` the kept scores are scattered into a zero ``[B, C * N]`` map and one
    ``TopK`` per image pools the classes: no loop, so the graph has a dynamic batch.
    """

    def forward(self, cls_logits: Tensor, box_deltas: Tensor) -> tuple[Tensor, Tensor]:
        scores_all, boxes = self.decode(cls_logits, box_deltas)
        scores = scores_all[:, :, 1:].transpose(1, 2)  # [B, C, N]
        sel = _NonMaxSuppression.apply(boxes, scores, self.max_per_class, self.iou_threshold, self.confidence_thresh)
        b, c, i = sel[:, 0], sel[:, 1], sel[:, 2]
        flat_idx = c * self.n_anchors + i
        kept = torch.zeros_like(scores).reshape(scores.shape[0], -1)  # [B, C * N]
        kept = kept.index_put((b, flat_idx), scores[b, c, i])
        top, idx = kept.topk(self.k, dim=1)  # sorted, descending
        labels = torch.div(idx, self.n_anchors, rounding_mode="floor") + 1
        anchor = idx % self.n_anchors
        sel_boxes = torch.gather(boxes, 1, anchor.unsqueeze(-1).expand(-1, -1, 4))
        valid = top > 0  # kept scores are > confidence_thresh >= 0; padding is exactly 0
        det = torch.cat((labels.unsqueeze(-1).to(top.dtype), top.unsqueeze(-1), sel_boxes), dim=-1)
        det = det * valid.unsqueeze(-1).to(det.dtype)
        return det, valid.sum(dim=1)


class ScriptNMS(_NMSBase):
    """Decoding + per-class NMS + top-k for TorchScript (``torch.jit.script``); same contract as
    :class:`OnnxNMS`. Loops over images and classes (TorchScript runs them as a graph);
    boxes are never looped over in Python."""

    def forward(self, cls_logits: Tensor, box_deltas: Tensor) -> tuple[Tensor, Tensor]:
        scores_all, boxes = self.decode(cls_logits, box_deltas)
        n_img = scores_all.shape[0]
        n_cls = scores_all.shape[2] - 1
        det = torch.zeros((n_img, self.k, 6), dtype=scores_all.dtype, device=scores_all.device)
        counts = torch.zeros((n_img,), dtype=torch.int64, device=scores_all.device)
        for b in range(n_img):
            rows: list[Tensor] = []
            for c in range(1, n_cls + 1):
                s = scores_all[b, :, c]
                ids = torch.nonzero(s > self.confidence_thresh).flatten()
                if ids.numel() == 0:
                    continue
                keep = nms(boxes[b, ids], s[ids], self.iou_threshold)[: self.max_per_class]
                ids = ids[keep]
                lab = torch.full((ids.numel(), 1), float(c), dtype=s.dtype, device=s.device)
                rows.append(torch.cat((lab, s[ids].unsqueeze(1), boxes[b, ids]), dim=1))
            if len(rows) == 0:
                continue
            r = torch.cat(rows)
            order = torch.sort(r[:, 1], descending=True, stable=True)[1][: self.k]
            n = order.numel()
            det[b, :n] = r[order]
            counts[b] = n
        return det, counts
