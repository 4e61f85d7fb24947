"""Batch preprocessing for inference: RGB frames -> uint8 ``[B, 3, H, W]`` + the inverse mapping.

The resize is exactly the evaluation preprocessing (:func:`ssdkit.data.eval_preprocessing`: OpenCV
bilinear resize on uint8, optionally padding to the network's aspect first), so a deployed model
sees the same pixels as ``ssdkit evaluate``. Images are resized one by one straight into a
preallocated NHWC batch buffer, which is then transposed once to NCHW (one copy per batch instead
of one per image).

``inverse`` rows ``(sx, sy, ox, oy)`` map network pixels to original pixels:
``orig = (net - (ox, oy)) / (sx, sy)`` (``docs/architecture.md``); a DCT-reduced decode of a huge
JPEG is folded in, so boxes always come back in the pixels of the full image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .sources import Frame

__all__ = ["Batch", "Preprocessor", "to_original"]


@dataclass
class Batch:
    """One preprocessed batch.

    Attributes:
        images: ``ndarray[B, 3, H, W]`` uint8 RGB at the network size (C-contiguous).
        inverse: ``ndarray[B, 4]`` float64 ``(sx, sy, ox, oy)``, network -> original pixels.
        orig_size: ``ndarray[B, 2]`` int64 ``(H, W)`` of the original images (clipping range).
        frames: the source frames, in order.
    """

    images: np.ndarray
    inverse: np.ndarray
    orig_size: np.ndarray
    frames: list[Frame]


class Preprocessor:
    """``Preprocessor(size, keep_aspect)(frames) -> Batch``.

    Args:
        size: network input ``(H, W)``.
        keep_aspect: pad each image to the network's aspect ratio (black, centred) before resizing,
            instead of stretching it (must match how the model was evaluated/trained).
    """

    def __init__(self, size: tuple[int, int], keep_aspect: bool = False) -> None:
        import cv2  # noqa: F401  (imported here, not inside the first timed batch: ~0.1-0.2 s)

        from ..data import eval_preprocessing

        self.size = (int(size[0]), int(size[1]))
        self.keep_aspect = bool(keep_aspect)
        self._transform = eval_preprocessing(self.size, keep_aspect=self.keep_aspect)

    def __call__(self, frames: Sequence[Frame]) -> Batch:
        h, w = self.size
        n = len(frames)
        nhwc = np.empty((n, h, w, 3), dtype=np.uint8)
        inverse = np.empty((n, 4), dtype=np.float64)
        orig = np.empty((n, 2), dtype=np.int64)
        for i, fr in enumerate(frames):
            img, tgt = self._transform(fr.image)
            nhwc[i] = img
            inv = np.asarray(tgt["inverse"], dtype=np.float64)
            if fr.reduced:
                # net = s * reduced + o and reduced = orig * r, so net = (s * r) * orig + o
                rh = fr.image.shape[0] / fr.orig_size[0]
                rw = fr.image.shape[1] / fr.orig_size[1]
                inv = inv * np.array([rw, rh, 1.0, 1.0])
            inverse[i] = inv
            orig[i] = fr.orig_size
        images = np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
        return Batch(images, inverse, orig, list(frames))


def to_original(dets: Sequence[np.ndarray], inverse: np.ndarray, orig_size: np.ndarray) -> list[np.ndarray]:
    """Map per-image ``[K, 6]`` detections from network pixels to original pixels and clip.

    One vectorised pass over the whole batch (rows of all images concatenated), float64, then
    float32 out. ``inverse`` ``[B, 4]``, ``orig_size`` ``[B, 2]`` ``(H, W)``.
    """
    counts = [len(d) for d in dets]
    if sum(counts) == 0:
        return [np.zeros((0, 6), dtype=np.float32) for _ in dets]
    rows = np.concatenate([np.asarray(d, dtype=np.float64).reshape(-1, 6) for d in dets])
    img = np.repeat(np.arange(len(dets)), counts)
    inv = inverse[img]
    s = np.concatenate([inv[:, 0:2], inv[:, 0:2]], axis=1)
    o = np.concatenate([inv[:, 2:4], inv[:, 2:4]], axis=1)
    b = (rows[:, 2:] - o) / s
    hw = orig_size[img].astype(np.float64)
    limit = np.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], axis=1)
    rows[:, 2:] = np.clip(b, 0.0, limit)
    return np.split(rows.astype(np.float32), np.cumsum(counts)[:-1])
