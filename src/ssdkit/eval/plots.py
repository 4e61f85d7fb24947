"""Precision-recall curves of every class in one PNG (matplotlib, Agg canvas, no pyplot state).

For a :class:`~ssdkit.eval.voc.VOCResult` each curve is the devkit's raw precision/recall points
over the class's sorted detections; for a :class:`~ssdkit.eval.coco.COCOResult` it is COCO's
interpolated precision at the 101 recall thresholds at IoU 0.5 (area all, most detections).
Classes without ground truth have no defined recall and are listed in the title count only.
The legend gives each class's AP (for COCO: AP50, matching the curve).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .report import atomic_write

if TYPE_CHECKING:
    from .coco import COCOResult
    from .voc import VOCResult

__all__ = ["plot_pr"]


def _curves(result: VOCResult | COCOResult) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, str]:
    from .coco import COCOResult

    if isinstance(result, COCOResult):
        return result.pr_curves_50(), result.ap50, "AP50"
    return list(zip(result.recall, result.precision, strict=True)), result.ap, f"AP {result.metric}"


def plot_pr(result: VOCResult | COCOResult, path: str | Path, title: str | None = None, dpi: int = 110) -> Path:
    """Draw one curve per class with ground truth (``name (AP 0.812)`` in the legend) to ``path``.

    The PNG is written atomically; the parent folder is created. Returns ``path``.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves, ap, ap_name = _curves(result)
    n_gt = np.asarray(result.n_gt)
    shown = [i for i in range(len(curves)) if n_gt[i] > 0]
    fig = Figure(figsize=(8.0, 6.0) if len(shown) <= 12 else (10.0, 6.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = colormaps["tab20"] if len(shown) > 10 else colormaps["tab10"]
    styles = ("-", "--", ":", "-.")
    for j, i in enumerate(shown):
        rec, prec = curves[i]
        # a leading (0, p0) point makes a one-detection class visible as a segment
        x = np.concatenate(([0.0], rec)) if rec.size else np.array([0.0])
        y = np.concatenate(([prec[0]], prec)) if prec.size else np.array([0.0])
        ax.plot(
            x,
            y,
            styles[(j // colors.N) % len(styles)],
            color=colors(j % colors.N),
            lw=1.4,
            label=f"{result.class_names[i]} ({ap_name} {float(ap[i]):.3f})",
        )
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(True, alpha=0.3)
    skipped = len(curves) - len(shown)
    head = title or "Precision-recall per class"
    ax.set_title(head + (f" ({skipped} class(es) without ground truth not shown)" if skipped else ""), fontsize=10)
    if shown:
        ax.legend(
            loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False, ncol=1 if len(shown) <= 25 else 2
        )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write(path, lambda f: f.write(buf.getvalue()))
