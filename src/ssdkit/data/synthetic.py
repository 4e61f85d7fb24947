"""Small synthetic detection datasets on disk (for tests, demos and benchmarks; no downloads).

:func:`make_synthetic_voc` writes coloured rectangles and ellipses on noisy backgrounds in the VOC
layout; other formats come from :func:`ssdkit.data.convert.convert_dataset`.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence

import numpy as np

__all__ = ["make_synthetic_voc"]

_COLORS = [(220, 40, 40), (40, 200, 60), (50, 80, 230), (230, 200, 40), (200, 60, 200), (40, 200, 200)]


def make_synthetic_voc(
    root: str,
    n_images: int = 8,
    size: tuple[int, int] = (96, 128),
    classes: Sequence[str] = ("red", "green", "blue"),
    max_objects: int = 4,
    seed: int = 0,
    splits: dict[str, float] | None = None,
    ext: str = ".jpg",
    difficult_rate: float = 0.1,
) -> dict[str, list[str]]:
    """Write ``n_images`` images with 0..``max_objects`` objects each under ``root`` (VOC layout).

    Class ``k`` is a filled shape of colour ``k``; a fraction ``difficult_rate`` of objects is difficult.
    ``splits`` maps set names to fractions (default ``{'train': 0.75, 'val': 0.25}``). Returns ``{set name: [ids]}``.
    """
    import cv2

    rng = np.random.default_rng(seed)
    h, w = size
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    ids = []
    for i in range(n_images):
        img = rng.integers(90, 160, size=(h, w, 3), dtype=np.uint8)
        ann = ET.Element("annotation")
        ET.SubElement(ann, "filename").text = f"img_{i:05d}{ext}"
        sz = ET.SubElement(ann, "size")
        ET.SubElement(sz, "width").text, ET.SubElement(sz, "height").text = str(w), str(h)
        ET.SubElement(sz, "depth").text = "3"
        for _ in range(int(rng.integers(0, max_objects + 1))):
            k = int(rng.integers(len(classes)))
            bw, bh = (int(rng.integers(max(4, w // 8), max(5, w // 2))),
                      int(rng.integers(max(4, h // 8), max(5, h // 2))))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            color = tuple(int(c) for c in _COLORS[k % len(_COLORS)])[::-1]  # BGR for OpenCV
            if rng.random() < 0.5:
                cv2.rectangle(img, (x0, y0), (x0 + bw - 1, y0 + bh - 1), color, -1)
            else:
                cv2.ellipse(img, (x0 + bw // 2, y0 + bh // 2), (bw // 2, bh // 2), 0, 0, 360, color, -1)
            obj = ET.SubElement(ann, "object")
            ET.SubElement(obj, "name").text = classes[k]
            ET.SubElement(obj, "difficult").text = "1" if rng.random() < difficult_rate else "0"
            bb = ET.SubElement(obj, "bndbox")
            for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (x0, y0, x0 + bw, y0 + bh)):
                ET.SubElement(bb, tag).text = str(v)
        name = f"img_{i:05d}"
        cv2.imwrite(os.path.join(root, "JPEGImages", name + ext), img)
        ET.ElementTree(ann).write(os.path.join(root, "Annotations", name + ".xml"))
        ids.append(name)
    fractions = splits or {"train": 0.75, "val": 0.25}
    out: dict[str, list[str]] = {}
    start = 0
    for k, (set_name, frac) in enumerate(fractions.items()):
        end = n_images if k == len(fractions) - 1 else start + round(frac * n_images)
        out[set_name] = ids[start:end]
        start = end
    for set_name, members in out.items():
        with open(os.path.join(root, "ImageSets", "Main", set_name + ".txt"), "w") as f:
            f.write("".join(m + "\n" for m in members))
    return out
