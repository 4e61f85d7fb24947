"""``ssdkit info``: versions, device and the anchor presets."""

from __future__ import annotations

import argparse
import platform


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "info",
        help="versions, device and anchor presets",
        description="Print library versions, the compute device and the anchor counts of the built-in presets.",
        epilog="example:\n  ssdkit info",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import torch
    import torchvision

    import ssdkit
    from ssdkit.anchors import PRESETS, AnchorGenerator

    print(f"ssdkit       {ssdkit.__version__}")
    print(f"python       {platform.python_version()}")
    print(f"torch        {torch.__version__}")
    print(f"torchvision  {torchvision.__version__}")
    if torch.cuda.is_available():
        dev = f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} device(s))"
    else:
        dev = f"cpu ({torch.get_num_threads()} threads)"
    print(f"device       {dev}")
    print("\nanchor presets:")
    print(f"  {'name':<14}{'input':>10}{'anchors':>10}  boxes per layer")
    for name in PRESETS:
        g = AnchorGenerator.preset(name)
        print(f"  {name:<14}{'x'.join(map(str, g.image_size)):>10}{g.num_anchors:>10}  {g.boxes_per_layer}")
    return 0
