"""Data pipeline benchmark: ssdkit vs torchvision.transforms.v2's SSD preset, encoding placement, caches.

Training pipeline per image: read + decode JPEG, SSD augmentation (photometric distortions, zoom out
1-4x, IoU-constrained crop, horizontal flip), resize to 300x300, SSD300 target encoding (8732
anchors, ``AnchorGenerator.preset('ssd300_voc')``), batch 32, on BCCD (../shared/data/bccd).

- ssdkit: ``build_loader(..., transforms=ssd_augmentation(300), encoder=...)``.
- torchvision: ``torchvision.io.decode_jpeg`` + ``v2.Compose([RandomPhotometricDistort(p=.5),
  RandomZoomOut(fill=mean, side_range=(1, 4), p=.5), RandomIoUCrop(), RandomHorizontalFlip(.5),
  Resize((300, 300)), SanitizeBoundingBoxes()])`` (the torchvision detection reference's SSD preset
  plus the resize its SSD model does internally), same loader settings and the same encoder.

Also: where target encoding runs (batched in the workers' collate / batched in the main process /
per sample in the workers) and image read speed (JPEG decode vs memory cache vs HDF5 cache).
Numbers are medians over repetitions (other processes may share the cores). Usage::

    python bench/data.py            # full (a few minutes on 2 cores)
    python bench/data.py --quick    # smoke run (~1 minute)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BCCD = ROOT.parent / "shared" / "data" / "bccd"
MEAN = (123, 117, 104)


def _tv_dataset(ds: Any) -> Any:
    """A torch Dataset giving torchvision-style samples of the same images."""
    from torchvision import tv_tensors
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms import v2

    tf = v2.Compose([
        v2.RandomPhotometricDistort(p=0.5),
        v2.RandomZoomOut(fill=list(MEAN), side_range=(1.0, 4.0), p=0.5),
        v2.RandomIoUCrop(),
        v2.RandomHorizontalFlip(0.5),
        v2.Resize((300, 300)),
        v2.SanitizeBoundingBoxes(),
    ])

    class TV(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(ds)

        def __getitem__(self, i: int) -> Any:
            rec = ds.records[i]
            data = torch.frombuffer(bytearray(Path(rec.path).read_bytes()), dtype=torch.uint8)
            img = tv_tensors.Image(decode_jpeg(data, mode=ImageReadMode.RGB))
            h, w = img.shape[-2:]
            tgt = {"boxes": tv_tensors.BoundingBoxes(torch.from_numpy(rec.boxes.copy()), format="XYXY",
                                                     canvas_size=(h, w)),
                   "labels": torch.from_numpy(rec.labels.copy())}
            img, tgt = tf(img, tgt)
            return img.as_subclass(torch.Tensor), {"boxes": tgt["boxes"].as_subclass(torch.Tensor),
                                                   "labels": tgt["labels"],
                                                   "difficult": torch.zeros(len(tgt["labels"]), dtype=torch.bool),
                                                   "image_id": rec.image_id, "orig_size": (int(h), int(w)),
                                                   "inverse": torch.tensor([1.0, 1.0, 0.0, 0.0])}

    return TV()


class PerSampleCollate:
    """Encode each sample separately (the alternative to one batched call)."""

    def __init__(self, encoder: Any) -> None:
        from ssdkit.data.loader import Collate

        self.inner = Collate(None)
        self.encoder = encoder

    def __call__(self, samples: Any) -> Any:
        batch = self.inner(samples)
        enc = [self.encoder([t["boxes"]], [t["labels"]]) for t in batch["targets"]]
        batch["labels"] = torch.cat([e[0] for e in enc])
        batch["box_targets"] = torch.cat([e[1] for e in enc])
        return batch

    def __getstate__(self) -> dict[str, Any]:
        from ssdkit.data.loader import Collate

        return {"state": Collate(self.encoder).__getstate__()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from ssdkit.data.loader import Collate

        c = Collate.__new__(Collate)
        c.__setstate__(state["state"])
        self.inner, self.encoder = Collate(None), c.encoder


def _epoch_stats(make_iter: Any, reps: int) -> tuple[float, float]:
    """Median (images/s, main-process CPU ms per image) over ``reps`` passes after a warm-up pass.

    The CPU time of the main process is what data loading takes away from training there.
    """
    for _ in make_iter():  # warm-up pass: worker start, page cache, lazy imports
        pass
    rates, cpu = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        count = 0
        for batch in make_iter():
            count += batch["images"].shape[0]
        rates.append(count / (time.perf_counter() - t))
        cpu.append((time.process_time() - c) / count * 1e3)
    return statistics.median(rates), statistics.median(cpu)


def _epoch_rate(make_iter: Any, n_images: int, reps: int) -> float:
    return _epoch_stats(make_iter, reps)[0]


def bench_pipelines(ds: Any, enc: Any, workers_list: list[int], reps: int, batch: int) -> dict[str, float]:
    from torch.utils.data import DataLoader

    from ssdkit.data import build_loader, ssd_augmentation
    from ssdkit.data.loader import Collate, _worker_init

    out: dict[str, float] = {}
    tv = _tv_dataset(ds)
    for w in workers_list:
        kw: dict[str, Any] = {"persistent_workers": True, "worker_init_fn": _worker_init} if w else {}
        loader = build_loader(ds, batch, shuffle=True, workers=w, transforms=ssd_augmentation(300), encoder=enc,
                              encode_in="worker" if w else "main")
        out[f"ssdkit w={w}"] = _epoch_rate(lambda ld=loader: iter(ld), len(ds), reps)
        tvl = DataLoader(tv, batch_size=batch, shuffle=True, num_workers=w, collate_fn=Collate(enc), **kw)
        out[f"torchvision w={w}"] = _epoch_rate(lambda ld=tvl: iter(ld), len(ds), reps)
    return out


def bench_encoding(ds: Any, enc: Any, reps: int, batch: int, workers: int) -> dict[str, float]:
    from ssdkit.data import build_loader, ssd_augmentation

    out: dict[str, Any] = {}
    for mode in ("worker", "main"):
        loader = build_loader(ds, batch, shuffle=True, workers=workers, transforms=ssd_augmentation(300), encoder=enc,
                              encode_in=mode)
        out[f"batched in {mode}"] = _epoch_stats(lambda ld=loader: iter(ld), reps)
    loader = build_loader(ds, batch, shuffle=True, workers=workers, transforms=ssd_augmentation(300), encoder=None)
    # the collate function is fixed at DataLoader construction: rebuild the inner loader with a per-sample one
    from torch.utils.data import DataLoader

    from ssdkit.data.loader import _worker_init

    loader.loader = DataLoader(loader._augmented, batch_size=batch, sampler=loader.sampler, num_workers=workers,
                               collate_fn=PerSampleCollate(enc), persistent_workers=workers > 0,
                               worker_init_fn=_worker_init if workers else None)
    out["per sample in worker"] = _epoch_stats(lambda: iter(loader), reps)
    plain = build_loader(ds, batch, shuffle=True, workers=workers, transforms=ssd_augmentation(300))
    out["no encoding"] = _epoch_stats(lambda: iter(plain), reps)
    # cost of the encoder alone, in this process: one batched call vs one call per image
    b = next(iter(build_loader(ds, batch, shuffle=True, transforms=ssd_augmentation(300))))
    boxes, labels = [x["boxes"] for x in b["targets"]], [x["labels"] for x in b["targets"]]
    batched, single = [], []
    for _ in range(max(3, reps * 3)):
        t = time.perf_counter()
        enc(boxes, labels)
        batched.append((time.perf_counter() - t) / len(boxes))
        t = time.perf_counter()
        for bx, lb in zip(boxes, labels):
            enc([bx], [lb])
        single.append((time.perf_counter() - t) / len(boxes))
    out["encoder batched ms/image"] = statistics.median(batched) * 1e3
    out["encoder per-sample ms/image"] = statistics.median(single) * 1e3
    return out


def bench_reads(root: Path, ids: int, reps: int) -> dict[str, float]:
    from ssdkit.data import VOCDataset

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cache in ("none", "memory", "hdf5"):
            ds = VOCDataset(root, "train", cache=cache, cache_dir=tmp, verbose=False)
            n = min(ids, len(ds))
            order = np.random.default_rng(0).permutation(len(ds))[:n]
            rates = []
            for _ in range(reps):
                t = time.perf_counter()
                for i in order:
                    ds.read_image(int(i))
                rates.append(n / (time.perf_counter() - t))
            out[{"none": "JPEG decode", "memory": "memory cache",
                 "hdf5": "HDF5 cache"}[cache]] = statistics.median(rates)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer images and repetitions (smoke test)")
    ap.add_argument("--root", default=str(BCCD), help="VOC dataset (default ../shared/data/bccd)")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args(argv)
    if not Path(args.root).is_dir():
        print(f"dataset not found: {args.root}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)
    from ssdkit.anchors import AnchorGenerator
    from ssdkit.data import VOCDataset
    from ssdkit.matching import SSDTargetEncoder

    reps = 1 if args.quick else 3
    ds = VOCDataset(args.root, "train", verbose=False)
    if args.quick:
        ds.records = ds.records[:64]
    enc = SSDTargetEncoder(AnchorGenerator.preset("ssd300_voc"), 300, len(ds.classes))
    print(f"dataset {args.root} train: {len(ds)} images; batch {args.batch}; {os.cpu_count()} CPUs; "
          f"torch {torch.__version__}; medians of {reps} pass(es)\n")

    pipes = bench_pipelines(ds, enc, [0, 2], reps, args.batch)
    print("training pipeline (decode + SSD augmentation + resize 300 + encode), images/s")
    print(f"  {'workers':<8}{'ssdkit':>10}{'torchvision':>14}{'ratio':>8}")
    for w in (0, 2):
        a, b = pipes[f"ssdkit w={w}"], pipes[f"torchvision w={w}"]
        print(f"  {w:<8}{a:>10.1f}{b:>14.1f}{a / b:>7.2f}x")

    encs = bench_encoding(ds, enc, reps, args.batch, 2)
    print("\ntarget encoding placement (ssdkit pipeline, 2 workers)")
    print(f"  {'where':<24}{'images/s':>10}{'main-process CPU ms/image':>28}")
    for k in ("batched in worker", "batched in main", "per sample in worker", "no encoding"):
        rate, cpu = encs[k]
        print(f"  {k:<24}{rate:>10.1f}{cpu:>28.2f}")
    print(f"  encoder alone: batched {encs['encoder batched ms/image']:.2f} ms/image, "
          f"per sample {encs['encoder per-sample ms/image']:.2f} ms/image")

    reads = bench_reads(Path(args.root), 64 if args.quick else 205, reps)
    print("\nimage read (random order, decoded RGB), images/s")
    j = reads["JPEG decode"]
    for k, v in reads.items():
        print(f"  {k:<16}{v:>10.1f}{v / j:>8.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
