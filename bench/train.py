"""Training throughput, data pipeline included: ssdkit SSDLite-MobileNetV2 vs torchvision SSDLite320.

Setup: BCCD train split (../shared/data/bccd, 205 photos of 640x480, JPEG decoded every time), the
original SSD augmentation chain to 300x300 (ssdkit.data.ssd_augmentation) for both, batch 16,
SGD momentum 0.9. Measured: images per second over whole training iterations, i.e. loading,
decoding, augmenting, target matching, forward, loss, backward and the optimiser step.

- ``ssdkit``: the real training path: ``Trainer(config).setup()`` then ``trainer._step`` on the
  trainer's own loader (targets encoded by the batched matcher; in the DataLoader workers when
  ``--workers`` > 0), ``ssdlite320_mobilenet_v2`` at 300x300, ``MultiBoxLoss``.
- ``torchvision``: ``torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None,
  weights_backbone=None)`` training step (its own per-image matching and loss inside ``forward``)
  with its transform set to 300x300, fed by the same ssdkit loader (same decoding and augmentation,
  no target encoding) converted to its input format (list of float images, target dicts).
- ``ssdkit ... channels_last``: the same with ``train.channels_last=true`` (oneDNN's NHWC kernels,
  much faster for the depthwise convolutions on CPU).
- ``ssdkit ... channels_last freeze_stride=4``: with ``train.freeze_stride=4`` (the ImageNet stem and
  stride-4 blocks fixed, no backward through them; on BCCD 0.9196 VOC10 in 17 min against 0.9216 in
  21 min training every layer, docs/results.md).
- ``torchvision ... freeze_stride=4``: torchvision's model with the same layers fixed
  (``ssdkit.engine.freeze`` on its backbone; torchvision's own ``trainable_backbone_layers`` needs
  its ImageNet weights, which are not available offline), so what freezing gives either library
  can be told apart from the rest.
- ``--mnv3``: ssdkit's ``ssdlite320_mobilenet_v3_large`` (channels_last off and on), the same
  architecture as torchvision's model, so the training loops compare on equal networks.

Rounds alternate between the contenders in the same process (the machine's load hits both alike);
the table reports the median images/s over rounds and the ratio to torchvision.

Usage: python bench/train.py [--quick] [--batch 16] [--workers N] [--rounds R] [--steps S] [--threads T] [--mnv3]
       [--compile] [--no-freeze] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CLASSES = ["RBC", "WBC", "Platelets"]


def ssdkit_contender(model_name: str, data_root: Path, batch: int, workers: int, size: int,
                     amp: str | bool, channels_last: bool, freeze_stride: int = 0,
                     compile: bool = False) -> tuple[Callable[[], int], Any]:
    """A function running one ssdkit training iteration (returns images processed)."""
    from ssdkit.engine.freeze import keep_frozen_in_eval
    from ssdkit.engine.trainer import Trainer

    cfg = {
        "name": "bench",
        "model": {"name": model_name, "image_size": size},
        "data": {"format": "voc", "root": str(data_root), "classes": CLASSES, "train": "train",
                 "check_images": "none"},
        "augment": {"chain": "ssd"},
        "optimizer": {"name": "sgd", "lr": 0.001, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "constant"},
        "train": {"batch_size": batch, "workers": workers, "progress": False, "out_dir": "/tmp/ssdkit-bench",
                  "amp": amp, "channels_last": channels_last, "tensorboard": False, "exist_ok": True,
                  "freeze_stride": freeze_stride, "compile": compile},
        "eval": {"every": 0},
    }
    tr = Trainer(cfg).setup()
    tr.model.train()
    keep_frozen_in_eval(tr.model, tr.frozen)
    batches = _forever(tr.train_loader)

    def step() -> int:
        b = next(batches)
        tr._step(b, False)
        return int(b["images"].shape[0])

    return step, tr


def torchvision_contender(data_root: Path, batch: int, workers: int, size: int,
                          freeze_stride: int = 0) -> Callable[[], int]:
    """One torchvision SSDLite320-MobileNetV3 training iteration on the same loader (no encoder)."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    from ssdkit.data import build_dataset, build_loader, ssd_augmentation
    from ssdkit.engine.freeze import freeze_modules, keep_frozen_in_eval, modules_up_to_stride

    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=len(CLASSES) + 1)
    model.transform.min_size = (size,)
    model.transform.max_size = size
    model.transform.fixed_size = (size, size)
    frozen = modules_up_to_stride(model, freeze_stride, image_size=(size, size)) if freeze_stride else []
    freeze_modules(model, frozen)
    model.train()
    keep_frozen_in_eval(model, frozen)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001, momentum=0.9, weight_decay=5e-4)
    ds = build_dataset({"format": "voc", "root": str(data_root), "classes": CLASSES, "train": "train",
                        "check_images": "none"}, "train")
    loader = build_loader(ds, batch_size=batch, shuffle=True, workers=workers,
                          transforms=ssd_augmentation(size, background=(127, 127, 127)), drop_last=True)
    batches = _forever(loader)

    def step() -> int:
        b = next(batches)
        images = [im.float().div_(255.0) for im in b["images"]]
        targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in b["targets"]]
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return len(images)

    return step


