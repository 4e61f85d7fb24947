"""CPU latency of ssdkit's detectors against torchvision's, same weights, same process.

Pairs: ssdkit ``ssd300_vgg16`` vs ``torchvision.models.detection.ssd300_vgg16`` and ssdkit
``ssdlite320_mobilenet_v3_large`` vs torchvision's (both with torchvision's default reduced tail).
The two architectures are identical parameter for parameter, so each ssdkit model is a port of the
torchvision model's weights (:func:`ssdkit.models.torchvision_port.from_torchvision`): raw outputs,
score distributions and candidate counts are the same on both sides; only the code around the
network differs.

Weights (torchvision builders with ``weights=None, weights_backbone=None``, no download): He init, BN
statistics calibrated on the bench images (as after training, so activations are O(1)), predictor
outputs rescaled to logit std 2 / offset std 1, and a background bias (about +4..+6) chosen so that
about ``--candidates`` (anchor, class) pairs per image score above the 0.01 threshold -- the
background-heavy distribution of a trained detector, which gives NMS a realistic load.

Timings (median of ``--repeats``, after a warm-up; ssdkit and torchvision interleaved so that load
changes hit both alike), inputs are uint8 ``[B, 3, H, W]`` RGB batches at the network size (BCCD
photos from ../shared when present, else noise):

- network: ssdkit ``model(images)`` (its forward includes the input normalisation);
  torchvision ``head(backbone(x))`` on an already normalised float batch (its transform excluded).
- end to end: ssdkit ``model.predict(images)`` (normalise + network + batched decode + per-class
  NMS); torchvision ``model(list of float images / 255)`` (GeneralizedRCNNTransform + network +
  per-image, per-class decode + batched NMS + box rescale), both at confidence 0.01, IoU 0.45, 200
  detections per image (torchvision also caps each class at its top 400 candidates).
- ssdkit runs its inference copy ``model.fuse(channels_last=...)`` (BatchNorm folded into the convs;
  same outputs up to rounding); ``--no-fuse`` times the training-form model instead.
- channels_last on/off: the models in ``torch.channels_last`` (ssdkit converts its uint8 batch).
- defaults (last table): each library as it runs when the user changes nothing: ssdkit's
  ``Predictor`` runs ``model.fuse(channels_last=True)`` on the CPU (its "on" rows), torchvision's
  model is NCHW (its "off" rows).

Usage: python bench/models.py [--quick] [--threads N] [--repeats R] [--classes 90] [--no-fuse] [--profile]
The machine may be shared: medians are reported, each ratio is torchvision time / ssdkit time, and
a second table gives process CPU time (with one thread, less sensitive to other jobs than wall time).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ssdkit.models.torchvision_port import from_torchvision  # noqa: E402
from ssdkit.postprocess import decode_detections  # noqa: E402

CONF, IOU, TOP_K, TV_TOPK_CANDIDATES = 0.01, 0.45, 200, 400


# ---------------------------------------------------------------------------------------------- inputs
def bench_images(n: int, size: int) -> Tensor:
    """``[n, 3, size, size]`` uint8: BCCD photos resized to the network size, or noise without ../shared."""
    folder = ROOT.parent / "shared" / "data" / "bccd" / "JPEGImages"
    files = sorted(folder.glob("*.jpg"))[:n] if folder.is_dir() else []
    if len(files) < n:
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    from torchvision.io import read_image
    from torchvision.transforms.functional import resize

    return torch.stack([resize(read_image(str(f)), [size, size], antialias=True) for f in files])


# ---------------------------------------------------------------------------------------------- weights
def realistic_torchvision(name: str, n_classes: int, calib: Tensor, candidates: float) -> nn.Module:
    """A torchvision detector with trained-like activation statistics and a background-heavy head."""
    from torchvision.models import detection

    with torch.device("meta"):  # skip torchvision's init (its vgg16 builder initialises a 138M-param classifier)
        tv = getattr(detection, name)(
            weights=None, weights_backbone=None, num_classes=n_classes + 1, score_thresh=CONF, nms_thresh=IOU,
            detections_per_img=TOP_K, topk_candidates=TV_TOPK_CANDIDATES,
        )
    tv.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    for m in tv.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", generator=g)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()
            m.momentum = None  # cumulative average over the calibration batches
    if hasattr(tv.backbone, "scale_weight"):
        tv.backbone.scale_weight.data.fill_(20.0)
    x = (calib.float() / 255 - torch.tensor(tv.transform.image_mean).view(1, 3, 1, 1)) / torch.tensor(
        tv.transform.image_std).view(1, 3, 1, 1)
    with torch.no_grad():
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in tv.modules()):
            tv.train()  # BN statistics from data, as a trained network has them
            for chunk in x.split(4):
                tv.head(list(tv.backbone(chunk).values()))
            tv.eval()
        feats = list(tv.backbone(x).values())
        heads = [(tv.head.classification_head, 2.0), (tv.head.regression_head, 1.0)]
        for head, target_std in heads:  # rescale each level's predictor to the target output std
            for mod, f in zip(head.module_list, feats):
                last = mod if isinstance(mod, nn.Conv2d) else mod[-1]
                out = mod(f)
                last.weight.mul_(target_std / float(out.std()))
        logits = tv.head.classification_head(feats)
        lo, hi = 0.0, 20.0  # bisection on the background bias: ~`candidates` pairs above CONF per image
        for _ in range(30):
            mid = (lo + hi) / 2
            shifted = logits.clone()
            shifted[..., 0] += mid
            count = float((shifted.softmax(-1)[..., 1:] > CONF).sum()) / len(x)
            lo, hi = (mid, hi) if count > candidates else (lo, mid)
        bias = (lo + hi) / 2
        k = n_classes + 1
        for mod in tv.head.classification_head.module_list:
            last = mod if isinstance(mod, nn.Conv2d) else mod[-1]
            last.bias.view(-1, k)[:, 0] += bias
    tv.bench_bg_bias = bias
    return tv.eval()


# ---------------------------------------------------------------------------------------------- runners
def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _span(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return b[0] - a[0], b[1] - a[1]


Stages = tuple[tuple[float, float], tuple[float, float], list]  # (network wall/cpu, end to end wall/cpu, dets)


def torchvision_stages(tv: nn.Module, images: Tensor) -> Stages:
    """``tv(list_of_images)`` in eval mode, stage by stage (the code of ``torchvision SSD.forward``)."""
    t0 = _now()
    imgs = [im.float().div_(255) for im in images]
    original_sizes = [tuple(im.shape[-2:]) for im in imgs]
    batch, _ = tv.transform(imgs, None)
    t1 = _now()
    features = list(tv.backbone(batch.tensors).values())
    head_outputs = tv.head(features)
    t2 = _now()
    anchors = tv.anchor_generator(batch, features)
    dets = tv.postprocess_detections(head_outputs, anchors, batch.image_sizes)
    dets = tv.transform.postprocess(dets, batch.image_sizes, original_sizes)
    t3 = _now()
    return _span(t1, t2), _span(t0, t3), dets


def ssdkit_stages(model: nn.Module, images: Tensor) -> Stages:
    """``model.predict(images)`` stage by stage (forward, then :func:`decode_detections`)."""
    t0 = _now()
    cls, box = model(images)
    t1 = _now()
    dets = decode_detections(cls, box, model.anchors, model.image_size, confidence_thresh=CONF, iou_threshold=IOU,
                             top_k=TOP_K, variances=model.variances)
    t2 = _now()
    return _span(t0, t1), _span(t0, t2), dets


def check_same_detections(model: nn.Module, tv: nn.Module, images: Tensor) -> str:
    """Sanity: the stage-by-stage torchvision run gives ``tv(images)``'s detections, and the two
    libraries agree on the top detections (same weights; anchors differ for a few clamped boxes)."""
    with torch.no_grad():
        ref = model.predict(images, confidence_thresh=CONF, iou_threshold=IOU, top_k=TOP_K)
        tv_ref = tv([im.float() / 255 for im in images])
        _, _, tv_staged = torchvision_stages(tv, images)
        assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(tv_ref, tv_staged))
    n_ours = sum(len(d) for d in ref) / len(ref)
    n_tv = sum(len(d["boxes"]) for d in tv_ref) / len(tv_ref)
    top = ref[0][:10]
    tv_top = tv_ref[0]
    agree = sum(
        bool(((tv_top["boxes"] - row[2:]).abs().max(1).values < 0.5).logical_and(tv_top["labels"] == int(row[0])).any())
        for row in top
    )
    return f"detections/img ssdkit {n_ours:.0f}, torchvision {n_tv:.0f}; top-10 of image 0 found by both: {agree}/10"


def run_pair(name: str, size: int, n_classes: int, batches: list[int], repeats: int, candidates: float,
             images: Tensor, rows: list, fuse: bool, verbose: bool, explicit_repeats: bool = False) -> None:
    t = time.perf_counter()
    calib = images[:4] if "vgg" in name else images[:8]  # VGG: no BN to calibrate, ~1 s per image on a core
    tv = realistic_torchvision(name, n_classes, calib, candidates)
    ours = from_torchvision(tv)
    with torch.no_grad():
        cls, _ = ours(calib)
        n_cand = float((cls.softmax(-1)[..., 1:] > CONF).sum()) / len(calib)
    print(f"\n{name}: {ours.num_anchors} anchors, {n_classes} classes, background bias +{tv.bench_bg_bias:.2f}, "
          f"{n_cand:.0f} candidates/img above {CONF} (setup {time.perf_counter() - t:.1f}s)")
    print("  " + check_same_detections(ours, tv, images[:1]))
    for channels_last in (False, True):
        if fuse:
            model = ours.fuse(channels_last=channels_last)
        else:
            model = ours.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            model.input_norm.channels_last = channels_last
        tv.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        for b in batches:
            x = images[:b].contiguous()
            res: dict[str, list[Stages]] = {"ssdkit": [], "torchvision": []}
            runs = {"ssdkit": partial(ssdkit_stages, model, x), "torchvision": partial(torchvision_stages, tv, x)}
            reps = min(repeats, 2) if "vgg" in name and b > 1 and not explicit_repeats else repeats
            with torch.no_grad():
                # warm-up at this batch size for both (allocator, oneDNN primitives for the new shapes): without
                # it the first timed call pays it, and with VGG's 2 repeats at batch 8 that call is half the median
                for run in runs.values():
                    run()
                for rep in range(reps):  # interleaved, alternating order
                    for lib in (("ssdkit", "torchvision") if rep % 2 == 0 else ("torchvision", "ssdkit")):
                        res[lib].append(runs[lib]())
            med = {lib: [statistics.median(r[stage][clock] for r in vals) for stage in (0, 1) for clock in (0, 1)]
                   for lib, vals in res.items()}
            rows.append((name, b, "on" if channels_last else "off", med["ssdkit"], med["torchvision"]))
            if verbose:
                print(f"  batch {b} channels_last={channels_last}: ssdkit {med['ssdkit']}, tv {med['torchvision']}")


def profile(name: str, n_classes: int, images: Tensor, candidates: float) -> None:
    """Where the time goes, per library (torch.profiler, batch 8, channels_last off)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    tv = realistic_torchvision(name, n_classes, images[:8], candidates)
    ours = from_torchvision(tv)
    x = images[:8]
    fused = ours.fuse(channels_last=True)
    runs = (("ssdkit", partial(ssdkit_stages, ours, x)),
            ("ssdkit fused, channels_last", partial(ssdkit_stages, fused, x)),
            ("torchvision", partial(torchvision_stages, tv, x)))
    for label, fn in runs:
        with torch.no_grad():
            fn()
            with tprofile(activities=[ProfilerActivity.CPU]) as prof:
                net, e2e, _ = fn()
        print(f"\n=== {label} {name} batch 8: network {net[0] * 1e3:.1f} ms, end to end {e2e[0] * 1e3:.1f} ms")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up when piped to a file
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: batch 1, one repeat")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core machine OpenMP threads that wait for a busy "
                         "core make timings erratic, up to 10x slower)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed repeats per setting (default: SSDLite 7, VGG 5 at batch 1 and 2 at batch 8)")
    ap.add_argument("--classes", type=int, default=90, help="positive classes (default 90: torchvision's COCO heads)")
    ap.add_argument("--candidates", type=float, default=1000.0,
                    help="(anchor, class) pairs per image above 0.01 (default 1000)")
    ap.add_argument("--models", default="ssdlite320_mobilenet_v3_large,ssd300_vgg16")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler tables instead of timing")
    ap.add_argument("--no-fuse", action="store_true", help="time ssdkit's training-form model (BN not folded)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    rows: list = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; conf {CONF}, IoU {IOU}, top {TOP_K}")
    for name in names:
        size = 320 if "lite" in name else 300
        imgs = bench_images(8, size)
        if args.profile:
            profile(name, args.classes, imgs, args.candidates)
            continue
        batches = [1] if args.quick else [1, 8]
        repeats = 1 if args.quick else (args.repeats or (5 if "vgg" in name else 7))
        run_pair(name, size, args.classes, batches, repeats, args.candidates, imgs, rows, not args.no_fuse,
                 args.verbose, explicit_repeats=args.repeats is not None)
    for clock, title in ((0, "median wall-clock latency"), (1, "median process CPU time")):
        if not rows:
            break
        print(f"\n{title} in ms (ratio = torchvision / ssdkit; > 1: ssdkit faster)")
        head = f"{'model':<30} {'batch':>5} {'ch_last':>7} | {'network ssdkit':>14} {'tv':>8} {'ratio':>6} | " \
               f"{'end-to-end ssdkit':>17} {'tv':>8} {'ratio':>6}"
        print(head)
        print("-" * len(head))
        for name, b, cl, ours_t, tv_t in rows:
            sn, se, tn, te = ours_t[clock], ours_t[2 + clock], tv_t[clock], tv_t[2 + clock]
            print(f"{name:<30} {b:>5} {cl:>7} | {sn * 1e3:>14.1f} {tn * 1e3:>8.1f} {tn / sn:>6.2f} | "
                  f"{se * 1e3:>17.1f} {te * 1e3:>8.1f} {te / se:>6.2f}")
    # As each library runs when nobody changes a setting: ssdkit's Predictor uses the fused,
    # channels_last copy on the CPU; torchvision's model stays contiguous (NCHW).
    by_key = {(name, b, cl): (o, t) for name, b, cl, o, t in rows}
    defaults = [(name, b, by_key[(name, b, "on")][0], by_key[(name, b, "off")][1])
                for name, b, cl, _, _ in rows if cl == "off" and (name, b, "on") in by_key]
    if defaults:
        print("\ndefaults, median wall-clock ms: ssdkit as its Predictor runs on CPU (fused, channels_last) vs "
              "torchvision as built (NCHW)")
        print(f"{'model':<30} {'batch':>5} | {'end-to-end ssdkit':>17} {'tv':>8} {'ratio':>6}")
        for name, b, ours_t, tv_t in defaults:
            print(f"{name:<30} {b:>5} | {ours_t[2] * 1e3:>17.1f} {tv_t[2] * 1e3:>8.1f} {tv_t[2] / ours_t[2]:>6.2f}")
    print(f"\ntotal bench time {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
