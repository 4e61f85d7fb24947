"""End-to-end detection throughput: ssdkit (PyTorch, ONNX Runtime fp32, ONNX Runtime int8) vs torchvision eager.

End to end = read the JPEG from disk, decode, preprocess, network, decode + NMS, boxes back to the
original image pixels; images/s over the same files for every contender, at batch 1 and 8, for
SSD300-VGG16 and SSDLite320-MobileNetV3-Large, in one process.

Fairness:
- same images (BCCD JPEGs from ../shared/data/bccd/JPEGImages, else generated 640x480 JPEGs),
  same class count (20 + background), same confidence threshold (``--conf``, default 0.3, the
  deployed default; torchvision's ``score_thresh``), NMS IoU 0.45, 200 detections per image;
- untrained weights everywhere (``weights=None, weights_backbone=None`` for torchvision), with
  BatchNorm statistics re-estimated and the class heads rescaled so every contender has the same
  background-heavy score distribution as a trained detector (:mod:`ssdkit.deploy.synthetic`);
  without that, NMS would see either no candidate or every anchor, and measure nothing real;
- contenders run interleaved (one pass each per round) so load from other processes on a shared
  machine hits all of them alike; the table reports medians over rounds.

torchvision's pipeline is its own ``SSD.forward`` in eval mode, split into stages for the breakdown:
``read_file`` + ``decode_jpeg`` + ``/255`` (preprocess), ``model.transform`` (its resize and
normalisation, counted as preprocess), backbone + head (network), anchors + ``postprocess_detections``
+ ``transform.postprocess`` (postprocess).

    python bench/infer.py            # full: 32 images, 5 rounds
    python bench/infer.py --quick    # 8 images, 3 rounds, SSDLite only
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
BCCD = ROOT.parent / "shared" / "data" / "bccd" / "JPEGImages"
N_CLASSES = 20
BACKGROUND_LOGIT = 6.0
MODELS = {
    "ssdlite": ("ssdlite320_mobilenet_v3_large", "ssdlite320_mobilenet_v3_large"),
    "ssd300": ("ssd300_vgg16", "ssd300_vgg16"),
}


def bench_images(n: int, tmp: str) -> tuple[list[str], str]:
    """``n`` JPEG paths: BCCD when present, else generated 640x480 JPEGs (written to ``tmp``)."""
    files = sorted(glob.glob(str(BCCD / "*.jpg")))
    if len(files) >= n:
        return files[:n], f"BCCD JPEGs ({BCCD})"
    import cv2

    from ssdkit.deploy.synthetic import synthetic_images

    out = []
    for i, img in enumerate(synthetic_images(n, (480, 640), seed=0)):
        p = os.path.join(tmp, f"img{i:03d}.jpg")
        cv2.imwrite(p, cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append(p)
    return out, "generated 640x480 JPEGs (../shared/data/bccd absent)"


# ------------------------------------------------------------------------------------ contenders
def ssdkit_model(name: str) -> Any:
    from ssdkit.deploy.synthetic import realistic_ssd_
    from ssdkit.models import build_model

    torch.manual_seed(0)
    return realistic_ssd_(build_model(name, N_CLASSES), background_logit=BACKGROUND_LOGIT)


def torchvision_model(name: str, conf: float) -> Any:
    import torchvision.models.detection as det

    from ssdkit.deploy.synthetic import realistic_heads_, recalibrate_bn_, synthetic_images

    torch.manual_seed(0)
    model = getattr(det, name)(weights=None, weights_backbone=None, num_classes=N_CLASSES + 1, score_thresh=conf,
                               nms_thresh=0.45, detections_per_img=200)
    imgs = [torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in synthetic_images(4, (300, 300), seed=0)]
    recalibrate_bn_(model, lambda: model.backbone(model.transform(imgs)[0].tensors))

    def last_conv(m: torch.nn.Module) -> torch.nn.Conv2d:
        return [c for c in m.modules() if isinstance(c, torch.nn.Conv2d)][-1]

    cls = [last_conv(m) for m in model.head.classification_head.module_list]
    box = [last_conv(m) for m in model.head.regression_head.module_list]
    realistic_heads_(model, cls, box, N_CLASSES + 1, imgs, background_logit=BACKGROUND_LOGIT)
    return model.eval()


class TorchvisionPipeline:
    """torchvision's eager ``SSD.forward`` (eval) from file paths, with per-stage timings."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.t = {"pre": 0.0, "net": 0.0, "post": 0.0}

    @torch.inference_mode()
    def __call__(self, paths: list[str]) -> list[dict[str, torch.Tensor]]:
        from torchvision.io import decode_jpeg, read_file

        m = self.model
        t0 = time.perf_counter()
        imgs = [decode_jpeg(read_file(p)).float().div_(255) for p in paths]
        orig = [(int(i.shape[-2]), int(i.shape[-1])) for i in imgs]
        il, _ = m.transform(imgs)
        t1 = time.perf_counter()
        feats = list(m.backbone(il.tensors).values())
        head = m.head(feats)
        t2 = time.perf_counter()
        anchors = m.anchor_generator(il, feats)
        dets = m.transform.postprocess(m.postprocess_detections(head, anchors, il.image_sizes), il.image_sizes, orig)
        t3 = time.perf_counter()
        for k, v in zip(("pre", "net", "post"), (t1 - t0, t2 - t1, t3 - t2)):
            self.t[k] += v * 1e3
        return dets


