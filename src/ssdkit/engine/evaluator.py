"""``evaluate(model, data, metric)``: inference over a dataset and VOC/COCO metrics.

Used by the trainer (validation every ``eval.every`` epochs) and by ``ssdkit evaluate``.

Pipeline per batch: images (uint8 ``[B, 3, H, W]`` at the model's input size, from the model's own
deterministic preprocessing :func:`ssdkit.data.eval_preprocessing`) -> ``model(images)`` (one
forward, optionally under autocast) -> optional validation loss (targets encoded with the model's
encoder) -> :func:`ssdkit.postprocess.decode_detections` -> boxes mapped back to the **original
image pixels** with the batch ``inverse`` and clipped to the original size -> the evaluator. Ground
truth is mapped back the same way (the preprocessing is a resize, optionally a pad, so this is exact
up to float rounding). Published numbers are computed in original pixels, so these are comparable.

In a distributed run every rank evaluates its shard (no sample repeated) and rank 0 computes the
metric from everything gathered; ``map`` and ``val_loss`` are broadcast to every rank.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .distributed import DistInfo, all_reduce_sum, broadcast_object, gather_objects

__all__ = ["evaluate", "EvalOutput", "Sample", "METRICS", "make_eval_loader", "compute_metric"]

log = logging.getLogger("ssdkit.engine")

METRICS = ("voc07", "voc10", "coco")


@dataclass
class Sample:
    """One validation image kept for plotting, in network pixels.

    ``image`` uint8 ``[3, H, W]``; ``gt_boxes`` float32 ``[G, 4]`` xyxy; ``gt_labels`` int64 ``[G]``;
    ``detections`` float32 ``[K, 6]`` ``[class_id, score, x1, y1, x2, y2]``; ``image_id`` str.
    """

    image: Tensor
    gt_boxes: Tensor
    gt_labels: Tensor
    detections: Tensor
    image_id: str


@dataclass
class EvalOutput:
    """What :func:`evaluate` returns.

    Attributes:
        metric: ``'voc07'``, ``'voc10'`` or ``'coco'``.
        map: the headline number (VOC mAP, or COCO AP@[.5:.95]); NaN without ground truth.
        result: the :class:`~ssdkit.eval.VOCResult` / ``COCOResult`` (rank 0 only; ``None`` elsewhere).
        val_loss: mean validation loss (weighted by images) when a loss was computed, else ``None``.
        n_images: images evaluated (all ranks).
        seconds: wall time.
        detections, targets: per image, in original pixels (rank 0 only), as given to the evaluator.
        samples: the first images of rank 0 for plotting (network pixels).
    """

    metric: str
    map: float
    result: Any
    val_loss: float | None
    n_images: int
    seconds: float
    class_names: list[str]
    detections: list[Tensor] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: metric, map, val_loss, images, time and the result's per-class rows."""
        out: dict[str, Any] = {"metric": self.metric, "map": self.map, "val_loss": self.val_loss,
                               "n_images": self.n_images, "eval_seconds": round(self.seconds, 3)}
        if self.result is not None:
            out.update({k: v for k, v in self.result.to_dict().items() if k not in ("map", "metric")})
        return out


def make_eval_loader(model: Any, dataset: Any, batch_size: int = 16, workers: int = 0, keep_aspect: bool = False,
                     encoder: Any = None, dist_info: DistInfo | None = None) -> Any:
    """A loader over ``dataset`` with the model's deterministic preprocessing (sharded under DDP)."""
    from ..data import build_loader, eval_preprocessing
    from .sampler import EpochSampler

    info = dist_info or DistInfo()
    sampler = EpochSampler(len(dataset), shuffle=False, rank=info.rank, world_size=info.world_size, pad=False)
    return build_loader(dataset, batch_size=batch_size, shuffle=False, workers=workers,
                        transforms=eval_preprocessing(tuple(model.image_size), keep_aspect=keep_aspect),
                        encoder=encoder, sampler=sampler)


