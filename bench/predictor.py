"""What each Predictor default buys: prefetching, ONNX Runtime thread spinning, the fused channels-last copy.

Setup: ssdkit SSDLite320-MobileNetV3 (20 classes, the realistic untrained weights of
``bench/infer.py``), end to end on BCCD JPEGs (read, decode, resize, network, decode + NMS, boxes
to original pixels), confidence 0.3, at batch 1 and 8. Contenders differ from the default
Predictor in one setting each:

- ``onnxruntime default``: ``Predictor(model, backend="onnxruntime")`` (prefetch on; spinning on
  at batch 1 only);
- ``onnxruntime prefetch=False`` / ``onnxruntime spinning=<not the default>``;
- ``torch default``: ``backend="torch"`` (the ``model.fuse(channels_last=True)`` copy on CPU);
- ``torch plain model``: the same Predictor running the training-form model (BatchNorm not folded,
  NCHW), i.e. what it ran before the fused copy.

Rounds alternate between the contenders in one process; medians over rounds; ratio = images/s over
the default of the same backend. ``--load`` adds one busy-looping process for the run (a shared machine).

Usage: python bench/predictor.py [--images 32] [--rounds 5] [--batches 1 8] [--threads T] [--load]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))


def _busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--threads", type=int, default=None, help="network threads (default: CPUs available)")
    ap.add_argument("--load", action="store_true", help="run beside one busy-looping process")
    args = ap.parse_args(argv)

    import torch
    from infer import bench_images, ssdkit_model

    from ssdkit.deploy.ort import available_cpus
    from ssdkit.deploy.predictor import Predictor

    threads = args.threads or available_cpus()
    torch.set_num_threads(threads)
    model = ssdkit_model("ssdlite320_mobilenet_v3_large")
    busy = None
    if args.load:
        busy = mp.Process(target=_busy, args=(3600.0,), daemon=True)
        busy.start()
    try:
        with tempfile.TemporaryDirectory(prefix="ssdkit-bench-") as tmp:
            paths, what = bench_images(args.images, tmp)
            print(f"images: {len(paths)} {what}; threads {threads}; {args.rounds} rounds (medians)"
                  f"{'; beside one busy process' if args.load else ''}")
            print(f"{'batch':>5}  {'contender':<32}{'img/s':>8}  {'vs default':>10}")
            for b in args.batches:
                kw = dict(batch_size=b, confidence_thresh=0.3, keep_images=False, threads=threads)
                spin_default = b == 1
                plain = Predictor(model, backend="torch", **kw)
                plain._net = plain.model  # the training-form model, as before the fused copy
                contenders = {
                    "onnxruntime default": Predictor(model, backend="onnxruntime", **kw),
                    "onnxruntime prefetch=False": Predictor(model, backend="onnxruntime", prefetch=False, **kw),
                    f"onnxruntime spinning={not spin_default}": Predictor(model, backend="onnxruntime",
                                                                         spinning=not spin_default, **kw),
                    "torch default": Predictor(model, backend="torch", **kw),
                    "torch plain model": plain,
                }
                for p in contenders.values():  # warm-up
                    p.predict(paths[:b])
                rates: dict[str, list[float]] = {k: [] for k in contenders}
                for _ in range(args.rounds):
                    for k, p in contenders.items():
                        t0 = time.perf_counter()
                        p.predict(paths)
                        rates[k].append(len(paths) / (time.perf_counter() - t0))
                med = {k: statistics.median(v) for k, v in rates.items()}
                for k, v in med.items():
                    base = med["torch default" if k.startswith("torch") else "onnxruntime default"]
                    print(f"{b:>5}  {k:<32}{v:>8.1f}  {v / base:>9.2f}x", flush=True)
    finally:
        if busy is not None:
            busy.terminate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
