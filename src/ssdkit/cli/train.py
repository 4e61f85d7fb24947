"""``ssdkit train``: train from a YAML config, with ``key.path=value`` overrides, or resume a run."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

EPILOG = """examples:
  ssdkit train configs/ssd300_voc0712.yaml data.root=/data/VOCdevkit
  ssdkit train configs/demo.yaml train.epochs=5 train.batch_size=16 name=demo_small
  ssdkit train --resume runs/demo/last.pt                  # continue where the run stopped
  ssdkit train --resume runs/demo/last.pt train.epochs=20  # ... and train longer
  torchrun --nproc_per_node=2 -m ssdkit.cli.main train configs/demo.yaml   # DDP (gloo on CPU, nccl on GPU)

overrides are YAML values: train.amp=bf16, schedule.milestones=[8,12], model.scales=[0.1,0.2,0.4,0.8].
The run folder (train.out_dir/name) gets config.yaml, last.pt, best.pt, results.csv, iterations.csv,
TensorBoard logs (tb/), loss.png, map.png, pr_curves.png, val_predictions.png and metrics.json.
"""


class OverridesParser(argparse.ArgumentParser):
    """A sub-command parser that accepts ``key.path=value`` overrides anywhere on the line.

    argparse fills a ``nargs='*'`` positional only once, so ``ssdkit evaluate CKPT --split val
    data.root=/x`` would leave ``data.root=/x`` unrecognised; leftovers that look like overrides are
    appended to ``args.overrides`` instead.
    """

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        ns, rest = super().parse_known_args(args, namespace)
        extra = [a for a in rest if "=" in a and not a.startswith("-")]
        if extra:
            ns.overrides = [*(getattr(ns, "overrides", None) or []), *extra]
            rest = [a for a in rest if a not in extra]
        return ns, rest


def add_command(sub: argparse._SubParsersAction, name: str, **kw: Any) -> argparse.ArgumentParser:
    """``sub.add_parser(name, **kw)`` as an :class:`OverridesParser` with the examples epilog layout."""
    p = sub.add_parser(name, formatter_class=argparse.RawDescriptionHelpFormatter, **kw)
    p.__class__ = OverridesParser
    return p


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(
        sub,
        "train",
        help="train a model from a YAML config",
        description="Train an SSD from a YAML config (see docs/training.md for every key).",
        epilog=EPILOG,
    )
    p.add_argument("config", nargs="?", help="YAML config (optional with --resume: the checkpoint's config is used)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=5")
    p.add_argument("--resume", metavar="CHECKPOINT", help="continue a run from its last.pt (or another checkpoint)")
    p.add_argument("--name", help="run name (same as name=...)")
    p.add_argument("--out-dir", help="parent folder of the run folder (same as train.out_dir=...)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (same as train.device=...)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    p.set_defaults(func=run)
    return p


def setup_logging(quiet: bool = False) -> None:
    """INFO logs of ``ssdkit`` to stderr (rank 0 of a distributed run; warnings only on the others)."""
    rank = int(os.environ.get("RANK", "0"))
    level = logging.WARNING if quiet or rank != 0 else logging.INFO
    logger = logging.getLogger("ssdkit")
    logger.setLevel(level)
    if not any(getattr(h, "_ssdkit_cli", False) for h in logger.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s" if rank == 0 else f"[rank {rank}] %(message)s"))
        h._ssdkit_cli = True  # type: ignore[attr-defined]
        logger.addHandler(h)
        logger.propagate = False


def split_config_and_overrides(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """With ``--resume`` the first positional may already be an override (``train.epochs=20``)."""
    if config is not None and "=" in config and not Path(config).exists():
        return None, [config, *overrides]
    return config, list(overrides)


def run(args: argparse.Namespace) -> int:
    from ssdkit.engine.trainer import NonFiniteLossError, train
    from ssdkit.errors import ConfigError

    config, overrides = split_config_and_overrides(args.config, args.overrides)
    if config is None and not args.resume:
        raise ConfigError("give a config file (ssdkit train CONFIG) or --resume CHECKPOINT")
    if config is not None and not Path(config).is_file():
        raise FileNotFoundError(f"config file not found: {config}")
    for flag, key in ((args.name, "name"), (args.out_dir, "train.out_dir"), (args.device, "train.device")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    if args.quiet:
        overrides.append("train.progress=false")
    setup_logging(args.quiet)
    try:
        result = train(config, overrides, resume=args.resume)
    except NonFiniteLossError as exc:
        print(f"ssdkit train: stopped: {exc}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        best = f"best {result.best_metric} {result.best_value:.4f} (epoch {result.best_epoch})" \
            if result.best_value is not None else "no best metric"
        print(f"{result.stop_reason}: {result.epochs_completed} epoch(s), {result.iteration} iterations, {best}")
        if result.map is not None:
            print(f"final mAP: {result.map:.4f}")
        print(f"run folder: {result.run_dir}")
    return 0 if result.stop_reason != "interrupted" else 130
