"""``ssdkit data check`` and ``ssdkit data convert``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EPILOG = """examples:
  ssdkit data check configs/bccd_ssdlite_mnv2.yaml          # every split of the config's data: section
  ssdkit data check ../shared/data/bccd --split val           # a VOC folder
  ssdkit data check labels.csv --images images/               # a label CSV (header-named columns)
  ssdkit data check instances_val.json --level header         # a COCO file, header-level image check
  ssdkit data convert ../shared/data/bccd --split train --to coco --out /tmp/bccd_coco
exit status of check: 0 no errors, 1 data errors under the policy, 2 usage errors
"""


def _policy_overrides(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"--policy expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "data",
        help="check or convert datasets",
        description=("Validate datasets (VOC, CSV, COCO, YOLO, or a config's data: section) "
                     "and convert between formats."),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("source", help="config YAML, YOLO data YAML, COCO JSON, label CSV, or dataset folder")
        q.add_argument("--split", help="only this split (train/val/test or an image-set name)")
        q.add_argument("--images", help="images folder (for a CSV or COCO file when it cannot be guessed)")
        q.add_argument("--policy", action="append", default=[], metavar="KEY=VALUE",
                       help="override data.policy (e.g. --policy bad_image=skip); repeatable")

    c = dsub.add_parser("check", help="validate a dataset and print a summary",
                        description="Parse, validate and decode every image; print images, boxes per class, image "
                                    "sizes and problems by kind. Exits 1 when there are errors.",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(c)
    c.add_argument("--level", choices=["none", "exists", "header", "decode"], default="decode",
                   help="image check level (default: decode every image)")
    c.add_argument("--examples", type=int, default=3, help="examples listed per problem kind (default 3)")
    c.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    c.set_defaults(func=run_check)

    v = dsub.add_parser("convert", help="convert a dataset to VOC, COCO, CSV or YOLO",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(v)
    v.add_argument("--to", required=True, choices=["voc", "coco", "csv", "yolo"], help="output format")
    v.add_argument("--out", required=True, help="output folder")
    v.add_argument("--copy-images", dest="copy_images", choices=["copy", "link", "none"], default="copy",
                   help="copy images (default), symlink them, or write annotations only")
    v.set_defaults(func=run_convert)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    return p


def _open(args: argparse.Namespace, **options: Any) -> dict[str, Any]:
    from ssdkit.data.config import open_datasets

    pol = _policy_overrides(args.policy)
    if pol:
        options["policy"] = pol
    return open_datasets(args.source, args.split, images_dir=args.images, **options)


def run_check(args: argparse.Namespace) -> int:
    datasets = _open(args, check_images=args.level, raise_errors=False, verbose=False)
    n_err = 0
    summary = {}
    for split, ds in datasets.items():
        rep = ds.report
        n_err += len(rep.errors)
        if args.json:
            summary[split] = rep.to_dict()
        else:
            print(rep.format(max_examples=args.examples))
            print()
    if args.json:
        print(json.dumps(summary, indent=2))
    elif n_err:
        print(f"{n_err} error(s): fix the files or change data.policy (see docs/data.md)", file=sys.stderr)
    else:
        print("no errors")
    return 1 if n_err else 0


def run_convert(args: argparse.Namespace) -> int:
    from ssdkit.data.convert import convert_dataset

    datasets = _open(args)
    for split, ds in datasets.items():
        info = convert_dataset(ds, args.to, args.out, split=split if split != "all" else "train",
                               images=args.copy_images)
        print(f"{split}: {info['images']} images -> {args.to} " + ", ".join(f"{k}={v}" for k, v in info.items()
                                                                           if k not in ("format", "images")))
    return 0
