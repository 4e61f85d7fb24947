"""``ssdkit export``: ONNX (raw, decoded, or with NMS in the graph) / TorchScript, verified; int8."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

EPILOG = """examples:
  ssdkit export runs/bccd/best.pt                                   # runs/bccd/best.onnx (raw outputs)
  ssdkit export runs/bccd/best.pt --nms --dynamic-batch             # decoding + NMS in the graph
  ssdkit export runs/bccd/best.pt --format torchscript --nms
  ssdkit export runs/bccd/best.pt --int8 --calib data/bccd/JPEGImages --val configs/bccd.yaml
  ssdkit export runs/bccd/best.pt --nms --verify-images "photos/*.jpg" --report export.json

output contracts (input: images uint8 [B, 3, H, W] RGB 0..255):
  raw      cls_logits [B, N, C+1] float32, box_deltas [B, N, 4] float32
  decoded  scores [B, N, C+1] (softmax), boxes [B, N, 4] xyxy network pixels
  --nms    detections [B, top_k, 6] = [class_id, score, x0, y0, x1, y1] (network pixels, by score,
           zero rows after num_detections), num_detections [B] int64
Every export is run against PyTorch on sample images (same classes, boxes within 1e-3 relative,
scores within 1e-4) before it is written; a mismatch is an error and nothing is written.
"""


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX or TorchScript",
        description="Export a checkpoint to ONNX (raw outputs, decoded boxes, or decoding + NMS in the graph) or "
                    "TorchScript, verify it against PyTorch, and optionally quantise it to int8.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="ssdkit checkpoint (.pt)")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="default onnx")
    p.add_argument("--nms", action="store_true", help="decoding + per-class NMS in the graph (same as --outputs nms)")
    p.add_argument("--outputs", choices=["raw", "decoded", "nms"], help="graph outputs (default raw)")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: dynamic batch axis (TorchScript always is)")
    p.add_argument("--batch-size", type=int, default=1, help="fixed batch of a static ONNX graph (default 1)")
    p.add_argument("--out", help="output file (default: next to the checkpoint, e.g. best_nms.onnx)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript",
                   help="torch.onnx exporter of the network part (default: the TorchScript-based one)")
    p.add_argument("--conf", type=float, default=0.3, help="--nms: confidence threshold (default 0.3; 0.01 for mAP)")
    p.add_argument("--iou", type=float, default=0.45, help="--nms: NMS IoU threshold (default 0.45)")
    p.add_argument("--top-k", type=int, default=200, help="--nms: detections per image (default 200)")
    p.add_argument("--max-per-class", type=int, help="--nms: at most this many boxes per class after NMS")
    p.add_argument("--verify-images", metavar="SOURCE", help="images for the verification (default: synthetic)")
    p.add_argument("--n-verify", type=int, default=4, help="verification images (default 4)")
    p.add_argument("--no-verify", action="store_true", help="skip the verification (not recommended)")
    p.add_argument("--keep-aspect", action="store_true", help="the model's preprocessing pads to its aspect ratio")
    q = p.add_argument_group("int8 quantisation (ONNX)")
    q.add_argument("--int8", action="store_true", help="static int8 quantisation of the network (onnxruntime)")
    q.add_argument("--calib", metavar="DATA",
                   help="calibration images: folder, glob, or a YAML config (its train split)")
    q.add_argument("--n-calib", type=int, default=64, help="calibration images (default 64)")
    q.add_argument("--quant-format", choices=["qdq", "qoperator"], default="qdq", help="default qdq")
    q.add_argument("--per-channel", action="store_true", help="per-channel weight scales")
    q.add_argument("--calib-method", choices=["minmax", "entropy", "percentile"], default="minmax")
    q.add_argument("--val", metavar="CONFIG", help="YAML config whose data: section gives the validation set for "
                                                   "the mAP change")
    q.add_argument("--split", default="val", help="--val split (default val)")
    q.add_argument("--metric", choices=["voc07", "voc10", "coco"], default="voc07", help="--val metric")
    p.add_argument("--report", metavar="JSON", help="also write the export/verification/int8 report as JSON")
    p.set_defaults(func=run)
    return p


def _dataset(config: str, split: str, class_names: list[str]) -> Any:
    """An ssdkit dataset from a YAML config's ``data:`` section (classes forced to the model's)."""
    from ssdkit.data import build_dataset
    from ssdkit.engine.config import load_config, read_yaml
    from ssdkit.errors import ConfigError

    if not Path(config).is_file():
        raise FileNotFoundError(f"config file not found: {config}")
    doc = read_yaml(config)
    if "data" not in doc:
        raise ConfigError(f"{config}: no data: section")
    model_section = dict(doc.get("model") or {})
    model_section["name"] = model_section.get("name") or "ssd7"  # only data: is used; the loader wants a model name
    cfg = load_config({**doc, "model": model_section})
    data_cfg = dict(cfg["data"])
    data_cfg["classes"] = list(class_names)
    return build_dataset(data_cfg, split)


def _calib_source(calib: str, class_names: list[str]) -> Any:
    if calib.lower().endswith((".yaml", ".yml")):
        return _dataset(calib, "train", class_names)
    return calib


def run(args: argparse.Namespace) -> int:
    from ssdkit.checkpoint import load
    from ssdkit.deploy.export import export_model
    from ssdkit.errors import ConfigError

    outputs = args.outputs or ("nms" if args.nms else "raw")
    if args.nms and outputs != "nms":
        raise ConfigError(f"--nms contradicts --outputs {outputs}")
    if args.int8:
        if args.format != "onnx":
            raise ConfigError("--int8 needs --format onnx")
        if not args.calib:
            raise ConfigError("--int8 needs calibration images: --calib FOLDER|GLOB|CONFIG.yaml")
    elif args.calib or args.val:
        raise ConfigError("--calib and --val are for --int8")
    for name in ("batch_size", "top_k", "n_verify", "n_calib"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    model = load(args.checkpoint)
    nms_kw = dict(confidence_thresh=args.conf, iou_threshold=args.iou, top_k=args.top_k,
                  nms_max_output_size=args.max_per_class)
    report: dict[str, Any] = {"checkpoint": os.fspath(args.checkpoint)}
    if args.int8:
        from ssdkit.deploy.export import default_export_path
        from ssdkit.deploy.quantize import quantize_export

        calib = _calib_source(args.calib, model.class_names)
        val = _dataset(args.val, args.split, model.class_names) if args.val else None
        dest = Path(args.out) if args.out else default_export_path(args.checkpoint, "onnx", outputs, int8=True)
        result, qrep = quantize_export(
            model, dest, calib, n_calib=args.n_calib, outputs=outputs, dynamic_batch=args.dynamic_batch,
            batch_size=args.batch_size, opset=args.opset, quant_format=args.quant_format, per_channel=args.per_channel,
            calibrate_method=args.calib_method, val_dataset=val, metric=args.metric, keep_aspect=args.keep_aspect,
            log=print, **nms_kw,
        )
        print(result.summary())
        print(qrep.summary())
        report["int8"] = qrep.to_dict()
    else:
        result = export_model(
            model, args.out or _default(args, outputs), args.format, outputs=outputs, dynamic_batch=args.dynamic_batch,
            batch_size=args.batch_size, opset=args.opset, exporter=args.exporter, verify=not args.no_verify,
            sample_images=args.verify_images, n_samples=args.n_verify, keep_aspect=args.keep_aspect, **nms_kw,
        )
        print(result.summary())
    report["export"] = {"path": str(result.path), "format": result.format, "outputs": result.outputs,
                        "batch": result.batch, "opset": result.opset, "size_bytes": result.size_bytes,
                        "inputs": result.inputs, "outputs_spec": result.output_specs,
                        "verify": result.verify.to_dict() if result.verify else None}
    if args.report:
        from ssdkit.fileio import atomic_write_json

        atomic_write_json(args.report, report)
    return 0


def _default(args: argparse.Namespace, outputs: str) -> Path:
    from ssdkit.deploy.export import default_export_path

    return default_export_path(args.checkpoint, args.format, outputs)
