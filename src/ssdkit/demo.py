"""The built-in demo: a synthetic detection dataset (no download) and an end-to-end run on it.

:func:`make_demo_dataset` renders objects of varied size, colour and rotation - filled shapes
(``circle``, ``square``, ``triangle``, ``star``; the demo's default) or digits ``0``-``9`` (Pillow's
built-in TrueType font, the MNIST-detection tutorial setting) - on cluttered canvases: gradient,
blob and noise backgrounds, random lines and rectangle outlines, and distractor glyphs (letters and
symbols that are *not* classes, so the detector must tell them apart). Objects do not overlap each
other; clutter may cross them. They are written in the Pascal VOC layout::

    <root>/JPEGImages/000000.jpg, <root>/Annotations/000000.xml, <root>/ImageSets/Main/{train,val}.txt

:func:`run_demo` generates it under ``<out>/data``, trains ``configs/demo.yaml`` through the normal
config path (:func:`ssdkit.train`), evaluates (VOC07 mAP@0.5) and saves annotated predictions in
``<out>/predictions/``. ``ssdkit demo`` is its command line.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["make_demo_dataset", "render_image", "run_demo", "demo_config", "DIGITS", "SHAPES", "DISTRACTORS",
           "KINDS"]

log = logging.getLogger("ssdkit.demo")

DIGITS = tuple(str(d) for d in range(10))
SHAPES = ("circle", "square", "triangle", "star")
#: ``demo.kind`` -> classes
KINDS = {"digits": DIGITS, "shapes": SHAPES}
#: glyphs drawn as clutter (never labelled)
DISTRACTORS = tuple("ACEFHKLPRTVXYZackmrwx#%&+?@")


@functools.lru_cache(maxsize=128)
def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Gradient + low-contrast blobs + noise: ``[H, W, 3]`` float32 in 0..255."""
    base = rng.uniform(40, 215, size=3).astype(np.float32)
    tilt = rng.uniform(-60, 60, size=(2, 3)).astype(np.float32)
    ys = (np.arange(h, dtype=np.float32) / h)[:, None, None]
    xs = (np.arange(w, dtype=np.float32) / w)[None, :, None]
    img = base + ys * tilt[0] + xs * tilt[1]
    yy, xx = np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32)
    for _ in range(int(rng.integers(2, 6))):  # soft blobs: separable gaussians
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r2 = 2 * (rng.uniform(0.08, 0.35) * min(h, w)) ** 2
        blob = np.exp(-((yy - cy) ** 2) / r2)[:, None] * np.exp(-((xx - cx) ** 2) / r2)[None, :]
        img = img + blob[..., None] * rng.uniform(-50, 50, size=3).astype(np.float32)
    return np.clip(img, 0, 255)


