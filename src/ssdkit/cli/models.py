"""``ssdkit models``: the built-in architectures with measured size and cost."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "models",
        help="list the built-in architectures",
        description=(
            "List the built-in SSD architectures with their parameter count, multiply-accumulates "
            "(GMACs, measured on one forward pass at the default input size), anchor count, default "
            "input size (H x W) and predictor feature-map sizes."
        ),
        epilog=("examples:\n  ssdkit models\n  ssdkit models ssd300_vgg16 ssd7 --classes 3\n"
                "  ssdkit models ssdlite320_mobilenet_v2 --modules 2     # module names for train.freeze"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="only these models (default: all)")
    p.add_argument("--classes", type=int, default=20, help="positive classes of the heads (default: 20, VOC)")
    p.add_argument("--modules", type=int, default=None, metavar="DEPTH",
                   help="instead of the table, list each model's module names up to DEPTH dotted parts, with "
                        "parameter counts and output sizes at the default input (what train.freeze takes)")
    p.set_defaults(func=run)
    return p


def _fmt_size(size: tuple[int, int] | list[int]) -> str:
    h, w = size
    return f"{h}x{w}"


def _fmt_maps(sizes: list[tuple[int, int]]) -> str:
    return ",".join(str(h) if h == w else f"{h}x{w}" for h, w in sizes)


def run(args: argparse.Namespace) -> int:
    from ssdkit.errors import ConfigError
    from ssdkit.models import count_macs, list_models
    from ssdkit.models.registry import build_uninitialized

    names = args.names or list_models()
    valid = list_models()
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ConfigError(f"unknown model(s) {unknown}; choose from {valid}")
    if args.classes < 1:
        raise ConfigError(f"--classes must be >= 1, got {args.classes}")
    if args.modules is not None:
        if args.modules < 1:
            raise ConfigError(f"--modules must be >= 1, got {args.modules}")
        for name in names:
            _print_modules(name, build_uninitialized(name, n_classes=args.classes), args.modules)
        return 0
    rows = []
    for name in names:
        # weights are irrelevant to the counts: skip their initialisation (an SSD512 has 27M parameters)
        model = build_uninitialized(name, n_classes=args.classes)
        params = sum(p.numel() for p in model.parameters())
        macs = count_macs(model, model.image_size)
        rows.append((name, _fmt_size(model.image_size), f"{params:,}", f"{macs / 1e9:.2f}",
                     f"{model.num_anchors:,}", _fmt_maps(model.feature_map_sizes)))
    header = ("name", "input", "params", "GMACs", "anchors", "feature maps")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {2, 3, 4}
    for r in [header, *rows]:
        print("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    print(f"({args.classes} classes + background; GMACs: multiply-accumulates of one image at the input size)")
    return 0


def _print_modules(name: str, model: object, depth: int) -> None:
    """Module names (as ``train.freeze`` takes them) with parameters and output shape of one image."""
    from torch import nn

    from ssdkit.engine.freeze import module_names
    from ssdkit.models.ssd import module_output_shapes

    assert isinstance(model, nn.Module)
    h, w = model.image_size  # type: ignore[attr-defined]
    shapes = {n: "x".join(str(d) for d in shape[1:]) for n, shape in module_output_shapes(model, (h, w))}
    modules = dict(model.named_modules())
    names = module_names(model, depth)
    print(f"{name} ({h}x{w}): module, parameters, output C x H x W")
    width = max(len(n) for n in names)
    for n in names:
        params = sum(p.numel() for p in modules[n].parameters())
        print(f"  {n.ljust(width)}  {params:>11,}  {shapes.get(n, '')}")
