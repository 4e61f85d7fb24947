"""End-of-run plots: ``loss.png``, ``map.png``, ``val_predictions.png`` (PR curves: ``ssdkit.eval``).

All drawn on matplotlib's Agg canvas without pyplot state, written atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_losses", "plot_map", "plot_val_predictions"]


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    from ..eval.report import atomic_write

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def _column(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(epoch, value)`` arrays of the rows where ``key`` is a finite number."""
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if v is not None and math.isfinite(float(v)):
            xs.append(float(r["epoch"]))
            ys.append(float(v))
    return np.asarray(xs), np.asarray(ys)


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or y.size < window:
        return y
    kernel = np.ones(window) / window
    return np.convolve(y, kernel, mode="valid")


def plot_losses(results: Sequence[Mapping[str, Any]], iterations: Sequence[Mapping[str, Any]],
                path: str | Path) -> Path:
    """Training loss per iteration (smoothed) and per epoch, validation loss, and the loss parts.

    ``results``: ``results.csv`` rows; ``iterations``: ``iterations.csv`` rows (may be empty).
    The x axis is in epochs (iterations are placed at ``iteration / iterations-per-epoch``).
    """
    fig = _figure((11.0, 4.2))
    ax, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    per_epoch = {}
    for r in results:
        if r.get("iteration"):
            per_epoch[int(r["epoch"])] = int(r["iteration"])
    if iterations and per_epoch:
        it = np.asarray([float(r["iteration"]) for r in iterations if r.get("loss") is not None])
        lv = np.asarray([float(r["loss"]) for r in iterations if r.get("loss") is not None])
        # iteration -> fractional epoch, piecewise linear through the epoch ends
        ends_e = np.asarray([0.0, *per_epoch.keys()], dtype=float)
        ends_i = np.asarray([0.0, *per_epoch.values()], dtype=float)
        if it.size and ends_i[-1] > 0:
            x = np.interp(it, ends_i, ends_e, right=np.nan)
            ok = np.isfinite(x)
            if ok.sum() > 1:
                ax.plot(x[ok], lv[ok], color="tab:blue", alpha=0.25, lw=0.8, label="train (iteration)")
                w = max(1, int(ok.sum() // 50))
                if w > 1:
                    ys = _smooth(lv[ok], w)
                    ax.plot(x[ok][w - 1:], ys, color="tab:blue", alpha=0.6, lw=1.0, label=f"train (mean of {w})")
    for key, style, label in (("loss", "o-", "train (epoch mean)"), ("val_loss", "s-", "validation")):
        xs, ys = _column(results, key)
        if xs.size:
            ax.plot(xs, ys, style, ms=3, lw=1.5, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("MultiBox loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    for key, label in (("cls_loss", "classification"), ("box_loss", "localisation")):
        xs, ys = _column(results, key)
        if xs.size:
            ax2.plot(xs, ys, "o-", ms=3, label=label)
    ax2.set_xlabel("epoch")
    ax2.set_title("loss parts (train, epoch mean)")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8)
    return _save(fig, path)


def plot_map(results: Sequence[Mapping[str, Any]], path: str | Path, metric: str = "voc07") -> Path:
    """Validation mAP per evaluated epoch (best epoch marked)."""
    fig = _figure((6.4, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    xs, ys = _column(results, "map")
    if xs.size:
        ax.plot(xs, ys, "o-", ms=4, color="tab:green", label=f"mAP ({metric})")
        k = int(np.argmax(ys))
        ax.plot([xs[k]], [ys[k]], "*", ms=12, color="tab:red", label=f"best {ys[k]:.4f} @ epoch {int(xs[k])}")
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no validation was run", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mAP")
    ax.set_title("validation mAP")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_val_predictions(samples: Sequence[Any], class_names: Sequence[str], path: str | Path,
                         score_threshold: float = 0.3, pairs_per_row: int = 2, min_side: int = 256) -> Path:
    """A grid of validation images: ground truth (left) beside predictions above ``score_threshold`` (right).

    ``samples``: :class:`ssdkit.engine.evaluator.Sample` objects (network pixels); small inputs are
    enlarged to ``min_side`` pixels so that labels stay readable.
    """
    from ..viz import caption, draw_boxes, draw_detections, enlarge, image_grid, save_image

    tiles = []
    for s in samples:
        img, f = enlarge(s.image, min_side)
        dets = s.detections.clone()
        dets[:, 2:] *= f
        gt = draw_boxes(img, s.gt_boxes * f, s.gt_labels, class_names=class_names, color=(0, 200, 0))
        n_pred = int((dets[:, 1] >= score_threshold).sum()) if len(dets) else 0
        pred = draw_detections(img, dets, class_names, score_threshold=score_threshold)
        tiles.append(caption(gt, f"{s.image_id}: ground truth ({len(s.gt_boxes)})"))
        tiles.append(caption(pred, f"predictions >= {score_threshold:g} ({n_pred})"))
    if not tiles:
        raise ValueError("no validation samples to draw")
    return save_image(path, image_grid(tiles, ncols=2 * pairs_per_row))