def _make_evaluator(metric: str, class_names: list[str], iou_threshold: float) -> Any:
    if metric == "coco":
        from ..eval.coco import COCOEvaluator

        return COCOEvaluator(class_names)
    from ..eval import VOCEvaluator

    return VOCEvaluator(class_names, iou_threshold=iou_threshold, metric=metric)  # type: ignore[arg-type]


def compute_metric(metric: str, detections: list[Tensor], targets: list[dict[str, Any]], class_names: list[str],
                   iou_threshold: float = 0.5) -> Any:
    """Another metric from the detections and targets an :func:`evaluate` run kept (original pixels):
    one inference pass serves VOC07, VOC10 and COCO. Returns the ``VOCResult`` / ``COCOResult``."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    ev = _make_evaluator(metric, class_names, iou_threshold)
    ev.update(detections, targets)
    return ev.compute()


def _to_original(boxes: Tensor, inverse: Tensor, orig_hw: Tensor) -> Tensor:
    """``[K, 4]`` network-pixel boxes -> original pixels (``orig = (net - o) / s``), clipped to the image."""
    from ..data import invert_boxes

    b = invert_boxes(boxes.double(), inverse.double())
    h, w = float(orig_hw[0]), float(orig_hw[1])
    b[:, 0::2] = b[:, 0::2].clamp(0, w)
    b[:, 1::2] = b[:, 1::2].clamp(0, h)
    return b.float()


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    import contextlib

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: Any,
    data: Any,
    metric: str = "voc07",
    *,
    batch_size: int = 16,
    workers: int = 0,
    device: str | torch.device | None = None,
    confidence_thresh: float = 0.01,
    nms_iou: float = 0.45,
    top_k: int = 200,
    nms: str = "per_class",
    iou_threshold: float = 0.5,
    keep_aspect: bool = False,
    loss_fn: Any = None,
    encoder: Any = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    dist_info: DistInfo | None = None,
    keep_samples: int = 0,
    progress: bool = False,
    class_names: list[str] | None = None,
    forward: Any = None,
) -> EvalOutput:
    """Run ``model`` over ``data`` and compute ``metric``.

    Args:
        model: an :class:`~ssdkit.models.SSD` (its ``image_size``, anchors, variances, class names).
        data: an ssdkit dataset (preprocessed here with the model's ``eval_preprocessing``) or an
            iterable of batch dicts (``images`` uint8 ``[B, 3, H, W]`` at the model size, ``targets``,
            ``inverse`` ``[B, 4]``, ``orig_size`` ``[B, 2]``; ``labels``/``box_targets`` for the loss).
        metric: ``'voc07'`` (11-point), ``'voc10'`` (all-point) or ``'coco'``.
        batch_size, workers, keep_aspect: loader settings when ``data`` is a dataset.
        device: where to run (default: the model's device).
        confidence_thresh, nms_iou, top_k, nms: decoding (:func:`ssdkit.postprocess.decode_detections`).
        iou_threshold: VOC matching IoU.
        loss_fn: a :class:`~ssdkit.loss.MultiBoxLoss` to also compute the validation loss; the
            targets are encoded with ``encoder`` (default ``model.make_encoder()``) unless the batches
            carry ``labels``/``box_targets``.
        autocast_dtype: run the forward under autocast with this dtype (``torch.bfloat16``...).
        channels_last: feed channels-last images.
        dist_info: shard and gather over a process group (see the module docstring).
        keep_samples: keep the first N images with ground truth and detections for plotting.
        progress: show a progress bar.
        class_names: default ``model.class_names``.
        forward: callable used instead of ``model`` for the forward pass (e.g. a compiled module).

    Returns:
        an :class:`EvalOutput`.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    from ..data.base import DetectionDataset
    from ..postprocess import decode_detections

    t0 = time.perf_counter()
    info = dist_info or DistInfo()
    names = list(class_names or model.class_names)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    if loss_fn is not None and encoder is None:
        encoder = model.make_encoder()
    if isinstance(data, DetectionDataset):
        loader: Iterable[Mapping[str, Any]] = make_eval_loader(model, data, batch_size, workers, keep_aspect,
                                                               dist_info=info)
    else:
        loader = data
    net = forward or model
    was_training = model.training
    model.eval()
    dets_all: list[Tensor] = []
    targets_all: list[dict[str, Any]] = []
    samples: list[Sample] = []
    loss_sum, loss_n = 0.0, 0
    bar = None
    if progress and info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(loader) if hasattr(loader, "__len__") else None, desc="eval", unit="batch",  # type: ignore[arg-type]
                   leave=False, dynamic_ncols=True)
    try:
        for batch in loader:
            images = batch["images"].to(dev, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with _autocast(dev, autocast_dtype):
                cls_logits, box_deltas = net(images)
            cls_logits, box_deltas = cls_logits.float(), box_deltas.float()
            b = images.shape[0]
            if loss_fn is not None:
                if "labels" in batch and "box_targets" in batch:
                    labels, box_t = batch["labels"], batch["box_targets"]
                else:
                    labels, box_t = encoder([t["boxes"] for t in batch["targets"]],
                                            [t["labels"] for t in batch["targets"]])
                parts = loss_fn(cls_logits, box_deltas, labels.to(dev), box_t.to(dev))
                loss_sum += float(parts["loss"]) * b
                loss_n += b
            dets = decode_detections(
                cls_logits, box_deltas, model.anchors, model.image_size, confidence_thresh=confidence_thresh,
                iou_threshold=nms_iou, top_k=top_k, nms=nms, variances=model.variances,
                normalize_coords=model.anchor_generator.normalize_coords,
            )
            inverse, orig = batch["inverse"], batch["orig_size"]
            for i, (d, t) in enumerate(zip(dets, batch["targets"])):
                d = d.detach().cpu()
                if len(samples) < keep_samples:
                    samples.append(Sample(batch["images"][i].cpu(), torch.as_tensor(t["boxes"]).float(),
                                          torch.as_tensor(t["labels"]).long(), d, str(t["image_id"])))
                od = torch.cat((d[:, :2], _to_original(d[:, 2:], inverse[i], orig[i])), dim=1)
                gt = torch.as_tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4)
                dets_all.append(od)
                targets_all.append({
                    "boxes": _to_original(gt, inverse[i], orig[i]),
                    "labels": torch.as_tensor(t["labels"]).long(),
                    "difficult": torch.as_tensor(t.get("difficult", torch.zeros(len(gt), dtype=torch.bool))).bool(),
                    "image_id": str(t["image_id"]),
                    "orig_size": tuple(int(v) for v in orig[i].tolist()),
                })
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)

    loss_sum, loss_n = all_reduce_sum([loss_sum, float(loss_n)], info)
    val_loss = loss_sum / loss_n if loss_fn is not None and loss_n > 0 else None
    if info.distributed:
        parts = gather_objects((dets_all, targets_all), info)
        dets_all = [d for p in parts for d in p[0]]
        targets_all = [t for p in parts for t in p[1]]
    result = None
    value = float("nan")
    if info.is_main:
        ev = _make_evaluator(metric, names, iou_threshold)
        if dets_all:
            ev.update(dets_all, targets_all)
            result = ev.compute()
            value = float(result.map)
    value = float(broadcast_object(value, info))
    n_images = len(targets_all) if info.is_main else 0
    n_images = int(broadcast_object(n_images, info))
    return EvalOutput(metric=metric, map=value, result=result, val_loss=val_loss, n_images=n_images,
                      seconds=time.perf_counter() - t0, class_names=names,
                      detections=dets_all if info.is_main else [], targets=targets_all if info.is_main else [],
                      samples=samples)
