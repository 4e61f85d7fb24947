"""``ssdkit anchors analyze|fit``: anchor coverage of a dataset, and anchor scales fitted to it."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

EPILOG = """examples:
  ssdkit anchors analyze --data configs/bccd_ssdlite_mnv2.yaml
  ssdkit anchors analyze --data configs/bccd_ssdlite_mnv2.yaml --model ssd300_vgg16 --out runs/anchors
  ssdkit anchors fit --data configs/bccd_ssdlite_mnv2.yaml --model ssdlite320_mobilenet_v2 --aspect-ratios
  ssdkit anchors fit --data configs/bccd_ssdlite_mnv2.yaml --write configs/bccd_fitted.yaml
"""


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "anchors",
        help="analyse and fit anchor boxes to a dataset",
        description="How well do a model's anchors reach a dataset's boxes (after resizing to the model's "
        "input)? `analyze` reports coverage by class, size and layer and plots box sizes over anchor "
        "shapes; `fit` searches scales (and aspect ratios) with better coverage at the same anchor count.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help_ in (("analyze", "report anchor coverage"), ("fit", "fit scales/aspect ratios to the data")):
        a = actions.add_parser(name, help=help_, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        a.add_argument("--data", required=True, help="YAML with a data: section (a run config) or a data section")
        a.add_argument("--model", help="model name (default: the config's model.name)")
        a.add_argument("--config", dest="model_config", help="YAML whose model: section gives the model and anchors")
        a.add_argument("--split", default="train", help="dataset split (default: train)")
        a.add_argument("--image-size", type=int, nargs="+", metavar="N", help="input H [W] (default: the model's)")
        a.add_argument("--pos-iou", type=float, default=None, help="positive IoU threshold (default: encoder's, 0.5)")
        a.add_argument("--neg-iou", type=float, default=None, help="neutral IoU limit (default: encoder's, 0.3)")
        a.add_argument("--out", default=None, help="folder for coverage.json and the plot (default: runs/anchors)")
        a.add_argument("overrides", nargs="*", help="key.path=value overrides of the config (e.g. data.root=...)")
        if name == "fit":
            a.add_argument("--aspect-ratios", action="store_true", help="also fit per-layer aspect ratios")
            a.add_argument("--write", nargs="?", const="", default=None, metavar="CONFIG",
                           help="write the fitted anchors into CONFIG (default: the --data file)")
        a.set_defaults(func=run)
    return p


def _sections(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    from ssdkit.engine.config import apply_overrides, read_yaml
    from ssdkit.errors import ConfigError

    raw = read_yaml(args.data)
    apply_overrides(raw, args.overrides)
    data = raw.get("data", raw)
    model = dict(raw.get("model") or {})
    if args.model_config:
        model = dict(read_yaml(args.model_config).get("model") or {})
    if args.model and model.get("name") != args.model:
        model = {"name": args.model}  # another architecture: its own default anchors
    if not model.get("name"):
        raise ConfigError("no model: pass --model NAME (see `ssdkit models`) or a config with model.name")
    encoder = dict(raw.get("encoder") or {})
    return data, model, encoder


def _build(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any], dict[str, Any], list[str]]:
    from ssdkit.data import build_dataset
    from ssdkit.models import build_model, get_spec

    data, model_cfg, encoder = _sections(args)
    get_spec(model_cfg["name"])  # an unknown model fails before the (slower) dataset scan
    dataset = build_dataset(data, args.split)
    kwargs = {k: v for k, v in model_cfg.items() if k not in ("name", "backbone_weights", "checkpoint")}
    if args.image_size:
        kwargs["image_size"] = args.image_size[0] if len(args.image_size) == 1 else args.image_size[:2]
    model = build_model(model_cfg["name"], n_classes=max(1, len(dataset.classes)), **kwargs)
    return dataset, model, model_cfg, encoder, list(dataset.classes)


def _write_anchors(path: Path, scales: list[float], ars: list[list[float]] | None) -> None:
    """Set model.scales (and model.aspect_ratios) in a YAML file, keeping its other lines and comments."""
    import yaml

    from ssdkit.fileio import atomic_write_text

    def flow(v: Any) -> str:
        return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip()

    values = {"scales": [round(s, 5) for s in scales]}
    if ars is not None:
        values["aspect_ratios"] = [[round(a, 5) for a in layer] for layer in ars]
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if re.match(r"^model:\s*(#.*)?$", ln)), None)
    if start is None:
        lines += ["model:"]
        start = len(lines) - 1
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace()
                and not lines[i].lstrip().startswith("#")), len(lines))
    indent = "  "
    for key, val in values.items():
        new = f"{indent}{key}: {flow(val)}"
        hit = next((i for i in range(start + 1, end) if re.match(rf"^\s+{key}:", lines[i])), None)
        if hit is not None:
            # drop continuation lines of a block-style value
            j = hit + 1
            while j < end and re.match(r"^\s+-", lines[j]):
                j += 1
            lines[hit:j] = [new]
            end -= j - hit - 1
        else:
            last = end
            while last > start + 1 and not lines[last - 1].strip():
                last -= 1  # keep blank lines after the block
            lines.insert(last, new)
            end += 1
    out = "\n".join(lines) + "\n"
    parsed = yaml.safe_load(out)
    if [round(s, 5) for s in parsed["model"]["scales"]] != values["scales"]:
        raise RuntimeError(f"could not update {path} safely; paste the snippet by hand")
    atomic_write_text(path, out)


def run(args: argparse.Namespace) -> int:
    from ssdkit.anchor_analysis import boxes_from_dataset, coverage, fit_anchors, plot_anchor_coverage
    from ssdkit.fileio import atomic_write_json

    dataset, model, model_cfg, encoder, classes = _build(args)
    gen = model.anchor_generator
    pos = args.pos_iou if args.pos_iou is not None else float(encoder.get("pos_iou_threshold", 0.5))
    neg = args.neg_iou if args.neg_iou is not None else float(encoder.get("neg_iou_limit", 0.3))
    matching = encoder.get("matching", "multi")
    boxes, labels = boxes_from_dataset(dataset, gen.image_size)
    out = Path(args.out or "runs/anchors")
    out.mkdir(parents=True, exist_ok=True)
    name = model_cfg["name"]
    size = "x".join(map(str, gen.image_size))
    print(f"{dataset.__class__.__name__} split={args.split}: {len(dataset)} images; model {name} at {size}, "
          f"{gen.num_anchors} anchors, scales {[round(s, 3) for s in gen.scales]}")
    rep = coverage(boxes, gen, labels, classes, pos, neg, matching)
    print(rep.summary())
    result: dict[str, Any] = {"model": name, "image_size": list(gen.image_size), "before": rep.to_dict()}
    if args.action == "analyze":
        plot = plot_anchor_coverage(boxes, gen, out / "anchor_coverage.png", f"{name} {size}: anchors vs boxes")
        print(f"plot: {plot}")
    else:
        res = fit_anchors(boxes, gen, pos, neg, fit_aspect_ratios=args.aspect_ratios)
        from ssdkit.anchors import AnchorGenerator

        fitted = AnchorGenerator(**{**gen.config(), "scales": res.scales, "aspect_ratios": res.aspect_ratios})
        after = coverage(boxes, fitted, labels, classes, pos, neg, matching)
        print(f"\nfitted ({res.evaluations} evaluations), same {fitted.num_anchors} anchors:")
        print(after.summary())
        print(f"\ncoverage at IoU >= {pos:g}: {100 * rep.frac_pos:.1f}% -> {100 * after.frac_pos:.1f}%")
        print("\npaste into your config:\n" + res.yaml_snippet())
        result.update(after=after.to_dict(), scales=res.scales, aspect_ratios=res.aspect_ratios)
        plot_anchor_coverage(boxes, fitted, out / "anchor_coverage_fitted.png", f"{name} {size}: fitted anchors")
        if args.write is not None:
            target = Path(args.write or args.data)
            _write_anchors(target, res.scales, res.aspect_ratios if args.aspect_ratios else None)
            print(f"wrote model.scales{' and model.aspect_ratios' if args.aspect_ratios else ''} into {target}")
    atomic_write_json(out / "coverage.json", result)
    print(f"report: {out / 'coverage.json'}")
    return 0
