"""``ssdkit predict``: detect objects in images, folders, globs and videos; annotated copies + JSON/CSV."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

EPILOG = """examples:
  ssdkit predict runs/bccd/best.pt images/ --out preds/                  # annotated copies in preds/
  ssdkit predict runs/bccd/best.pt "data/**/*.jpg" --conf 0.5 --save-json --save-csv
  ssdkit predict runs/bccd/best.pt img.png --backend onnxruntime         # exports to ONNX in memory
  ssdkit predict runs/bccd/best.pt img.png --backend onnxruntime --onnx runs/bccd/best_nms.onnx
  ssdkit predict runs/faces/best.pt clip.mp4 --out preds/                # clip.mp4 + clip.jsonl (+ clip.summary.json)

outputs in --out (default ./predictions): an annotated copy of each image (same file name; a
numbered suffix when two sources share a name), predictions.json / predictions.csv with
--save-json / --save-csv (images; boxes in original pixels), and for each video an annotated
<stem>.mp4, <stem>.jsonl (one line per frame) and, for a real/fake face model, <stem>.summary.json.
Unreadable files inside a folder or glob are skipped with a warning each and counted; a file named
on the command line that cannot be read is an error (exit 2).
"""


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "predict",
        help="detect objects in images, folders, globs or videos",
        description="Run a checkpoint on images, folders, globs and videos. Boxes are reported in the "
                    "original image pixels.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="ssdkit checkpoint (.pt) or an ssdkit .onnx export")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="image, folder, glob (quote it) or video")
    p.add_argument("--out", default="predictions", help="output folder (default: ./predictions)")
    p.add_argument("--conf", type=float, default=0.3,
                   help="confidence threshold (default 0.3 for display; `ssdkit evaluate` uses 0.01)")
    p.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold (default 0.45)")
    p.add_argument("--top-k", type=int, default=200, help="at most this many detections per image (default 200)")
    p.add_argument("--classes", help="comma-separated class names or ids to report (default: all)")
    p.add_argument("--batch-size", type=int, default=8, help="images or video frames per batch (default 8)")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch", help="inference engine")
    p.add_argument("--onnx", metavar="PATH", help="with --backend onnxruntime: run this export (raw or --nms)")
    p.add_argument("--device", default="cpu", help="torch backend device: cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--threads", type=int, help="onnxruntime threads (default: the CPUs available)")
    p.add_argument("--keep-aspect", action="store_true", help="pad to the network's aspect before resizing")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders of folder sources")
    p.add_argument("--save-json", action="store_true", help="write predictions.json (all images)")
    p.add_argument("--save-csv", action="store_true", help="write predictions.csv (one row per detection)")
    p.add_argument("--no-images", action="store_true", help="do not write annotated images")
    p.add_argument("--no-video", action="store_true", help="do not write annotated videos (JSON-lines only)")
    p.add_argument("--summary", choices=["auto", "faces", "none"], default="auto",
                   help="per-video summary: auto (real/fake face models), faces (force), none")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def _warn_line(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    print(f"ssdkit predict: warning: {message}", file=sys.stderr)


def _unique_name(out: Path, name: str, used: set[str]) -> Path:
    stem, suffix = os.path.splitext(name)
    cand, k = name, 1
    while cand in used:
        cand = f"{stem}_{k}{suffix}"
        k += 1
    used.add(cand)
    return out / cand


def run(args: argparse.Namespace) -> int:
    import warnings

    from ssdkit.deploy.predictor import Predictor
    from ssdkit.deploy.sources import expand_sources
    from ssdkit.errors import ConfigError

    if not 0.0 <= args.conf < 1.0:
        raise ConfigError(f"--conf must be in [0, 1), got {args.conf}")
    if not 0.0 <= args.iou <= 1.0:
        raise ConfigError(f"--iou must be in [0, 1], got {args.iou}")
    for name in ("batch_size", "top_k"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.onnx and args.backend != "onnxruntime":
        raise ConfigError("--onnx needs --backend onnxruntime")
    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    entries = expand_sources(args.sources, recursive=args.recursive)  # fail on bad sources before loading
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    pred = Predictor(str(ckpt), device=args.device, backend=args.backend, batch_size=args.batch_size,
                     confidence_thresh=args.conf, iou_threshold=args.iou, top_k=args.top_k, classes=classes,
                     keep_aspect=args.keep_aspect, onnx=args.onnx, threads=args.threads,
                     keep_images=not args.no_images)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = [e for e in entries if e.kind != "video"]
    videos = [e for e in entries if e.kind == "video"]
    old_show = warnings.showwarning
    warnings.showwarning = _warn_line
    try:
        n_img, n_det, records = _images(pred, images, out, args) if images else (0, 0, [])
        skipped = len(pred.stats.skipped)
        img_timings = pred.timings
        vids = [_video(pred, e, out, args) for e in videos]
    finally:
        warnings.showwarning = old_show
    _write_tables(records, out, args)
    _report(pred, n_img, n_det, skipped, img_timings, vids, out, args)
    return 0


def _images(pred: Any, entries: list[Any], out: Path,
            args: argparse.Namespace) -> tuple[int, int, list[dict[str, Any]]]:
    """Predict every image entry; annotated copies and the JSON records. Returns (images, detections, records)."""
    from ssdkit.errors import DataError

    used: set[str] = set()
    records: list[dict[str, Any]] = []
    n_img = n_det = 0
    bar = None
    if not args.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(entries), desc="images", unit="img", dynamic_ncols=True, leave=False)
    try:
        for det in pred.stream(entries):
            n_img += 1
            n_det += len(det)
            records.append(det.to_dict())
            if not args.no_images:
                name = Path(det.source).name if det.path else f"image_{n_img:05d}.png"
                dest = _unique_name(out, name, used)
                if dest.resolve() == Path(det.source).resolve():
                    raise DataError(f"{dest}: --out would overwrite the input image; choose another folder")
                det.plot(dest)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return n_img, n_det, records


def _video(pred: Any, entry: Any, out: Path, args: argparse.Namespace) -> Any:
    from ssdkit.deploy.video import process_video

    return process_video(pred, entry.value, out, write_video=not args.no_video, write_jsonl=True,
                         summary=None if args.summary == "none" else args.summary, progress=not args.quiet)


def _write_tables(records: list[dict[str, Any]], out: Path, args: argparse.Namespace) -> None:
    import csv
    import io

    from ssdkit.fileio import atomic_write_json, atomic_write_text

    if args.save_json:
        atomic_write_json(out / "predictions.json", records)
    if args.save_csv:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["source", "width", "height", "label", "class", "score", "xmin", "ymin", "xmax", "ymax"])
        for r in records:
            h, wd = r["image_size"]
            for d in r["detections"]:
                w.writerow([r["source"], wd, h, d["label"], d["class"], d["score"], *d["box"]])
        atomic_write_text(out / "predictions.csv", buf.getvalue())


def _report(pred: Any, n_img: int, n_det: int, skipped: int, t: dict[str, float], vids: list[Any], out: Path,
            args: argparse.Namespace) -> None:
    if n_img or skipped:
        print(f"{n_img} images, {n_det} detections (confidence > {args.conf:g})"
              + (f"; {skipped} unreadable files skipped" if skipped else ""))
        if n_img:
            print(f"time per image ({pred.backend}, batch {pred.batch_size}): preprocess {t['preprocess_ms']:.1f} ms, "
                  f"inference {t['inference_ms']:.1f} ms, postprocess {t['postprocess_ms']:.1f} ms "
                  f"({1000.0 / max(t['total_ms'], 1e-9):.1f} images/s)")
    for v in vids:
        fps = v.frames / v.seconds if v.seconds > 0 else 0.0
        print(f"{v.source}: {v.frames} frames, {v.detections} detections, {fps:.1f} frames/s"
              + (f" -> {v.video_path}" if v.video_path else "") + f", {v.jsonl_path}")
        if v.summary is not None:
            s = v.summary
            print(f"  faces in {s['frames_with_faces']}/{s['frames']} frames, flagged fake in "
                  f"{100 * s['fraction_flagged_fake']:.1f}% of them, mean confidence "
                  f"{s['mean_confidence'] if s['mean_confidence'] is not None else float('nan'):.3f}: "
                  f"{s['verdict']} -> {v.summary_path}")
    written = [n for n, on in (("annotated images", n_img and not args.no_images), ("predictions.json", args.save_json),
                               ("predictions.csv", args.save_csv)) if on]
    if written:
        print(f"wrote {', '.join(written)} to {out}")
