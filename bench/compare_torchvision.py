"""Real-data baseline: torchvision's SSDLite320-MobileNetV3 trained on the same data, budget and evaluation.

What is compared (issue: real-data results). The ssdkit row is a run of a ready config
(``ssdkit train configs/bccd_ssdlite_mnv2.yaml``, its ``best.pt`` passed with ``--ssdkit``); the
baseline is trained here, in the same wall-clock budget on the same machine:

- model: ``torchvision.models.detection.ssdlite320_mobilenet_v3_large(num_classes=C+1)`` with its
  ImageNet backbone when ``mobilenet_v3_large-8738ca79.pth`` is in torchvision's cache
  (``$TORCH_HOME/hub/checkpoints``), else ``weights_backbone=None`` (the report says which: nothing
  is downloaded); torchvision's own anchors, matching, loss and post-processing;
- data: the same ssdkit dataset and loader, the same augmentation chain as the ssdkit config
  (``augment:`` section, resized to the baseline's 320x320), batch 16;
- optimiser: the ssdkit config's (AdamW, lr, weight decay), cosine decay over the **time** budget
  after the same linear warm-up, so the schedule completes whatever the machine's speed;
- evaluation: the ssdkit evaluators on the same split, in original image pixels, at the same
  decoding settings (score > 0.01, NMS 0.45, 200 detections per image); torchvision maps its boxes
  back to the original image itself.

Printed: VOC07 and VOC10 mAP@0.5, COCO AP@[.5:.95] and AP50, per-class AP (VOC10) for both models;
written under ``--out``: ``compare.json``, PR curves and a grid of validation predictions per model.

Usage:
  python bench/compare_torchvision.py --config configs/bccd_ssdlite_mnv2.yaml \\
      --ssdkit runs/bccd_ssdlite_mnv2/best.pt --budget-min 28
  python bench/compare_torchvision.py --quick        # 1-minute smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

TV_BACKBONE_FILE = "mobilenet_v3_large-8738ca79.pth"
METRICS = ("voc07", "voc10", "coco")


def tv_model(n_classes: int, size: int, conf: float, nms: float, top_k: int) -> tuple[torch.nn.Module, str]:
    """torchvision's SSDLite320 with its ImageNet backbone if cached, else none (never downloads)."""
    from torchvision.models import MobileNet_V3_Large_Weights
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    cached = Path(torch.hub.get_dir()) / "checkpoints" / TV_BACKBONE_FILE
    wb = MobileNet_V3_Large_Weights.IMAGENET1K_V1 if cached.is_file() else None
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=wb, num_classes=n_classes + 1,
                                          score_thresh=conf, nms_thresh=nms, detections_per_img=top_k,
                                          topk_candidates=400)
    model.transform.min_size, model.transform.max_size = (size,), size
    model.transform.fixed_size = (size, size)
    how = "ImageNet MobileNetV3-Large backbone" if wb else (
        f"no ImageNet backbone ({TV_BACKBONE_FILE} is not in {cached.parent}; torchvision's builder takes "
        "only MobileNetV3 weights)")
    return model, how