def _contrasting(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    """A random colour far (in grey level or in one channel) from the mean colour ``under``."""
    c = rng.integers(0, 256, size=(20, 3))
    ok = (np.abs(c.mean(1) - float(under.mean())) > 90) | (np.abs(c - under).max(1) > 150)
    if ok.any():
        k = int(np.argmax(ok))
        return int(c[k, 0]), int(c[k, 1]), int(c[k, 2])
    return (0, 0, 0) if under.mean() > 127 else (255, 255, 255)


def _glyph(text: str, size: int, angle: float) -> Any:
    """A tight ``L`` mask of ``text`` rendered at ``size`` px and rotated by ``angle`` degrees."""
    from PIL import Image, ImageDraw

    font = _font(size)
    l, t, r, b = font.getbbox(text)
    pad = size // 4
    im = Image.new("L", (r - l + 2 * pad, b - t + 2 * pad), 0)
    ImageDraw.Draw(im).text((pad - l, pad - t), text, fill=255, font=font)
    if angle:
        im = im.rotate(angle, resample=Image.BILINEAR, expand=True)
    box = im.getbbox()
    return im.crop(box) if box else im


def _shape(name: str, size: int, angle: float, aspect: float = 1.0) -> Any:
    """A tight ``L`` mask of a filled ``circle``/``square``/``triangle``/``star`` of side ~``size`` px,
    stretched by ``aspect`` (width / height) and rotated by ``angle`` degrees."""
    from PIL import Image, ImageDraw

    pad = max(2, size // 4)
    n = size + 2 * pad
    im = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(im)
    c, r = n / 2, size / 2
    if name == "circle":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
    elif name == "square":
        q = r * 0.85
        draw.rectangle([c - q, c - q, c + q, c + q], fill=255)
    else:
        k, inner = (3, None) if name == "triangle" else (5, 0.42)
        pts = []
        for i in range(k * (2 if inner else 1)):
            a = -math.pi / 2 + i * math.pi / (k if inner else k / 2)
            rad = r if not inner or i % 2 == 0 else r * inner
            pts.append((c + rad * math.cos(a), c + rad * math.sin(a)))
        draw.polygon(pts, fill=255)
    if aspect != 1.0:
        im = im.resize((max(1, round(n * math.sqrt(aspect))), max(1, round(n / math.sqrt(aspect)))), Image.BILINEAR)
    if angle:
        im = im.rotate(angle, resample=Image.BILINEAR, expand=True)
    box = im.getbbox()
    return im.crop(box) if box else im


def _paste(canvas: np.ndarray, mask: Any, x: int, y: int, color: Sequence[int]) -> None:
    m = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    h, w = m.shape[:2]
    region = canvas[y:y + h, x:x + w]
    region[:] = region * (1 - m) + np.asarray(color, np.float32) * m


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _clutter(rng: np.random.Generator, canvas: np.ndarray, taken: list[list[float]]) -> None:
    """Lines, rectangles outlines and distractor glyphs (kept off the objects)."""
    from PIL import Image, ImageDraw

    h, w = canvas.shape[:2]
    im = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(1, 5))):
        pts = [tuple(rng.uniform(0, [w, h]).tolist()) for _ in range(2)]
        draw.line(pts, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(0, 3))):
        x0, y0 = rng.uniform(0, w - 10), rng.uniform(0, h - 10)
        draw.rectangle([x0, y0, x0 + rng.uniform(6, w / 3), y0 + rng.uniform(6, h / 3)],
                       outline=tuple(int(v) for v in rng.integers(0, 256, 3)), width=1)
    canvas[:] = np.asarray(im, dtype=np.float32)
    for _ in range(int(rng.integers(1, 4))):
        size = int(rng.integers(max(10, h // 12), max(12, h // 4)))
        g = _glyph(str(rng.choice(list(DISTRACTORS))), size, float(rng.uniform(-20, 20)))
        gw, gh = g.size
        if gw >= w or gh >= h:
            continue
        x, y = int(rng.integers(0, w - gw)), int(rng.integers(0, h - gh))
        if any(_iou([x, y, x + gw, y + gh], t) > 0.0 for t in taken):
            continue
        _paste(canvas, g, x, y, _contrasting(rng, canvas[y:y + gh, x:x + gw].reshape(-1, 3).mean(0)))


def _write_xml(path: Path, filename: str, h: int, w: int, objects: list[tuple[str, list[int]]]) -> None:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "JPEGImages"
    ET.SubElement(ann, "filename").text = filename
    size = ET.SubElement(ann, "size")
    for tag, v in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, tag).text = str(v)
    for name, box in objects:
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bb, tag).text = str(v)
    ET.ElementTree(ann).write(path, encoding="utf-8")


def render_image(rng: np.random.Generator, size: tuple[int, int] = (128, 128), classes: Sequence[str] = SHAPES,
                 max_objects: int = 4, min_height: float = 0.14, max_height: float = 0.4
                 ) -> tuple[np.ndarray, list[tuple[str, list[int]]]]:
    """One synthetic image ``[H, W, 3]`` uint8 and its objects ``[(class name, [x1, y1, x2, y2])]``.

    Object heights are drawn between ``min_height`` and ``max_height`` of the image height; objects
    do not overlap each other; distractors avoid them. Boxes are tight around the drawn glyph
    (VOC pixel indices: ``x2``/``y2`` are the last covered pixel + 1).
    """
    h, w = size
    canvas = _background(rng, h, w)
    objects: list[tuple[str, list[int]]] = []
    taken: list[list[float]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(10):
            name = str(rng.choice(list(classes)))
            px = max(8, int(rng.uniform(min_height, max_height) * h))
            if name in SHAPES:
                g = _shape(name, px, float(rng.uniform(0, 360)), float(np.exp(rng.uniform(-0.25, 0.25))))
            else:
                g = _glyph(name, px, float(rng.uniform(-15, 15)))
            gw, gh = g.size
            if gw >= w - 2 or gh >= h - 2:
                continue
            x, y = int(rng.integers(1, w - gw)), int(rng.integers(1, h - gh))
            box = [x, y, x + gw, y + gh]
            if any(_iou(box, t) > 0.0 for t in taken):
                continue
            taken.append([float(v) for v in box])
            under = canvas[y:y + gh, x:x + gw].reshape(-1, 3).mean(0)
            _paste(canvas, g, x, y, _contrasting(rng, under))
            objects.append((name, box))
            break
    _clutter(rng, canvas, taken)
    canvas += rng.standard_normal(size=canvas.shape, dtype=np.float32) * np.float32(rng.uniform(3, 12))
    return np.clip(canvas, 0, 255).astype(np.uint8), objects


def make_demo_dataset(root: str | os.PathLike[str], n_train: int = 3000, n_val: int = 300,
                      size: tuple[int, int] = (128, 128), seed: int = 0, max_objects: int = 4,
                      classes: Sequence[str] = SHAPES) -> dict[str, Any]:
    """Write the synthetic dataset of ``classes`` (:data:`SHAPES`, :data:`DIGITS` or a subset of
    either; VOC layout, see the module docstring) under ``root``. Generation runs in up to 4 processes.

    Deterministic for a given ``seed``. Re-uses an existing dataset written with the same arguments
    (a ``demo.json`` stamp records them). Returns ``{'root', 'train', 'val', 'classes', 'boxes'}``.
    """
    import json

    root = Path(root)
    stamp = {"n_train": n_train, "n_val": n_val, "size": list(size), "seed": seed, "max_objects": max_objects,
             "classes": list(classes), "version": 1}
    stamp_file = root / "demo.json"
    if stamp_file.is_file():
        try:
            old = json.loads(stamp_file.read_text())
        except ValueError:
            old = None
        if old and old.get("args") == stamp:
            return old["summary"]
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    n = n_train + n_val
    job = functools.partial(_write_range, str(root), tuple(size), int(seed), tuple(classes), int(max_objects))
    workers = min(os.cpu_count() or 1, 4) if n >= 200 else 1
    chunks = [range(k, min(n, k + 100)) for k in range(0, n, 100)]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn" if os.name == "nt" else "fork").Pool(workers) as pool:
            counts = pool.map(job, chunks)
    else:
        counts = [job(c) for c in chunks]
    n_boxes = sum(counts)
    ids = [f"{i:06d}" for i in range(n)]
    (root / "ImageSets/Main/train.txt").write_text("".join(f"{x}\n" for x in ids[:n_train]))
    (root / "ImageSets/Main/val.txt").write_text("".join(f"{x}\n" for x in ids[n_train:]))
    summary = {"root": str(root), "train": n_train, "val": n_val, "classes": list(classes), "boxes": n_boxes}
    stamp_file.write_text(json.dumps({"args": stamp, "summary": summary}, indent=2))
    return summary


def _write_range(root: str, size: tuple[int, int], seed: int, classes: tuple[str, ...], max_objects: int,
                 indices: range) -> int:
    """Render and write images ``indices`` (image ``i`` drawn from ``default_rng([seed, i])``); returns boxes."""
    from PIL import Image

    n_boxes = 0
    for i in indices:
        img, objects = render_image(np.random.default_rng([seed, i]), size, classes, max_objects)
        name = f"{i:06d}"
        Image.fromarray(img).save(os.path.join(root, "JPEGImages", f"{name}.jpg"), quality=94)
        _write_xml(Path(root) / "Annotations" / f"{name}.xml", f"{name}.jpg", size[0], size[1], objects)
        n_boxes += len(objects)
    return n_boxes


def demo_config(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The packaged ``configs/demo.yaml`` pointed at ``<out>``: data in ``<out>/data``,
    run folder ``<out>`` itself."""
    from .engine.config import read_yaml

    # the packaged file (configs/demo.yaml in a checkout links to it), so the demo runs from any folder
    path = Path(__file__).resolve().parent / "configs" / "demo.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the ssdkit installation is incomplete (reinstall it)")
    cfg = read_yaml(path)
    out = Path(out)
    cfg.setdefault("data", {})["root"] = str(out / "data")
    train = cfg.setdefault("train", {})
    train["out_dir"] = str(out.parent if str(out.parent) else ".")
    train["exist_ok"] = True
    cfg["name"] = out.name
    return cfg


def run_demo(out: str | os.PathLike[str] = "runs/demo", minutes: float | None = None,
             overrides: Sequence[str] = (), n_train: int | None = None, n_val: int | None = None,
             n_predictions: int = 16) -> dict[str, Any]:
    """Generate the data, train ``configs/demo.yaml``, evaluate, save annotated predictions.

    Args:
        out: output folder (dataset in ``out/data``, run artefacts in ``out``, predictions in
            ``out/predictions``).
        minutes: training time budget (``train.time_limit_min``; the config's own when ``None``).
        overrides: extra ``key.path=value`` config overrides.
        n_train, n_val: dataset size (default: the config's ``demo:`` numbers).
        n_predictions: validation images saved with their detections.

    Returns:
        ``{'map', 'metric', 'run_dir', 'best', 'predictions', 'minutes', 'stop_reason'}``.
    """
    import time

    import torch

    from .engine.config import apply_overrides
    from .engine.trainer import train
    from .errors import ConfigError

    t0 = time.perf_counter()
    out = Path(out)
    cfg = demo_config(out)
    apply_overrides(cfg, overrides)
    ds: dict[str, Any] = {"kind": "shapes", "n_train": 3000, "n_val": 300, "size": [128, 128], "seed": 0,
                          "max_objects": 4}
    given = cfg.pop("demo", None) or {}
    unknown = sorted(set(given) - set(ds))
    if unknown:
        raise ConfigError(f"demo.{unknown[0]}: unknown key; known keys: {', '.join(ds)}")
    ds.update(given)
    if n_train is not None:
        ds["n_train"] = n_train
    if n_val is not None:
        ds["n_val"] = n_val
    if minutes is not None:
        cfg["train"]["time_limit_min"] = float(minutes)
    log.info("generating %d + %d synthetic images in %s", ds["n_train"], ds["n_val"], out / "data")
    if ds["kind"] not in KINDS:
        raise ConfigError(f"demo.kind: must be one of {', '.join(KINDS)}, got {ds['kind']!r}")
    classes = KINDS[ds["kind"]]
    cfg["data"]["classes"] = list(classes)
    make_demo_dataset(out / "data", int(ds["n_train"]), int(ds["n_val"]), tuple(ds["size"]), int(ds["seed"]),
                      int(ds["max_objects"]), classes)
    t_data = time.perf_counter() - t0
    if cfg["train"].get("time_limit_min"):
        cfg["train"]["time_limit_min"] = max(0.1, float(cfg["train"]["time_limit_min"]) - t_data / 60)
    result = train(cfg)
    from .checkpoint import load
    from .data import build_dataset, eval_preprocessing
    from .viz import draw_detections, enlarge, save_image

    model = load(result.best or result.last) if (result.best or result.last) else None
    pred_dir = out / "predictions"
    written: list[str] = []
    if model is not None and n_predictions > 0:
        val = build_dataset(cfg["data"], "val", transforms=eval_preprocessing(tuple(model.image_size)), verbose=False)
        pred_dir.mkdir(parents=True, exist_ok=True)
        for i in range(min(n_predictions, len(val))):
            image, target = val[i]
            with torch.no_grad():
                dets = model.predict(image, confidence_thresh=0.3)[0]
            big, f = enlarge(image, 256)
            dets[:, 2:] *= f
            canvas = draw_detections(big, dets, model.class_names)
            written.append(str(save_image(pred_dir / f"{target['image_id']}.png", canvas)))
    return {
        "map": result.map, "metric": cfg.get("eval", {}).get("metric", "voc07"), "run_dir": str(result.run_dir),
        "best": str(result.best) if result.best else None, "predictions": str(pred_dir) if written else None,
        "minutes": (time.perf_counter() - t0) / 60, "stop_reason": result.stop_reason,
        "epochs": result.epochs_completed,
    }
