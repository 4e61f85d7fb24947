"""``ssdkit`` command-line entry point.

Each sub-command lives in its own module ``ssdkit.cli.<name>`` exposing
``register(subparsers) -> argparse.ArgumentParser`` that sets ``func=run`` where
``run(args) -> int``. Modules are imported lazily so ``ssdkit --help`` stays fast and a broken
optional dependency only affects its own command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# (command, module, one-line help); order is the order shown in --help
COMMANDS: list[tuple[str, str, str]] = [
    ("demo", "ssdkit.cli.demo", "generate a synthetic dataset, train, evaluate and save predictions"),
    ("train", "ssdkit.cli.train", "train a model from a YAML config"),
    ("evaluate", "ssdkit.cli.evaluate", "evaluate a checkpoint (VOC07/VOC10/COCO mAP)"),
    ("predict", "ssdkit.cli.predict", "detect objects in images, folders, globs or videos"),
    ("export", "ssdkit.cli.export", "export a checkpoint to ONNX or TorchScript"),
    ("data", "ssdkit.cli.data", "check or convert datasets"),
    ("anchors", "ssdkit.cli.anchors", "analyse and fit anchor boxes to a dataset"),
    ("models", "ssdkit.cli.models", "list the built-in architectures"),
    ("info", "ssdkit.cli.info", "versions, device and anchor presets"),
]

EPILOG = """examples:
  ssdkit demo                                  # runs end to end on generated data
  ssdkit train configs/bccd_ssdlite_mnv2.yaml data.root=/data/bccd
  ssdkit evaluate runs/bccd/best.pt --data configs/bccd_ssdlite_mnv2.yaml --metric voc07
  ssdkit predict runs/bccd/best.pt images/ --out preds/
  ssdkit export runs/bccd/best.pt --format onnx --nms
"""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    from ssdkit import __version__

    parser = argparse.ArgumentParser(
        prog="ssdkit",
        description="SSD object detection: train, evaluate, predict, export.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ssdkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_ in COMMANDS:
        if only is not None and name != only:
            sub.add_parser(name, help=help_, add_help=False)
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue  # command not available in this build
        mod.register(sub)
    return parser


def _format_error(exc: BaseException) -> str:
    msg = str(exc).strip() or exc.__class__.__name__
    if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in msg:
        msg = f"{msg}: {exc.filename}"
    return msg.splitlines()[0] if "\n" in msg and len(msg) > 2000 else msg


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Build only the sub-parser that is needed: importing every command's dependencies is slow.
    only = next((a for a in argv if not a.startswith("-")), None)
    known = {name for name, _, _ in COMMANDS}
    parser = build_parser(only if only in known else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if not argv else 2
    from ssdkit.errors import SSDKitError

    debug = args.debug or os.environ.get("SSDKIT_DEBUG") == "1"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("ssdkit: interrupted", file=sys.stderr)
        return 130
    except (SSDKitError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError) as exc:
        if debug:
            raise
        print(f"ssdkit {args.command}: error: {_format_error(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