class SsdkitPipeline:
    """ssdkit's Predictor on file paths; stage timings from the Predictor."""

    def __init__(self, predictor: Any) -> None:
        self.p = predictor

    def __call__(self, paths: list[str]) -> list[Any]:
        return self.p.predict(paths)

    @property
    def t(self) -> dict[str, float]:
        tm, n = self.p.timings, self.p.timings["images"]
        return {"pre": tm["preprocess_ms"] * n, "net": tm["inference_ms"] * n, "post": tm["postprocess_ms"] * n}


def int8_graph(model: Any, calib_paths: list[str], tmp: str) -> str:
    """A raw int8 export of ``model`` calibrated on ``calib_paths`` (ssdkit's default settings)."""
    from ssdkit.deploy.quantize import quantize_export

    path = os.path.join(tmp, f"{model.config['name']}.int8.onnx")
    quantize_export(model, path, calib_paths, n_calib=len(calib_paths), measure_speed=False)
    return path


# ------------------------------------------------------------------------------------ measurement
def run_rounds(contenders: dict[str, Callable[[list[str]], Any]], paths: list[str], batch: int,
               rounds: int) -> dict[str, dict[str, float]]:
    """Interleaved rounds over all images; returns per contender median images/s and stage ms/image."""
    batches = [paths[i:i + batch] for i in range(0, len(paths), batch)]
    for fn in contenders.values():  # warm-up (allocator, oneDNN primitives, ORT arena)
        fn(batches[0])
    ips: dict[str, list[float]] = {k: [] for k in contenders}
    stages: dict[str, list[dict[str, float]]] = {k: [] for k in contenders}
    for _ in range(rounds):
        for k, fn in contenders.items():
            before = dict(_stage_times(fn))
            t0 = time.perf_counter()
            for b in batches:
                fn(b)
            dt = time.perf_counter() - t0
            after = _stage_times(fn)
            ips[k].append(len(paths) / dt)
            stages[k].append({s: (after[s] - before[s]) / len(paths) for s in after})
    out = {}
    for k in contenders:
        med = statistics.median(ips[k])
        out[k] = {"ips": med, **{s: statistics.median(d[s] for d in stages[k]) for s in ("pre", "net", "post")}}
    return out


def _stage_times(fn: Any) -> dict[str, float]:
    return dict(fn.t) if hasattr(fn, "t") else {"pre": 0.0, "net": 0.0, "post": 0.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 images, 3 rounds, SSDLite only")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), help="default: ssdlite ssd300 (quick: ssdlite)")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--images", type=int, help="images per round (default 32, quick 8)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 3)")
    ap.add_argument("--conf", type=float, default=0.3, help="confidence threshold of every contender (default 0.3)")
    ap.add_argument("--threads", type=int, help="torch and onnxruntime threads (default: CPUs available)")
    ap.add_argument("--no-int8", action="store_true")
    args = ap.parse_args(argv)

    from ssdkit.deploy.ort import available_cpus
    from ssdkit.deploy.predictor import Predictor

    threads = args.threads or available_cpus()
    torch.set_num_threads(threads)
    n_images = args.images or (8 if args.quick else 32)
    rounds = args.rounds or (3 if args.quick else 5)
    models = args.models or (["ssdlite"] if args.quick else ["ssdlite", "ssd300"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="ssdkit-bench-") as tmp:
        paths, what = bench_images(n_images, tmp)
        print(f"images: {len(paths)} {what}; threads: {threads}; confidence > {args.conf}; {rounds} rounds (medians)",
              flush=True)
        for key in models:
            sk_name, tv_name = MODELS[key]
            t0 = time.perf_counter()
            sk = ssdkit_model(sk_name)
            tv = torchvision_model(tv_name, args.conf)
            int8 = None if args.no_int8 else int8_graph(sk, paths[: min(32, len(paths))], tmp)
            print(f"[{key}] models ready in {time.perf_counter() - t0:.0f} s", flush=True)
            for b in args.batches:
                kw = dict(batch_size=b, confidence_thresh=args.conf, iou_threshold=0.45, top_k=200,
                          keep_images=False, threads=threads)
                contenders: dict[str, Any] = {
                    "torchvision eager": TorchvisionPipeline(tv),
                    "ssdkit torch": SsdkitPipeline(Predictor(sk, backend="torch", **kw)),
                    "ssdkit onnxruntime": SsdkitPipeline(Predictor(sk, backend="onnxruntime", **kw)),
                }
                if int8 is not None:
                    contenders["ssdkit int8"] = SsdkitPipeline(Predictor(int8, **kw))
                res = run_rounds(contenders, paths, b, rounds)
                base = res["torchvision eager"]["ips"]
                fp32 = res["ssdkit onnxruntime"]["ips"]
                for k, r in res.items():
                    rows.append((key, b, k, r["ips"], r["pre"], r["net"], r["post"], r["ips"] / base,
                                 r["ips"] / fp32 if k == "ssdkit int8" else None))
                _print_rows([r for r in rows if r[0] == key and r[1] == b])
    print("\nsummary (end-to-end images/s, medians):")
    _print_rows(rows, header=True)
    return 0


def _print_rows(rows: list[tuple[Any, ...]], header: bool = True) -> None:
    if header:
        print(f"{'model':<8} {'batch':>5}  {'contender':<19} {'img/s':>7}  {'pre ms':>7} {'net ms':>7} {'post ms':>7}"
              f"  {'vs torchvision':>14}  {'int8 vs fp32':>12}")
    for m, b, k, ips, pre, net, post, ratio, q in rows:
        qs = f"{q:.2f}x" if q is not None else ""
        print(f"{m:<8} {b:>5}  {k:<19} {ips:>7.1f}  {pre:>7.1f} {net:>7.1f} {post:>7.1f}  {ratio:>13.2f}x  {qs:>12}")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
