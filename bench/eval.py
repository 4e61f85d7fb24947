"""Evaluation speed: ssdkit's VOC metrics against pycocotools and faster-coco-eval, one process.

Data (seeded): N images (5,000) x 20 classes; each image has 1-6 ground-truth boxes (15 % difficult)
and up to 200 detections: 0-3 noisy copies of each gt (10 % with a wrong class; high scores) plus
random boxes with low random scores, the total drawn uniformly in [40, 200] per image, like an
SSD's ``top_k=200`` output. Detections are float32 ``Tensor[K, 6]`` and targets dicts of tensors,
fed in batches of 32 as ``ssdkit evaluate`` does.

Timed (median of ``--repeats`` runs; other processes share the cores, so medians, not means):

- ssdkit VOC07 / VOC10: ``VOCEvaluator.update`` over all batches + ``compute`` (inputs converted
  from tensors inside the timing), and both metrics from one pass;
- pycocotools / faster-coco-eval, *AP50 only* (``iouThrs=[.5]``, area ``all``, ``maxDets=[200]``:
  the least work COCOeval can do for one AP50) and *full* (the default 12-number setting):
  ``evaluate + accumulate`` timed, the loading (building the gt dataset, ``createIndex``,
  ``loadRes`` of the results list) timed separately;
- ssdkit ``COCOEvaluator`` end to end (update + conversion + loading + full evaluation) with the
  default backend.

Run: ``python bench/eval.py`` (full, a few minutes) or ``python bench/eval.py --quick``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ssdkit.eval import COCOEvaluator, VOCEvaluator


def make_data(n_images: int, n_classes: int, max_dets: int, seed: int = 0) -> tuple[list[torch.Tensor], list[dict]]:
    rng = np.random.default_rng(seed)
    dets, tgts = [], []
    for i in range(n_images):
        w, h = 500.0, 375.0
        g = int(rng.integers(1, 7))
        wh = rng.uniform(20, 250, (g, 2))
        xy = rng.uniform(0, 1, (g, 2)) * (np.array([w, h]) - wh)
        gt = np.concatenate([xy, xy + wh], 1).round()
        labels = rng.integers(1, n_classes + 1, g)
        copies = rng.integers(0, 4, g)
        src = np.repeat(np.arange(g), copies)
        jitter = rng.normal(0, 0.08, (src.size, 4)) * np.repeat(wh, 2, axis=1)[src]
        cb = gt[src] + jitter
        cl = labels[src].copy()
        wrong = rng.random(src.size) < 0.1
        cl[wrong] = rng.integers(1, n_classes + 1, int(wrong.sum()))
        cs = rng.beta(5, 2, src.size)
        n_total = max(int(rng.integers(40, max_dets + 1)), src.size)
        n_rand = n_total - src.size
        rwh = rng.uniform(10, 300, (n_rand, 2))
        rxy = rng.uniform(0, 1, (n_rand, 2)) * np.maximum(np.array([w, h]) - rwh, 1)
        rb = np.concatenate([rxy, rxy + rwh], 1)
        boxes = np.concatenate([cb, rb])
        boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], 1)
        d = np.concatenate(
            [
                np.concatenate([cl, rng.integers(1, n_classes + 1, n_rand)])[:, None],
                np.concatenate([cs, rng.beta(1, 8, n_rand)])[:, None],
                boxes,
            ],
            1,
        )
        d = d[np.argsort(-d[:, 1], kind="stable")]  # detections arrive sorted by score
        dets.append(torch.from_numpy(d).float())
        tgts.append(
            {
                "boxes": torch.from_numpy(gt).float(),
                "labels": torch.from_numpy(labels),
                "difficult": torch.from_numpy(rng.random(g) < 0.15),
                "image_id": f"{i:06d}",
                "orig_size": (int(h), int(w)),
            }
        )
    return dets, tgts


def log(msg: str) -> None:
    print(f"... {msg}", file=sys.stderr, flush=True)


class Timer:
    """Wall-clock and process CPU time of a block (CPU time is less disturbed by other processes)."""

    def __enter__(self) -> Timer:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def medians(timers: list[Timer]) -> tuple[float, float]:
    return statistics.median(t.wall for t in timers), statistics.median(t.cpu for t in timers)


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[tuple[float, float], Any]:
    """``((median wall s, median CPU s), last result)`` of ``repeats`` calls."""
    timers, out = [], None
    for _ in range(repeats):
        with Timer() as t:
            out = fn()
        timers.append(t)
    return medians(timers), out


def batches(dets: list, tgts: list, size: int = 32):
    for s in range(0, len(dets), size):
        yield dets[s : s + size], tgts[s : s + size]


def run_voc(dets: list, tgts: list, names: list[str], metrics: tuple[str, ...]) -> dict[str, float]:
    ev = VOCEvaluator(names)
    for d, t in batches(dets, tgts):
        ev.update(d, t)
    return {m: ev.compute(m).map for m in metrics}


def coco_inputs(dets: list, tgts: list, names: list[str]) -> tuple[dict, list[dict]]:
    ev = COCOEvaluator(names, backend="pycocotools")
    for d, t in batches(dets, tgts):
        ev.update(d, t)
    return ev.ground_truth_json(), ev.detections_json()


def coco_library(backend: str, gt_ds: dict, det_list: list[dict], ap50_only: bool, repeats: int) -> dict[str, Any]:
    """Median (wall, CPU) times of loading and of evaluate + accumulate with one library, and AP50."""
    import copy

    loads, evals, ap50 = [], [], float("nan")
    for _ in range(repeats):
        gt_copy, dets_copy = copy.deepcopy(gt_ds), [dict(d) for d in det_list]  # loadRes mutates its input
        with contextlib.redirect_stdout(io.StringIO()):
            with Timer() as t_load:
                if backend == "pycocotools":
                    from pycocotools.coco import COCO
                    from pycocotools.cocoeval import COCOeval as Eval

                    gt = COCO()
                    gt.dataset = gt_copy
                    gt.createIndex()
                else:
                    from faster_coco_eval import COCO
                    from faster_coco_eval import COCOeval_faster as Eval

                    gt = COCO(gt_copy)
                dt = gt.loadRes(dets_copy)
            kw = {} if backend == "pycocotools" else {"print_function": lambda *a, **k: None}
            ev = Eval(gt, dt, "bbox", **kw)
            if ap50_only:
                ev.params.iouThrs = np.array([0.5])
                ev.params.areaRng, ev.params.areaRngLbl = [[0, 1e10]], ["all"]
                ev.params.maxDets = [200]
            with Timer() as t_eval:
                ev.evaluate()
                ev.accumulate()
        loads.append(t_load)
        evals.append(t_eval)
        p = ev.eval["precision"][0, :, :, 0, -1]
        ap50 = float(np.mean(p[p > -1]))
    return {"load": medians(loads), "eval": medians(evals), "ap50": ap50}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="500 images, 1 repeat of the COCO libraries")
    ap.add_argument("--images", type=int, default=None, help="number of images (default 5000, quick 500)")
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--max-dets", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=None, help="repeats of each timing (default 5, quick 3)")
    ap.add_argument(
        "--coco-repeats",
        type=int,
        default=None,
        help="repeats of the pycocotools/faster-coco-eval timings (default 3, quick 1)",
    )
    ap.add_argument("--no-full-coco", action="store_true", help="skip the default 12-number COCOeval setting")
    args = ap.parse_args(argv)
    n_images = args.images or (500 if args.quick else 5000)
    repeats = args.repeats or (3 if args.quick else 5)
    coco_repeats = args.coco_repeats or (1 if args.quick else 3)
    names = [f"class{i}" for i in range(1, args.classes + 1)]

    t_data = time.perf_counter()
    dets, tgts = make_data(n_images, args.classes, args.max_dets)
    n_det = sum(len(d) for d in dets)
    n_gt = sum(len(t["labels"]) for t in tgts)
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; data made in {time.perf_counter() - t_data:.1f} s"
    )
    print(
        f"{n_images} images, {args.classes} classes, {n_gt} gts, {n_det} detections "
        f"({n_det / n_images:.0f} per image, max {max(len(d) for d in dets)})\n"
    )

    rows: list[tuple[str, tuple[float, float], str]] = []
    log("ssdkit VOC")
    t07, r07 = median_time(lambda: run_voc(dets, tgts, names, ("voc07",)), repeats)
    t10, r10 = median_time(lambda: run_voc(dets, tgts, names, ("voc10",)), repeats)
    tboth, _ = median_time(lambda: run_voc(dets, tgts, names, ("voc07", "voc10")), repeats)
    rows += [
        ("ssdkit VOC07 (update + compute)", t07, f"mAP {r07['voc07']:.4f}"),
        ("ssdkit VOC10 (update + compute)", t10, f"mAP {r10['voc10']:.4f}"),
        ("ssdkit VOC07 + VOC10, one pass", tboth, ""),
    ]

    t_conv, (gt_ds, det_list) = median_time(lambda: coco_inputs(dets, tgts, names), 1)
    rows.append(("to COCO dicts (ssdkit COCOEvaluator)", t_conv, "not in the ratios"))
    ref = None
    for backend in ("pycocotools", "faster_coco_eval"):
        for ap50_only in (True, False):
            if not ap50_only and args.no_full_coco:
                continue
            log(f"{backend} {'AP50 only' if ap50_only else 'full'}")
            r = coco_library(backend, gt_ds, det_list, ap50_only, coco_repeats)
            tag = "AP50 only" if ap50_only else "full 12 numbers"
            if backend == "pycocotools" and ap50_only:
                ref = r["eval"]
            rows.append((f"{backend} {tag}: evaluate + accumulate", r["eval"], f"AP50 {r['ap50']:.4f}"))
            rows.append((f"{backend} {tag}: loading", r["load"], ""))

    def e2e() -> float:  # the default backend; pycocotools' parts are all in the rows above
        ev = COCOEvaluator(names)
        for d, t in batches(dets, tgts):
            ev.update(d, t)
        return ev.compute().stats["AP50"]

    log("ssdkit COCOEvaluator end to end")
    t, ap50 = median_time(e2e, coco_repeats)
    rows.append((f"ssdkit COCOEvaluator[{COCOEvaluator(names).backend}] end to end", t, f"AP50 {ap50:.4f}"))

    assert ref is not None
    w = max(len(r[0]) for r in rows)
    head = f"{'step':<{w}}  {'wall s':>8}  {'CPU s':>8}  {'ratio wall':>10}  {'ratio CPU':>9}  note"
    print(head)
    print("-" * len(head))
    for name, (wall, cpu), note in rows:
        print(f"{name:<{w}}  {wall:8.3f}  {cpu:8.3f}  {ref[0] / wall:9.1f}x  {ref[1] / cpu:8.1f}x  {note}")
    print(
        f"\n(medians of {repeats} runs for ssdkit VOC, {coco_repeats} for the COCO libraries; ratio = "
        "pycocotools AP50-only evaluate + accumulate time / this time. AP values differ by design: VOC "
        "uses +1 pixels, difficult boxes and no maxDets; COCO continuous boxes and crowd-ignore)"
    )
    worst = min(min(ref[0] / t07[0], ref[0] / t10[0]), min(ref[1] / t07[1], ref[1] / t10[1]))
    print(
        f"goal VOC >= 5x faster than pycocotools AP50: {worst:.1f}x (worst of wall/CPU, VOC07/VOC10) -> "
        f"{'met' if worst >= 5 else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
