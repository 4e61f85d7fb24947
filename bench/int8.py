"""int8 quantiser settings against fp32 ONNX Runtime, and where the int8 graph spends its time.

Setup: ssdkit's network (default SSDLite320-MobileNetV3, 20 classes, the realistic untrained
weights of ``bench/infer.py``) exported to fp32 ONNX as ``ssdkit export`` does, then quantised
with ``onnxruntime.quantization.quantize_static`` calibrated on 32 BCCD JPEGs (MinMax, uint8
activations, int8 weights) in several settings:

- ``qdq``: ssdkit's default (QDQ format, per-tensor weights);
- ``qdq_per_channel``, ``qoperator``, ``qdq_reduce_range``;
- ``qdq_conv_only`` / ``qdq_conv_add``: only these operator types quantised.

Printed: the network alone, ms per image at batch 1 and 8 (medians of interleaved runs, ssdkit's
session settings), ratio over fp32; then, with ``--profile``, ONNX Runtime's per-operator time for
fp32 and the default int8 graph at batch 8 (the optimised graphs, after fusion).

Usage: python bench/int8.py [--model ssdlite320_mobilenet_v3_large] [--repeats 7] [--profile]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ssdlite320_mobilenet_v3_large")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--profile", action="store_true", help="per-operator ONNX Runtime times at batch 8")
    args = ap.parse_args(argv)

    import numpy as np
    import onnxruntime as ort
    import torch
    from infer import bench_images, ssdkit_model
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ssdkit.deploy.export import export_onnx_bytes
    from ssdkit.deploy.ort import OrtRunner, session_options
    from ssdkit.deploy.quantize import _reader, calibration_images

    net = ssdkit_model(args.model).eval()
    with tempfile.TemporaryDirectory(prefix="ssdkit-int8-") as tmp:
        paths, what = bench_images(32, tmp)
        images = calibration_images(net, paths, 32, False)
        with torch.no_grad():
            fp32 = export_onnx_bytes(net, "raw", dynamic_batch=True)
        src, pre = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "pre.onnx")
        Path(src).write_bytes(fp32)
        quant_pre_process(src, pre, skip_symbolic_shape=False)
        base = dict(quant_format=QuantFormat.QDQ, per_channel=False, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        variants = {
            "qdq": {},
            "qdq_per_channel": {"per_channel": True},
            "qoperator": {"quant_format": QuantFormat.QOperator},
            "qdq_reduce_range": {"reduce_range": True},
            "qdq_conv_only": {"op_types_to_quantize": ["Conv"]},
            "qdq_conv_add": {"op_types_to_quantize": ["Conv", "Add"]},
        }
        graphs = {"fp32": src}
        for name, kw in variants.items():
            out = os.path.join(tmp, f"{name}.onnx")
            quantize_static(pre, out, _reader(images, 8), **{**base, **kw})
            graphs[name] = out
        print(f"{args.model}: calibrated on {len(images)} {what}; network only, ms per image (medians of "
              f"{args.repeats} interleaved runs)")
        runners = {k: OrtRunner(v) for k, v in graphs.items()}
        print(f"{'graph':<18}{'b1 ms':>8}{'vs fp32':>9}{'b8 ms':>8}{'vs fp32':>9}")
        res: dict[str, list[float]] = {k: [] for k in runners}
        for b in (1, 8):
            x = np.ascontiguousarray(np.resize(images, (b, *images.shape[1:])))
            for r in runners.values():
                r(x)
            times: dict[str, list[float]] = {k: [] for k in runners}
            for _ in range(args.repeats):
                for k, r in runners.items():
                    t0 = time.perf_counter()
                    r(x)
                    times[k].append((time.perf_counter() - t0) * 1e3 / b)
            for k in runners:
                res[k].append(statistics.median(times[k]))
        for k, (b1, b8) in res.items():
            print(f"{k:<18}{b1:>8.2f}{res['fp32'][0] / b1:>8.2f}x{b8:>8.2f}{res['fp32'][1] / b8:>8.2f}x")

        if args.profile:
            x = np.ascontiguousarray(np.resize(images, (8, *images.shape[1:])))
            for label in ("fp32", "qdq"):
                so = session_options(profile=True)
                so.profile_file_prefix = os.path.join(tmp, label)
                sess = ort.InferenceSession(graphs[label], so, providers=["CPUExecutionProvider"])
                name = sess.get_inputs()[0].name
                for _ in range(6):
                    sess.run(None, {name: x})
                events = json.loads(Path(sess.end_profiling()).read_text())
                per_op: collections.Counter[str] = collections.Counter()
                calls: collections.Counter[str] = collections.Counter()
                for e in events:
                    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                        per_op[e["args"]["op_name"]] += e["dur"]
                        calls[e["args"]["op_name"]] += 1
                runs = 6
                total = sum(per_op.values()) / runs / 1e3
                print(f"\n{label} graph, batch 8: {total:.1f} ms of operator time per run")
                for op, us in per_op.most_common(10):
                    print(f"  {op:<28}{us / runs / 1e3:>8.2f} ms  x{calls[op] // runs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
