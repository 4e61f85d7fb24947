"""Target encoding and decoding throughput: ssdkit vs a straightforward per-image numpy implementation.

Setup: SSD300 VOC anchors (8732), batch 32, 1-20 ground-truth boxes per image with VOC-like sizes
(side sqrt(w*h) log-uniform in 4%..90% of the image, aspect ratio log-normal with sigma 0.5, boxes
inside the image), 20 classes. Decoding uses realistic score distributions: every anchor's
background logit is high, ~2% of anchors carry a confident object; per-class NMS at confidence 0.01
(the evaluation setting) and the fast global decoder at 0.5.

The reference is ``bench/reference_numpy.py``: the Keras code's semantics, one image at a time (and
one class at a time for NMS), in float64 numpy. Both sides produce the same labels and detections;
this script checks that before timing.

Usage: python bench/core.py [--quick] [--batch 32] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.reference_numpy import decode_numpy, encode_numpy
from ssdkit.anchors import AnchorGenerator
from ssdkit.matching import SSDTargetEncoder
from ssdkit.postprocess import decode_detections


def voc_like_boxes(rng: np.random.Generator, batch: int, size: int = 300, n_classes: int = 20):
    boxes, labels = [], []
    for _ in range(batch):
        g = int(rng.integers(1, 21))
        side = np.exp(rng.uniform(np.log(0.04), np.log(0.9), g)) * size
        ar = np.exp(rng.normal(0.0, 0.5, g))
        w = np.clip(side * np.sqrt(ar), 2, size)
        h = np.clip(side / np.sqrt(ar), 2, size)
        x0 = rng.uniform(0, size - w)
        y0 = rng.uniform(0, size - h)
        boxes.append(np.stack([x0, y0, x0 + w, y0 + h], 1))
        labels.append(rng.integers(1, n_classes + 1, g))
    return boxes, labels


def realistic_outputs(seed: int, batch: int, n: int, n_classes: int):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, n, n_classes + 1, generator=g)
    logits[..., 0] += 6.0
    hot = torch.rand(batch, n, generator=g) < 0.02
    cls = torch.randint(1, n_classes + 1, (batch, n), generator=g)
    logits[hot, cls[hot]] += 9.0
    deltas = torch.randn(batch, n, 4, generator=g) * 0.5
    return logits, deltas


def timings(fn: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # per round: ssdkit calls, reference calls; rounds
    rep_fast, rep_ref, rounds = (5, 1, 1) if args.quick else (6, 1, 5)

    gen = AnchorGenerator.preset("ssd300_voc")
    anchors64 = gen.anchors(dtype=torch.float64).numpy()
    rng = np.random.default_rng(0)
    boxes, labels = voc_like_boxes(rng, args.batch)
    tb = [torch.from_numpy(b).float() for b in boxes]
    tl = [torch.from_numpy(x) for x in labels]
    enc = SSDTargetEncoder(gen, 300, 20)

    # same results first
    lab, tgt = enc(tb, tl)
    lab_r, tgt_r = encode_numpy([b.numpy().astype(np.float64) for b in tb], labels, anchors64, 300, 300)
    assert np.array_equal(lab.numpy(), lab_r), "encoder labels differ from the reference"
    assert np.abs(tgt.numpy() - tgt_r).max() < 1e-4
    logits, deltas = realistic_outputs(0, args.batch, gen.num_anchors, 20)
    out = decode_detections(logits, deltas, gen, 300)
    ref = decode_numpy(logits.numpy(), deltas.numpy(), anchors64, 300, 300)
    assert all(o.shape == r.shape and np.array_equal(o[:, 0].numpy(), r[:, 0]) for o, r in zip(out, ref))
    n_det = sum(o.shape[0] for o in out)

    # Rounds alternate between ssdkit and the reference so that load changes on a shared machine hit
    # both alike; each side's figure is the median over all its calls.
    jobs: list[tuple[str, Callable[[], object], Callable[[], object]]] = [(
        "encode (multi)",
        lambda: enc(tb, tl),
        lambda: encode_numpy([b.numpy().astype(np.float64) for b in tb], labels, anchors64, 300, 300),
    )]
    for mode, conf, kw in (("per_class", 0.01, {}), ("global", 0.5, {"top_k": None})):
        jobs.append((
            f"decode ({mode}, conf {conf})",
            lambda conf=conf, mode=mode, kw=kw: decode_detections(
                logits, deltas, gen, 300, confidence_thresh=conf, nms=mode, **kw),
            lambda conf=conf, mode=mode, kw=kw: decode_numpy(
                logits.numpy(), deltas.numpy(), anchors64, 300, 300, confidence_thresh=conf, nms=mode,
                top_k=kw.get("top_k", 200)),
        ))
    rows = []
    for name, ours_fn, ref_fn in jobs:
        ours_t: list[float] = []
        ref_t: list[float] = []
        ours_fn(), ref_fn()  # warm-up
        for _ in range(rounds):
            ours_t += timings(ours_fn, rep_fast)
            ref_t += timings(ref_fn, rep_ref)
        rows.append((name, statistics.median(ours_t), statistics.median(ref_t)))

    n_gt = sum(len(x) for x in labels)
    print(f"SSD300 VOC anchors ({gen.num_anchors}), batch {args.batch}, {n_gt} gt boxes, "
          f"{n_det} detections/batch at conf 0.01, torch threads {torch.get_num_threads()}")
    print(f"{'step':<30}{'ssdkit ms':>12}{'numpy ms':>12}{'speed-up':>10}{'ssdkit img/s':>15}")
    for name, ours, theirs in rows:
        print(f"{name:<30}{ours * 1e3:>12.2f}{theirs * 1e3:>12.1f}{theirs / ours:>9.1f}x"
              f"{args.batch / ours:>15.0f}")


if __name__ == "__main__":
    main()
