"""Synthetic inputs and "realistic" untrained models, for export verification, tests and benchmarks.

- :func:`synthetic_images`: deterministic RGB images with filled shapes on a noisy background; the
  default verification set of :func:`ssdkit.deploy.export_model` when no sample images are given.
- :func:`realistic_heads_`: makes a randomly initialised detector produce a realistic score
  distribution (background-heavy softmax, a few confident boxes per image), so parity checks and
  NMS timings exercise the same paths as a trained model. An untrained SSD is useless for that:
  VGG's raw head outputs have a standard deviation of ~200 (every softmax is one-hot) and
  MobileNetV3's are ~1e-15 (every anchor scores exactly 1 / (C + 1)).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["synthetic_images", "synthetic_video", "recalibrate_bn_", "realistic_heads_", "realistic_ssd_"]


def synthetic_images(n: int, size: tuple[int, int] = (240, 320), seed: int = 0) -> list[np.ndarray]:
    """``n`` images ``ndarray[H, W, 3]`` uint8 RGB: noise plus 2-5 filled rectangles and ellipses."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for _ in range(n):
        img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
            x1, y1 = int(rng.integers(x0 + 8, w + 1)), int(rng.integers(y0 + 8, h + 1))
            color = tuple(int(c) for c in rng.integers(90, 256, 3))
            if rng.random() < 0.5:
                cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), color, -1)
            else:
                centre, axes = ((x0 + x1) // 2, (y0 + y1) // 2), ((x1 - x0) // 2, (y1 - y0) // 2)
                cv2.ellipse(img, centre, axes, 0, 0, 360, color, -1)
        out.append(img)
    return out


@torch.no_grad()
def realistic_heads_(
    forward: Callable[[Tensor], object],
    cls_convs: Sequence[nn.Conv2d],
    box_convs: Sequence[nn.Conv2d],
    n_outputs: int,
    images: Tensor,
    cls_std: float = 1.5,
    box_std: float = 0.5,
    background_logit: float = 5.0,
) -> None:
    """Rescale the final class/box convs in place so their outputs have the given spread.

    Args:
        forward: runs the whole model on ``images`` (outputs are ignored; hooks read the convs).
        cls_convs, box_convs: the last conv of each class / box predictor; class channels are laid
            out ``anchor * n_outputs + k`` with the background at ``k = 0`` (ssdkit and torchvision).
        n_outputs: ``n_classes + 1``.
        images: a batch the statistics are measured on.
        cls_std, box_std: target standard deviation of the weighted part of the outputs.
        background_logit: bias of the background channels (objects get 0): with 3 classes and
            ``cls_std=1.5`` about 20 anchors per image score above 0.3, most below 0.01.
    """
    stds: dict[int, float] = {}

    def hook(mod: nn.Module, inp: object, out: Tensor) -> None:
        stds[id(mod)] = float((out - mod.bias.view(1, -1, 1, 1)).std()) if mod.bias is not None else float(out.std())

    handles = [c.register_forward_hook(hook) for c in (*cls_convs, *box_convs)]
    try:
        forward(images)
    finally:
        for h in handles:
            h.remove()
    for convs, target in ((cls_convs, cls_std), (box_convs, box_std)):
        for c in convs:
            c.weight.mul_(target / max(stds[id(c)], 1e-30))
            if c.bias is not None:
                c.bias.zero_()
    for c in cls_convs:
        if c.bias is not None:
            c.bias[0::n_outputs] = background_logit


@torch.no_grad()
def recalibrate_bn_(model: nn.Module, run: Callable[[], object]) -> None:
    """Re-estimate every BatchNorm's running statistics from one call of ``run`` (which must run
    ``model`` on a representative batch); the model ends in eval mode. Freshly built BN layers have
    running variance 1, far from an untrained network's real activations."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration pass
        model.train()
        try:
            run()
        finally:
            for m, mom in zip(bns, saved):
                m.momentum = mom
    model.eval()


@torch.no_grad()
def realistic_ssd_(model: nn.Module, seed: int = 0, n_images: int = 4, **kw: float) -> nn.Module:
    """:func:`recalibrate_bn_` then :func:`realistic_heads_` for an :class:`~ssdkit.models.SSD`, on
    synthetic images. Returns the model in eval mode."""
    from ..models.ssd import final_conv

    h, w = model.image_size
    imgs = np.stack(synthetic_images(n_images, (h, w), seed)).transpose(0, 3, 1, 2)
    batch = torch.from_numpy(np.ascontiguousarray(imgs))
    recalibrate_bn_(model, lambda: model(batch))
    realistic_heads_(model, [final_conv(p) for p in model.heads.cls], [final_conv(p) for p in model.heads.box],
                     model.n_classes + 1, batch, **kw)
    return model


def synthetic_video(path: str, seconds: float = 3.0, fps: float = 30.0, size: tuple[int, int] = (120, 160),
                    codec: str = "mp4v") -> str:
    """Write a video of moving filled shapes (a red square sliding right, a green disc sliding down)
    with OpenCV; ``size`` is ``(H, W)``. Returns ``path``."""
    import cv2

    h, w = size
    n = round(seconds * fps)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*codec), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {codec!r} video to {path}")
    try:
        for i in range(n):
            t = i / max(1, n - 1)
            f = np.full((h, w, 3), 40, np.uint8)
            x = int(5 + t * (w - 50))
            cv2.rectangle(f, (x, h // 6), (x + 40, h // 6 + 40), (0, 0, 255), -1)  # BGR: red
            cv2.circle(f, (3 * w // 4, int(20 + t * (h - 40))), 15, (0, 255, 0), -1)
            writer.write(f)
    finally:
        writer.release()
    return path
