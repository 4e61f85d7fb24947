"""Anchor coverage of a dataset's boxes, and fitting anchor scales/aspect ratios to the data.

``coverage()`` answers "can my anchors reach my objects?": for every ground-truth box (in network
input pixels, i.e. after the model's resize) the best IoU over all anchors, the fraction of boxes
whose best IoU reaches ``pos_iou_threshold`` (these get a multi-matched positive) or
``neg_iou_limit``, broken down by class, by box size and by predictor layer, plus the mean number of
positive anchors per box under the configured matching.

The best IoU is exact and cheap: anchors of one size sit on a regular grid and IoU falls off
monotonically with the centre distance along each axis, so the best anchor of each size is the one
at the nearest grid cell (clipped anchors, which are not on a grid, are checked one by one).

``fit_anchors()`` searches the per-layer scales (and optionally per-layer aspect ratios) that
maximise coverage at the same anchor count: initial scales from box-size quantiles, then coordinate
descent with shrinking multiplicative steps, keeping the scales increasing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .anchors import AnchorGenerator

__all__ = ["CoverageReport", "coverage", "best_anchor_iou", "fit_anchors", "FitResult", "plot_anchor_coverage",
           "SIZE_BUCKETS"]

#: box-size buckets on ``sqrt(w * h)`` in input pixels (COCO's small/medium/large split at 32/96 px)
SIZE_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("tiny (<16px)", 0.0, 16.0),
    ("small (16-32px)", 16.0, 32.0),
    ("medium (32-96px)", 32.0, 96.0),
    ("large (>=96px)", 96.0, math.inf),
)


def _as_boxes(boxes: Tensor | Sequence[Tensor] | np.ndarray) -> Tensor:
    if isinstance(boxes, list | tuple):
        parts = [torch.as_tensor(np.asarray(b, dtype=np.float64)).reshape(-1, 4) for b in boxes]
        return torch.cat(parts) if parts else torch.zeros((0, 4), dtype=torch.float64)
    return torch.as_tensor(np.asarray(boxes, dtype=np.float64)).reshape(-1, 4)


def best_anchor_iou(boxes_xyxy: Tensor, generator: AnchorGenerator) -> tuple[Tensor, Tensor]:
    """Best IoU over all anchors for each box, and the predictor layer of that best anchor.

    Args:
        boxes_xyxy: ``[M, 4]`` boxes in network-input pixels (float).
        generator: the anchors.

    Returns:
        ``(best_iou float64 [M], best_layer int64 [M])``. Zero-size boxes get IoU 0.
    """
    from .matching import SSDTargetEncoder

    b = torch.as_tensor(boxes_xyxy, dtype=torch.float64).reshape(-1, 4)
    if b.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)
    enc = SSDTargetEncoder(generator, generator.image_size, 1)
    h, w = generator.image_size
    if enc.normalize_coords:
        b = b / torch.tensor([w, h, w, h], dtype=torch.float64)
    cent = torch.stack(((b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]), -1)
    corn = torch.stack((cent[:, 0] - cent[:, 2] / 2, cent[:, 1] - cent[:, 3] / 2,
                        cent[:, 0] + cent[:, 2] / 2, cent[:, 1] + cent[:, 3] / 2), -1)
    area = (corn[:, 2] - corn[:, 0]).clamp(min=0) * (corn[:, 3] - corn[:, 1]).clamp(min=0)
    per_group, anchors_idx = enc.best_iou_per_group(cent, corn, area)  # [M, Q], [M, Q]
    best, arg = per_group.max(dim=1)
    best_anchor = anchors_idx.gather(1, arg[:, None]).squeeze(1)
    bounds = torch.tensor([s.stop for s in generator.layer_slices()])
    layer = torch.searchsorted(bounds, best_anchor, right=True)
    valid = area > 0
    return torch.where(valid, best, 0.0), layer


@dataclass
class CoverageReport:
    """What :func:`coverage` found. Fractions are over boxes; ``n_boxes`` counts them."""

    n_boxes: int
    pos_iou_threshold: float
    neg_iou_limit: float
    frac_pos: float  # best IoU >= pos_iou_threshold
    frac_neutral: float  # neg_iou_limit <= best IoU < pos_iou_threshold
    frac_below: float  # best IoU < neg_iou_limit
    mean_best_iou: float
    mean_positives: float | None  # positives per box with the configured matching (None when not computed)
    by_class: dict[str, dict[str, float]] = field(default_factory=dict)
    by_size: dict[str, dict[str, float]] = field(default_factory=dict)
    by_layer: dict[int, int] = field(default_factory=dict)  # boxes whose best anchor is in that layer
    best_iou: Tensor | None = None  # [M] per box

    def summary(self) -> str:
        """A human-readable table."""
        lines = [
            f"anchor coverage of {self.n_boxes} boxes: best IoU >= {self.pos_iou_threshold:g}: "
            f"{100 * self.frac_pos:.1f}%, in [{self.neg_iou_limit:g}, {self.pos_iou_threshold:g}): "
            f"{100 * self.frac_neutral:.1f}%, below {self.neg_iou_limit:g}: {100 * self.frac_below:.1f}%; "
            f"mean best IoU {self.mean_best_iou:.3f}"
            + (f"; {self.mean_positives:.2f} positive anchors per box" if self.mean_positives is not None else "")
        ]
        for title, table in (("class", self.by_class), ("box size", self.by_size)):
            if not table:
                continue
            lines.append(f"  {title:<18}{'boxes':>8}{'>=pos':>9}{'>=neg':>9}{'mean IoU':>10}")
            for name, row in table.items():
                lines.append(f"  {name:<18}{int(row['boxes']):>8}{100 * row['frac_pos']:>8.1f}%"
                             f"{100 * row['frac_neg']:>8.1f}%{row['mean_iou']:>10.3f}")
        if self.by_layer:
            lines.append("  best anchor per predictor layer: "
                         + ", ".join(f"layer {k}: {v}" for k, v in sorted(self.by_layer.items())))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "best_iou"}
        d["by_layer"] = {str(k): v for k, v in self.by_layer.items()}
        return d


def _stats(best: Tensor, pos: float, neg: float) -> dict[str, float]:
    n = best.numel()
    if n == 0:
        return {"boxes": 0, "frac_pos": 0.0, "frac_neg": 0.0, "mean_iou": 0.0}
    return {
        "boxes": n,
        "frac_pos": float((best >= pos).double().mean()),
        "frac_neg": float((best >= neg).double().mean()),
        "mean_iou": float(best.mean()),
    }


def coverage(
    boxes: Sequence[Tensor] | Tensor,
    generator: AnchorGenerator,
    labels: Sequence[Tensor] | Tensor | None = None,
    class_names: Sequence[str] | None = None,
    pos_iou_threshold: float = 0.5,
    neg_iou_limit: float = 0.3,
    matching: str | None = "multi",
    variances: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
) -> CoverageReport:
    """Anchor coverage of ground-truth boxes.

    Args:
        boxes: per-image ``[G_i, 4]`` xyxy boxes in network-input pixels (after resizing to
            ``generator.image_size``), or one ``[M, 4]`` tensor (then positives per box are not
            computed, since matching is per image).
        generator: the model's anchors.
        labels: per-image ``[G_i]`` labels ``1..n`` (or ``[M]``), for the per-class breakdown.
        class_names: names of labels ``1..n``.
        pos_iou_threshold, neg_iou_limit: the encoder's thresholds.
        matching: ``'multi'``/``'bipartite'`` to count positive anchors per box with
            :class:`~ssdkit.matching.SSDTargetEncoder`, or ``None`` to skip that (faster).
        variances: passed to the encoder (irrelevant to the counts).

    Returns:
        :class:`CoverageReport`.
    """
    per_image = isinstance(boxes, list | tuple)
    flat = _as_boxes(boxes)
    best, layer = best_anchor_iou(flat, generator)
    n = flat.shape[0]
    rep = CoverageReport(
        n_boxes=n, pos_iou_threshold=pos_iou_threshold, neg_iou_limit=neg_iou_limit,
        frac_pos=float((best >= pos_iou_threshold).double().mean()) if n else 0.0,
        frac_neutral=float(((best >= neg_iou_limit) & (best < pos_iou_threshold)).double().mean()) if n else 0.0,
        frac_below=float((best < neg_iou_limit).double().mean()) if n else 0.0,
        mean_best_iou=float(best.mean()) if n else 0.0, mean_positives=None, best_iou=best,
    )
    side = ((flat[:, 2] - flat[:, 0]).clamp(min=0) * (flat[:, 3] - flat[:, 1]).clamp(min=0)).sqrt()
    for name, lo, hi in SIZE_BUCKETS:
        sel = (side >= lo) & (side < hi)
        if bool(sel.any()):
            rep.by_size[name] = _stats(best[sel], pos_iou_threshold, neg_iou_limit)
    if n:
        rep.by_layer = {int(k): int(v) for k, v in zip(*torch.unique(layer, return_counts=True))}
    if labels is not None:
        lab = (torch.cat([torch.as_tensor(x).reshape(-1) for x in labels]) if isinstance(labels, list | tuple)
               else torch.as_tensor(labels).reshape(-1)).long()
        if lab.numel() != n:
            raise ValueError(f"labels give {lab.numel()} boxes but boxes give {n}")
        for c in sorted(set(lab.tolist())):
            name = class_names[c - 1] if class_names and 0 < c <= len(class_names) else str(c)
            rep.by_class[name] = _stats(best[lab == c], pos_iou_threshold, neg_iou_limit)
    if per_image and matching is not None and n:
        from .matching import SSDTargetEncoder

        enc = SSDTargetEncoder(generator, generator.image_size, 1, matching=matching,
                               pos_iou_threshold=pos_iou_threshold, neg_iou_limit=neg_iou_limit,
                               variances=variances, degenerate="remove")
        imgs = [_as_boxes([b]) for b in boxes]
        total_pos, total_boxes = 0, 0
        for start in range(0, len(imgs), 64):
            chunk = imgs[start : start + 64]
            valid = [b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])] for b in chunk]
            lab, _ = enc(valid, [torch.ones(v.shape[0], dtype=torch.int64) for v in valid])
            total_pos += int((lab > 0).sum())
            total_boxes += sum(v.shape[0] for v in valid)
        rep.mean_positives = total_pos / max(1, total_boxes)
    return rep


@dataclass
class FitResult:
    """Outcome of :func:`fit_anchors`."""

    scales: list[float]
    aspect_ratios: list[list[float]]
    before: CoverageReport
    after: CoverageReport
    evaluations: int

    def yaml_snippet(self) -> str:
        def fmt(xs: Sequence[float]) -> str:
            return "[" + ", ".join(f"{x:.4g}" for x in xs) + "]"

        ars = "[" + ", ".join(fmt(a) for a in self.aspect_ratios) + "]"
        return f"model:\n  scales: {fmt(self.scales)}\n  aspect_ratios: {ars}\n"


def _objective(best: Tensor, pos: float, neg: float) -> float:
    # coverage at the positive threshold first, then at the neutral one, then the mean IoU as tie-break
    if best.numel() == 0:
        return 0.0
    return float((best >= pos).double().mean() + 0.1 * (best >= neg).double().mean() + 0.01 * best.mean())


def _with(generator: AnchorGenerator, scales: Sequence[float], ars: Sequence[Sequence[float]]) -> AnchorGenerator:
    cfg = generator.config()
    cfg["scales"] = [float(s) for s in scales]
    cfg["aspect_ratios"] = [[float(a) for a in layer] for layer in ars]
    return AnchorGenerator(**cfg)


def fit_anchors(
    boxes: Sequence[Tensor] | Tensor,
    generator: AnchorGenerator,
    pos_iou_threshold: float = 0.5,
    neg_iou_limit: float = 0.3,
    fit_aspect_ratios: bool = False,
    max_rounds: int = 6,
    max_boxes: int = 20000,
    seed: int = 0,
) -> FitResult:
    """Search scales (and optionally aspect ratios) that maximise coverage at the same anchor count.

    The anchor count depends on the feature maps and the number of aspect ratios per layer, which
    are kept; only their values change. Scales start from box-size quantiles (layer ``k`` gets the
    ``k``-th of ``n_layers`` equally spaced quantiles of ``sqrt(w h) / min(H, W)``) when that is
    better than the current ones, then each scale is refined by coordinate descent with
    multiplicative steps (x1.25, shrinking), keeping scales increasing. Aspect ratios (optional):
    per layer, the non-square ratios are replaced by quantiles of the log aspect ratio of the boxes
    whose best anchor is in that layer, keeping 1.0 and the count.

    Args:
        boxes: per-image boxes (or ``[M, 4]``) in network-input pixels.
        generator: the current anchors (feature maps, counts, steps, offsets are kept).
        max_boxes: subsample to this many boxes for the search (the reports use all of them).

    Returns:
        :class:`FitResult` with the new ``scales``/``aspect_ratios`` and before/after coverage.
    """
    flat = _as_boxes(boxes)
    ok = (flat[:, 2] > flat[:, 0]) & (flat[:, 3] > flat[:, 1])
    flat = flat[ok]
    if flat.shape[0] == 0:
        raise ValueError("no valid boxes to fit anchors to")
    search = flat
    if flat.shape[0] > max_boxes:
        g = torch.Generator().manual_seed(seed)
        search = flat[torch.randperm(flat.shape[0], generator=g)[:max_boxes]]
    n_layers = generator.n_layers
    ars = [list(a) for a in generator.aspect_ratios]
    evals = 0

    def score(scales: Sequence[float], ar: Sequence[Sequence[float]]) -> float:
        nonlocal evals
        evals += 1
        best, _ = best_anchor_iou(search, _with(generator, scales, ar))
        return _objective(best, pos_iou_threshold, neg_iou_limit)

    cur = list(generator.scales)
    cur_score = score(cur, ars)
    size = min(generator.image_size)
    rel = ((search[:, 2] - search[:, 0]) * (search[:, 3] - search[:, 1])).sqrt() / size
    qs = torch.quantile(rel, torch.linspace(0.5 / n_layers, 1 - 0.5 / n_layers, n_layers, dtype=torch.float64))
    init = [float(q) for q in qs]
    init.append(min(1.05, init[-1] * (init[-1] / init[-2]) if n_layers > 1 else init[-1] * 1.5))
    init = [max(1e-3, s) for s in init]
    for k in range(1, len(init)):
        init[k] = max(init[k], init[k - 1] * 1.01)
    init_score = score(init, ars)
    if init_score > cur_score:
        cur, cur_score = init, init_score

    def refine_scales() -> None:
        nonlocal cur, cur_score
        step = 1.25
        for _ in range(max_rounds):
            improved = False
            for k in range(len(cur)):
                for factor in (step, 1 / step):
                    cand = list(cur)
                    cand[k] = cand[k] * factor
                    lo = cand[k - 1] if k > 0 else 1e-3
                    hi = cand[k + 1] if k + 1 < len(cand) else 2.0
                    if not (lo < cand[k] < hi):
                        continue
                    sc = score(cand, ars)
                    if sc > cur_score + 1e-12:
                        cur, cur_score, improved = cand, sc, True
                        break
            if not improved:
                step = math.sqrt(step)
                if step < 1.01:
                    break

    refine_scales()
    if fit_aspect_ratios:
        _, layer = best_anchor_iou(search, _with(generator, cur, ars))
        log_ar = torch.log((search[:, 2] - search[:, 0]) / (search[:, 3] - search[:, 1]))
        cand_ars = []
        for k in range(n_layers):
            n_other = len([a for a in ars[k] if a != 1.0])
            sel = log_ar[layer == k]
            if n_other == 0 or sel.numel() < 4 * n_other:
                cand_ars.append(list(ars[k]))
                continue
            q = torch.quantile(sel, torch.linspace(0.5 / n_other, 1 - 0.5 / n_other, n_other, dtype=torch.float64))
            others = [float(math.exp(v)) for v in q]
            others = [a if abs(math.log(a)) > 0.05 else (1.1 if a >= 1 else 1 / 1.1) for a in others]
            cand_ars.append(([1.0] if 1.0 in ars[k] else []) + others)
        sc = score(cur, cand_ars)
        if sc > cur_score:
            ars, cur_score = cand_ars, sc
            refine_scales()
    before = coverage(flat, generator, pos_iou_threshold=pos_iou_threshold, neg_iou_limit=neg_iou_limit,
                      matching=None)
    after = coverage(flat, _with(generator, cur, ars), pos_iou_threshold=pos_iou_threshold,
                     neg_iou_limit=neg_iou_limit, matching=None)
    return FitResult(scales=[float(s) for s in cur], aspect_ratios=ars, before=before, after=after,
                     evaluations=evals)


def plot_anchor_coverage(
    boxes: Sequence[Tensor] | Tensor, generator: AnchorGenerator, path: str | Path, title: str | None = None
) -> Path:
    """Scatter of box widths/heights (coloured by best IoU) over the anchor shapes of each layer."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    flat = _as_boxes(boxes)
    best, _ = best_anchor_iou(flat, generator)
    w = (flat[:, 2] - flat[:, 0]).numpy()
    h = (flat[:, 3] - flat[:, 1]).numpy()
    fig, ax = plt.subplots(figsize=(7, 6))
    sc = ax.scatter(w, h, c=best.numpy(), cmap="viridis", vmin=0, vmax=1, s=6, alpha=0.6, label="boxes")
    fig.colorbar(sc, ax=ax, label="best anchor IoU")
    markers = "os^vD<>ph*"
    for k in range(generator.n_layers):
        wh = generator.box_sizes(k).numpy()
        ax.scatter(wh[:, 0], wh[:, 1], marker=markers[k % len(markers)], s=90, facecolors="none",
                   edgecolors=plt.cm.tab10(k % 10), linewidths=1.8,
                   label=f"layer {k} anchors ({'x'.join(map(str, generator.feature_map_sizes[k]))})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("width (input px)")
    ax.set_ylabel("height (input px)")
    ax.set_title(title or "box sizes over anchor shapes")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out


def boxes_from_dataset(
    dataset: Any, image_size: Sequence[int] | int, max_images: int | None = None
) -> tuple[list[Tensor], list[Tensor]]:
    """Ground-truth boxes of a dataset after the model's resize to ``image_size``, without decoding images.

    Boxes are scaled from each image's original size to ``(H, W)`` (the default SSD preprocessing,
    a plain resize). Difficult boxes are included (they are trained on unless excluded).

    Returns:
        per-image ``[G_i, 4]`` float64 boxes in network pixels, and per-image ``[G_i]`` labels.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    boxes, labels = [], []
    for i in range(n):
        t = dataset.annotation(i)
        oh, ow = t["orig_size"]
        b = torch.as_tensor(t["boxes"], dtype=torch.float64).reshape(-1, 4)
        if oh and ow:
            b = b * torch.tensor([w / ow, h / oh, w / ow, h / oh], dtype=torch.float64)
        boxes.append(b)
        labels.append(torch.as_tensor(t["labels"]).reshape(-1))
    return boxes, labels