def profile_step(data_root: Path, batch: int, size: int, threads: int | None) -> int:
    """Operator table (self CPU time) of one ssdkit SSDLite-MobileNetV2 channels_last training step,
    data loading excluded, after two warm-up steps."""
    from torch.profiler import ProfilerActivity, profile

    if threads:
        torch.set_num_threads(threads)
    step, tr = ssdkit_contender("ssdlite320_mobilenet_v2", data_root, batch, 0, size, False, True)
    step(), step()
    b = next(iter(tr.train_loader))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        tr._step(b, False)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return 0


def _forever(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def measure(step: Callable[[], int], steps: int) -> float:
    """Images per second over ``steps`` iterations (data loading included)."""
    t0 = time.perf_counter()
    n = sum(step() for _ in range(steps))
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of 3 iterations (a smoke run)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "bccd"), help="BCCD VOC folder")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers for both (default 1)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8, help="iterations per round and contender")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--amp", default="false", help="ssdkit train.amp (false, bf16)")
    ap.add_argument("--no-channels-last", action="store_true", help="skip the ssdkit train.channels_last=true row")
    ap.add_argument("--no-freeze", action="store_true", help="skip the freeze_stride=4 rows (ssdkit and torchvision)")
    ap.add_argument("--compile", action="store_true",
                    help="add ssdkit MobileNetV2 channels_last with train.compile=true (torch.compile; the warm-up "
                         "compiles, ~2 min here)")
    ap.add_argument("--profile", action="store_true",
                    help="instead: torch.profiler operator table of one ssdkit MobileNetV2 channels_last step")
    ap.add_argument("--mnv3", action="store_true", help="add ssdkit's MobileNetV3 model (same backbone as torchvision)")
    args = ap.parse_args(argv)
    if args.profile:
        return profile_step(Path(args.data), args.batch, args.size, args.threads)
    if args.quick:
        args.rounds, args.steps = 2, 3
    data = Path(args.data)
    if not (data / "Annotations").is_dir():
        print(f"BCCD not found at {data} (give --data)", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    amp: str | bool = False if args.amp in ("false", "0", "no") else args.amp

    contenders: dict[str, Callable[[], int]] = {}
    contenders["ssdkit ssdlite320_mobilenet_v2"], _ = ssdkit_contender(
        "ssdlite320_mobilenet_v2", data, args.batch, args.workers, args.size, amp, False)
    if not args.no_channels_last:
        contenders["ssdkit ssdlite320_mobilenet_v2 channels_last"], _ = ssdkit_contender(
            "ssdlite320_mobilenet_v2", data, args.batch, args.workers, args.size, amp, True)
    if not args.no_freeze:
        contenders["ssdkit ssdlite320_mobilenet_v2 channels_last freeze_stride=4"], _ = ssdkit_contender(
            "ssdlite320_mobilenet_v2", data, args.batch, args.workers, args.size, amp, True, freeze_stride=4)
    contenders["torchvision ssdlite320_mobilenet_v3_large"] = torchvision_contender(data, args.batch, args.workers,
                                                                                     args.size)
    if not args.no_freeze:
        contenders["torchvision ssdlite320_mobilenet_v3_large freeze_stride=4"] = torchvision_contender(
            data, args.batch, args.workers, args.size, freeze_stride=4)
    if args.compile:
        contenders["ssdkit ssdlite320_mobilenet_v2 channels_last compile"], _ = ssdkit_contender(
            "ssdlite320_mobilenet_v2", data, args.batch, args.workers, args.size, amp, True, compile=True)
    if args.mnv3:
        contenders["ssdkit ssdlite320_mobilenet_v3_large"], _ = ssdkit_contender(
            "ssdlite320_mobilenet_v3_large", data, args.batch, args.workers, args.size, amp, False)
        contenders["ssdkit ssdlite320_mobilenet_v3_large channels_last"], _ = ssdkit_contender(
            "ssdlite320_mobilenet_v3_large", data, args.batch, args.workers, args.size, amp, True)
    for step in contenders.values():  # warm-up: workers started, allocator and kernels warm
        measure(step, 2)
    rates: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(args.rounds):
        for name, step in contenders.items():
            rates[name].append(measure(step, args.steps))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{v[-1]:.1f}" for v in rates.values()) + " img/s",
              file=sys.stderr)
    tv = statistics.median(rates["torchvision ssdlite320_mobilenet_v3_large"])
    print(f"\ntraining images/s, batch {args.batch} at {args.size}x{args.size}, BCCD train with the SSD augmentation, "
          f"{args.workers} worker(s), {torch.get_num_threads()} thread(s), {args.rounds} rounds x {args.steps} "
          f"iterations (median)")
    print(f"{'contender':<52}{'img/s':>8}{'min':>8}{'max':>8}{'vs torchvision':>16}")
    for name, v in rates.items():
        med = statistics.median(v)
        print(f"{name:<52}{med:>8.1f}{min(v):>8.1f}{max(v):>8.1f}{med / tv:>15.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
