"""``ssdkit demo``: generate a synthetic dataset, train, evaluate and save annotated predictions."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  ssdkit demo                              # ~3-5 min on 2 CPU cores, writes runs/demo/
  ssdkit demo --out /tmp/demo --minutes 8  # another folder, a longer training budget
  ssdkit demo train.batch_size=16          # any config override (configs/demo.yaml)

what it does: renders filled shapes (circle, square, triangle, star; digits 0-9 with demo.kind=digits)
on cluttered canvases (no download) into <out>/data (Pascal VOC layout), trains configs/demo.yaml
(a toy SSD, from scratch) with `ssdkit train`, evaluates VOC07
mAP@0.5 on the validation images and draws predictions into <out>/predictions/.
Then try:  ssdkit evaluate <out>/best.pt   and   tensorboard --logdir <out>/tb
"""


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ssdkit.cli.train import add_command

    p = add_command(
        sub,
        "demo",
        help="generate a synthetic dataset, train, evaluate and save predictions",
        description="End-to-end demo on generated data: dataset -> training -> evaluation -> predictions.",
        epilog=EPILOG,
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (configs/demo.yaml)")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--minutes", type=float, help="time budget for data generation + training (default: the "
                   "config's train.time_limit_min)")
    p.add_argument("--images", type=int, help="training images to generate (default: the config's demo.n_train)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ssdkit.cli.train import setup_logging
    from ssdkit.demo import run_demo
    from ssdkit.errors import ConfigError

    if args.minutes is not None and not args.minutes > 0:
        raise ConfigError(f"--minutes must be > 0, got {args.minutes}")
    if args.images is not None and args.images < 1:
        raise ConfigError(f"--images must be >= 1, got {args.images}")
    overrides = list(args.overrides) + (["train.progress=false"] if args.quiet else [])
    setup_logging(args.quiet)
    res = run_demo(args.out, minutes=args.minutes, overrides=overrides, n_train=args.images)
    print()
    if res["map"] is not None:
        print(f"demo mAP@0.5 ({res['metric']}): {res['map']:.4f} after {res['epochs']} epoch(s), "
              f"{res['minutes']:.1f} min ({res['stop_reason']})")
    else:
        print(f"demo finished ({res['stop_reason']}) in {res['minutes']:.1f} min without validation")
    print(f"run folder:  {res['run_dir']}  (best.pt, results.csv, loss.png, map.png, pr_curves.png, "
          "val_predictions.png, metrics.json, tb/)")
    if res["predictions"]:
        print(f"predictions: {res['predictions']}/")
    print(f"next: ssdkit evaluate {res['best'] or res['run_dir'] + '/last.pt'}")
    return 0
