"""``ssdkit evaluate``: mAP of a checkpoint on a dataset split, with tables, plots and metrics.json."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EPILOG = """examples:
  ssdkit evaluate runs/demo/best.pt                                   # the run's own data and val split
  ssdkit evaluate runs/bccd/best.pt --data configs/bccd_ssdlite_mnv2.yaml --split val --metric voc07
  ssdkit evaluate runs/bccd/best.pt --data configs/bccd_ssdlite_mnv2.yaml data.root=/data/bccd --metric coco
  ssdkit evaluate runs/demo/best.pt --out runs/demo/eval --draw 8 --score 0.5
  ssdkit evaluate runs/bccd/best.pt --metric all                      # voc07, voc10 and coco from one pass

writes to --out (default: <checkpoint folder>/eval_<split>): metrics.json (mAP, per-class rows, error
breakdown), pr_curves.png and, with --draw N, N images with their detections. Boxes are evaluated
in the original image pixels (the model's preprocessing is inverted).
"""


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ssdkit.cli.train import add_command

    p = add_command(
        sub,
        "evaluate",
        help="evaluate a checkpoint (VOC07/VOC10/COCO mAP)",
        description="Evaluate a checkpoint on a dataset split: per-class table (class, GT, detections, AP, max "
                    "recall), error breakdown, metrics.json and a precision-recall plot.",
        epilog=EPILOG,
    )
    p.add_argument("checkpoint", help="ssdkit checkpoint (.pt), e.g. runs/x/best.pt")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.root=/data/voc")
    p.add_argument("--data", metavar="CONFIG", help="config whose data: section is used (default: the checkpoint's)")
    p.add_argument("--split", help="split to evaluate: train, val or test (default: eval.split, usually val)")
    p.add_argument("--metric", type=_metrics, metavar="METRIC[,METRIC]",
                   help="voc07, voc10, coco, a comma-separated list or 'all' (one inference pass; the first "
                        "gives the table); default: the config's eval.metric")
    p.add_argument("--out", help="output folder (default: <checkpoint folder>/eval_<split>)")
    p.add_argument("--batch-size", type=int, help="images per batch (default: eval.batch_size or 16)")
    p.add_argument("--workers", type=int, default=0, help="data loading processes (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--conf", type=float, help="decoding confidence threshold (default: eval.confidence_thresh)")
    p.add_argument("--iou", type=float, help="IoU for a match (default: eval.iou_threshold, 0.5)")
    p.add_argument("--score", type=float, default=0.3,
                   help="score threshold of the error breakdown and the drawn detections (default 0.3)")
    p.add_argument("--draw", type=int, default=0, metavar="N", help="save N images with their detections")
    p.set_defaults(func=run)
    return p


def _metrics(text: str) -> list[str]:
    from ssdkit.engine.evaluator import METRICS

    names = list(METRICS) if text.strip() == "all" else [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown metric(s) {bad or [text]}; choose from {list(METRICS)} or 'all'")
    return list(dict.fromkeys(names))


def _resolve_config(args: argparse.Namespace, ckpt: dict[str, Any]) -> dict[str, Any]:
    from ssdkit.engine.config import load_config
    from ssdkit.errors import ConfigError

    if args.data:
        if not Path(args.data).is_file():
            raise FileNotFoundError(f"config file not found: {args.data}")
        raw = load_config(args.data, args.overrides) if "model" in _keys(args.data) else None
        if raw is None:  # a config with only a data: section
            from ssdkit.engine.config import apply_overrides, read_yaml

            doc = apply_overrides(read_yaml(args.data), args.overrides)
            raw = load_config({**doc, "model": {"name": ckpt["model"].get("name", "unknown")}})
        return raw
    stored = ckpt.get("config")
    if not isinstance(stored, dict):
        raise ConfigError(f"{args.checkpoint} holds no training config: give the dataset with --data CONFIG")
    return load_config(stored, args.overrides)


def _headline(result: Any) -> Any:
    return dict(result.stats) if hasattr(result, "stats") else float(result.map)


def _keys(path: str) -> set[str]:
    from ssdkit.engine.config import read_yaml

    return set(read_yaml(path))


def run(args: argparse.Namespace) -> int:
    import torch

    from ssdkit.checkpoint import load
    from ssdkit.cli.train import setup_logging
    from ssdkit.data import build_dataset
    from ssdkit.engine.evaluator import compute_metric, evaluate
    from ssdkit.engine.trainer import read_checkpoint, select_device
    from ssdkit.errors import ConfigError

    setup_logging()
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    for name in ("conf", "iou"):
        v = getattr(args, name)
        if v is not None and not 0 <= v <= 1:
            raise ConfigError(f"--{name} must be in [0, 1], got {v}")
    ckpt = read_checkpoint(args.checkpoint)
    cfg = _resolve_config(args, ckpt)
    ecfg = cfg["eval"]
    split = args.split or ecfg["split"]
    metrics = args.metric or [ecfg["metric"]]
    metric = metrics[0]
    device = select_device(args.device)
    model = load(args.checkpoint, device=device)
    data_cfg = dict(cfg["data"])
    if not data_cfg.get("format"):
        raise ConfigError("data.format: the config has no dataset; give one with --data CONFIG")
    data_cfg["classes"] = list(model.class_names)
    dataset = build_dataset(data_cfg, split)
    out_dir = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / f"eval_{split}"
    out = evaluate(
        model, dataset, metric, batch_size=args.batch_size or ecfg["batch_size"] or 16, workers=args.workers,
        device=device, confidence_thresh=ecfg["confidence_thresh"] if args.conf is None else args.conf,
        nms_iou=ecfg["nms_iou"], top_k=ecfg["top_k"], nms=ecfg["nms"],
        iou_threshold=ecfg["iou_threshold"] if args.iou is None else args.iou, keep_aspect=ecfg["keep_aspect"],
        keep_samples=max(0, args.draw), progress=True,
    )
    if out.result is None:
        raise ConfigError(f"data.{split}: no images to evaluate")
    from ssdkit.eval import error_breakdown
    from ssdkit.eval.report import write_json

    iou = ecfg["iou_threshold"] if args.iou is None else args.iou
    breakdown = error_breakdown(out.detections, out.targets, out.class_names, iou_threshold=iou,
                                score_threshold=args.score)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"checkpoint": str(args.checkpoint), "split": split, **out.to_dict(),
               "error_breakdown": breakdown.to_dict()}
    extra = {m: compute_metric(m, out.detections, out.targets, out.class_names, iou) for m in metrics[1:]}
    if extra:
        summary["metrics"] = {metric: out.map, **{m: _headline(r) for m, r in extra.items()}}
        summary["per_class_ap"] = {m: r.ap_by_class for m, r in {metric: out.result, **extra}.items()}
    write_json(out_dir / "metrics.json", summary)
    out.result.plot_pr(out_dir / "pr_curves.png")
    if out.samples:
        from ssdkit.viz import draw_detections, save_image

        for s in out.samples:
            save_image(out_dir / "predictions" / f"{s.image_id}.png",
                       draw_detections(s.image, s.detections, out.class_names, score_threshold=args.score))
    name = "mAP" if metric != "coco" else "AP@[.5:.95]"
    print(out.result.summary_table())
    print(f"\nerror breakdown (score >= {args.score:g}):")
    print(breakdown.summary_table())
    print(f"\n{name} ({metric}) on {out.n_images} {split} images: {out.map:.4f}"
          + (f"   AP50 {out.result.stats['AP50']:.4f}" if metric == "coco" else ""))
    for m, r in extra.items():
        if m == "coco":
            st = r.stats
            print(f"COCO AP@[.5:.95] {st['AP']:.4f}   AP50 {st['AP50']:.4f}   AP75 {st['AP75']:.4f}   "
                  f"APs {st['APs']:.4f}   APm {st['APm']:.4f}   APl {st['APl']:.4f}")
        else:
            per = "   ".join(f"{k} {v:.4f}" for k, v in r.ap_by_class.items())
            print(f"mAP ({m}) {r.map:.4f}   {per}")
    print(f"results: {out_dir / 'metrics.json'}, {out_dir / 'pr_curves.png'}")
    del torch
    return 0