def train_baseline(model: torch.nn.Module, loader: Any, n_images: int, opt_cfg: dict[str, Any], budget_s: float,
                   warmup: int, min_lr: float) -> dict[str, Any]:
    """Train until the budget is spent; lr: linear warm-up, then cosine over the elapsed fraction."""
    params = [p for p in model.parameters() if p.requires_grad]
    lr = float(opt_cfg.get("lr", 0.002))
    name = opt_cfg.get("name", "adamw")
    if name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=opt_cfg.get("momentum", 0.9),
                                                     weight_decay=opt_cfg.get("weight_decay", 0.0))
    else:
        cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        opt = cls(params, lr=lr, weight_decay=opt_cfg.get("weight_decay", 0.0))
    model.train()
    t0, it, images, epoch, losses = time.perf_counter(), 0, 0, 0, []  # epoch: for the log lines
    while True:
        epoch += 1
        for batch in loader:
            frac = (time.perf_counter() - t0) / budget_s
            if frac >= 1.0:
                return {"iterations": it, "images": images, "epochs": images / n_images,
                        "seconds": time.perf_counter() - t0,
                        "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:]))}
            cur = min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * frac))
            if it < warmup:
                cur *= 0.001 + (1 - 0.001) * it / warmup
            for g in opt.param_groups:
                g["lr"] = cur
            imgs = [im.float().div_(255.0) for im in batch["images"]]
            targets = [{"boxes": t["boxes"].float(), "labels": t["labels"].long()} for t in batch["targets"]]
            parts = model(imgs, targets)
            loss = sum(parts.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            it += 1
            images += len(imgs)
            if it % 24 == 0:
                el = time.perf_counter() - t0
                print(f"  torchvision it {it} epoch {epoch} loss {sum(losses[-24:]) / 24:.3f} lr {cur:.2e} "
                      f"{images / el:.1f} img/s {el / 60:.1f}/{budget_s / 60:.0f} min", file=sys.stderr)


@torch.no_grad()
def tv_detections(model: torch.nn.Module, dataset: Any, batch: int = 8) -> tuple[list[torch.Tensor], list[dict]]:
    """Detections ``[K, 6]`` (original pixels) and targets of every image of ``dataset``."""
    model.eval()
    dets, targets = [], []
    for start in range(0, len(dataset), batch):
        items = [dataset[i] for i in range(start, min(start + batch, len(dataset)))]
        out = model([im.float().div(255.0) for im, _ in items])
        for (_, t), o in zip(items, out):
            dets.append(torch.cat([o["labels"][:, None].float(), o["scores"][:, None], o["boxes"]], 1))
            targets.append({k: t[k] for k in ("boxes", "labels", "difficult", "image_id", "orig_size")})
    return dets, targets


def metrics_of(dets: list[torch.Tensor], targets: list[dict], names: list[str]) -> dict[str, Any]:
    from ssdkit.engine.evaluator import compute_metric

    res = {m: compute_metric(m, dets, targets, names) for m in METRICS}
    return {"voc07": res["voc07"].map, "voc10": res["voc10"].map, "coco_ap": res["coco"].stats["AP"],
            "coco_ap50": res["coco"].stats["AP50"], "per_class_voc10": res["voc10"].ap_by_class,
            "_results": res}


def prediction_grid(dataset: Any, dets: list[torch.Tensor], names: list[str], path: Path, n: int = 6,
                    score: float = 0.3) -> None:
    """Ground truth (left) beside predictions (right) for the first ``n`` images."""
    from ssdkit.viz import caption, draw_boxes, draw_detections, image_grid, save_image

    tiles = []
    for i in range(min(n, len(dataset))):
        im, t = dataset[i]
        gt = draw_boxes(im, t["boxes"], labels=t["labels"], class_names=names)
        tiles += [caption(gt, f"{t['image_id']}: ground truth"),
                  caption(draw_detections(im, dets[i], names, score_threshold=score), f"predictions >= {score}")]
    save_image(path, image_grid(tiles, ncols=2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "bccd_ssdlite_mnv2.yaml"),
                    help="the ssdkit config whose data, augmentation and optimiser the baseline uses")
    ap.add_argument("--ssdkit", metavar="CHECKPOINT", help="an ssdkit run's best.pt to evaluate beside the baseline")
    ap.add_argument("--split", default="val")
    ap.add_argument("--budget-min", type=float, default=28.0, help="baseline training wall-clock minutes")
    ap.add_argument("--size", type=int, default=320, help="baseline input size (torchvision's SSDLite320)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the config's)")
    ap.add_argument("--out", default="runs/compare_torchvision")
    ap.add_argument("--quick", action="store_true", help="1-minute budget (smoke run)")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. data.root=/data/bccd")
    args = ap.parse_args(argv)
    if args.ssdkit and not Path(args.ssdkit).is_file():  # before the baseline's budget is spent, not after
        ap.error(f"--ssdkit: checkpoint not found: {args.ssdkit}")
    if args.quick:
        args.budget_min = 1.0

    from ssdkit.data import build_augmentation, build_dataset, build_loader
    from ssdkit.engine.config import load_config
    from ssdkit.engine.evaluator import evaluate
    from ssdkit.eval.plots import plot_pr
    from ssdkit.fileio import atomic_write_text

    cfg = load_config(args.config, args.overrides)
    torch.manual_seed(cfg["train"]["seed"])
    names = list(cfg["data"]["classes"] or [])
    train_ds = build_dataset(cfg["data"], "train")
    names = names or list(train_ds.classes)
    val_ds = build_dataset({**cfg["data"], "classes": names}, args.split)
    ecfg = cfg["eval"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"config": args.config, "split": args.split, "budget_min": args.budget_min,
                              "threads": torch.get_num_threads(), "models": {}}

    model, how = tv_model(len(names), args.size, ecfg["confidence_thresh"], ecfg["nms_iou"], ecfg["top_k"])
    print(f"baseline: torchvision ssdlite320_mobilenet_v3_large, {how}; {args.budget_min:g} min on "
          f"{torch.get_num_threads()} thread(s)", file=sys.stderr)
    aug = build_augmentation(cfg["augment"], (args.size, args.size), background=(127, 127, 127))
    workers = cfg["train"]["workers"] if args.workers is None else args.workers
    loader = build_loader(train_ds, batch_size=cfg["train"]["batch_size"], shuffle=True, workers=workers,
                          transforms=aug, drop_last=True, seed=cfg["train"]["seed"])
    stats = train_baseline(model, loader, len(train_ds), cfg["optimizer"], args.budget_min * 60,
                           cfg["schedule"]["warmup_iters"], cfg["schedule"]["min_lr"])
    t0 = time.perf_counter()
    dets, targets = tv_detections(model, val_ds)
    tv = metrics_of(dets, targets, names)
    tv_res = tv.pop("_results")
    report["models"]["torchvision ssdlite320_mobilenet_v3_large"] = {
        **tv, "backbone": how, "train": stats, "eval_seconds": time.perf_counter() - t0, "input": [args.size] * 2}
    plot_pr(tv_res["voc10"], out / "pr_torchvision.png", title="torchvision SSDLite320-MNv3 (VOC10)")
    prediction_grid(val_ds, dets, names, out / "predictions_torchvision.png")

    if args.ssdkit:
        import ssdkit

        m = ssdkit.load(args.ssdkit)
        ev = evaluate(m, val_ds, "voc10", confidence_thresh=ecfg["confidence_thresh"], nms_iou=ecfg["nms_iou"],
                      top_k=ecfg["top_k"], nms=ecfg["nms"], keep_aspect=ecfg["keep_aspect"])
        sk = metrics_of(ev.detections, ev.targets, names)
        sk_res = sk.pop("_results")
        report["models"][f"ssdkit {m.config['name']}"] = {**sk, "checkpoint": args.ssdkit,
                                                          "input": list(m.image_size)}
        plot_pr(sk_res["voc10"], out / "pr_ssdkit.png", title=f"ssdkit {m.config['name']} (VOC10)")
        prediction_grid(val_ds, ev.detections, names, out / "predictions_ssdkit.png")

    atomic_write_text(out / "compare.json", json.dumps(report, indent=2, default=float))
    print(f"\n{len(val_ds)} {args.split} images; VOC mAP@0.5 (VOC07 11-point, VOC10 all-point), COCO AP")
    head = f"{'model':<46}{'input':>9}{'VOC07':>8}{'VOC10':>8}{'COCO AP':>9}{'AP50':>7}  " + "  ".join(
        f"{n:>9}" for n in names)
    print(head)
    for name, r in report["models"].items():
        per = "  ".join(f"{r['per_class_voc10'][n]:>9.4f}" for n in names)
        size = "x".join(str(s) for s in r["input"])
        print(f"{name:<46}{size:>9}{r['voc07']:>8.4f}{r['voc10']:>8.4f}"
              f"{r['coco_ap']:>9.4f}{r['coco_ap50']:>7.4f}  {per}")
    print(f"baseline: {stats['iterations']} iterations, {stats['images']} images in {stats['seconds'] / 60:.1f} min "
          f"({stats['images'] / stats['seconds']:.1f} img/s); report: {out / 'compare.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
