"""int8 static quantisation of the network part of an ONNX export, with onnxruntime.

Pipeline (:func:`quantize_export`):

1. export the network (``images -> cls_logits, box_deltas``) to fp32 ONNX;
2. ``onnxruntime.quantization.quant_pre_process`` (shape inference + graph optimisation, as the
   onnxruntime docs recommend before quantising);
3. ``quantize_static`` calibrated on ``n_calib`` images from ``calib`` (a folder, glob, list of
   paths or arrays, or a data config's split), preprocessed exactly as for inference;
   activations uint8 (asymmetric), weights int8 (symmetric), MinMax calibration;
4. the post-processing (``decoded`` / ``nms``) graph is merged behind the int8 network, unchanged
   and in float32, so decoding and NMS keep their exact semantics;
5. report: file size, speed of the fp32 and int8 networks (interleaved runs, medians), agreement of
   their detections, and — with a validation dataset — the mAP of both.

Defaults, chosen by measurement (``docs/deploy.md``, 2 AMD EPYC cores with AVX2 and no VNNI):
QDQ format (onnxruntime fuses ``DequantizeLinear -> Conv -> QuantizeLinear`` into ``QLinearConv``;
QOperator was not faster here and lost more accuracy) and per-tensor weight scales
(per-channel was slower on this CPU without a measurable accuracy gain on the trained BCCD model).
Both are options.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ExportError

__all__ = ["QuantReport", "quantize_network", "quantize_export", "calibration_images", "compare_speed",
           "detection_agreement", "evaluate_onnx"]

QUANT_FORMATS = ("qdq", "qoperator")
CALIB_METHODS = ("minmax", "entropy", "percentile")


@dataclass
class QuantReport:
    """What int8 quantisation changed.

    ``*_ms`` are median milliseconds per image of the network graph alone at batch 1 and batch 8
    (onnxruntime, ssdkit's session settings, interleaved fp32/int8 runs so load from other
    processes hits both alike). ``agreement``: int8 detections vs fp32 at the deployed confidence
    (:func:`detection_agreement`). ``map_*``: VOC mAP on the validation set when one was given.
    """

    quant_format: str
    per_channel: bool
    calibrate_method: str
    n_calib: int
    fp32_bytes: int
    int8_bytes: int
    fp32_ms: dict[str, float] = field(default_factory=dict)
    int8_ms: dict[str, float] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)
    metric: str | None = None
    map_fp32: float | None = None
    map_int8: float | None = None
    val_images: int = 0
    seconds: float = 0.0

    @property
    def speedup(self) -> dict[str, float]:
        return {k: self.fp32_ms[k] / self.int8_ms[k] for k in self.fp32_ms if self.int8_ms.get(k)}

    @property
    def map_change(self) -> float | None:
        if self.map_fp32 is None or self.map_int8 is None:
            return None
        return self.map_int8 - self.map_fp32

    def summary(self) -> str:
        lines = [
            f"int8 ({self.quant_format}, {'per-channel' if self.per_channel else 'per-tensor'} weights, "
            f"{self.calibrate_method} calibration on {self.n_calib} images):",
            f"  size: {self.fp32_bytes / 1e6:.1f} MB fp32 -> {self.int8_bytes / 1e6:.1f} MB int8 "
            f"({self.fp32_bytes / max(1, self.int8_bytes):.2f}x smaller)",
        ]
        for k in self.fp32_ms:
            q = self.int8_ms.get(k, float("nan"))
            lines.append(f"  network {k}: {self.fp32_ms[k]:.1f} ms/image fp32 -> {q:.1f} ms/image int8 "
                         f"({self.speedup.get(k, float('nan')):.2f}x)")
        if self.agreement:
            a = self.agreement
            lines.append(f"  detections vs fp32 (score > {a['confidence']:g}, same class, IoU >= 0.5): "
                         f"recall {a['recall']:.3f}, precision {a['precision']:.3f} over {int(a['fp32'])} fp32 "
                         f"detections on {int(a['images'])} images")
        if self.map_change is not None:
            lines.append(f"  {self.metric} mAP on {self.val_images} validation images: fp32 {self.map_fp32:.4f} -> "
                         f"int8 {self.map_int8:.4f} ({100 * self.map_change:+.2f} points)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": self.speedup, "map_change": self.map_change}


# ------------------------------------------------------------------------------------ calibration
def calibration_images(model: nn.Module, calib: Any, n: int, keep_aspect: bool = False) -> np.ndarray:
    """Up to ``n`` preprocessed images ``uint8 [n, 3, H, W]`` spread evenly over ``calib``.

    ``calib``: any Predictor source (folder, glob, paths, arrays) or a dataset (``dataset[i] ->
    (image Tensor[3, H, W], target)``). Unreadable files are skipped (folder policy).
    """
    from .preprocess import Preprocessor
    from .sources import Frame, SourceStats, expand_sources, iter_entries

    if n < 1:
        raise ExportError(f"the number of calibration images must be >= 1, got {n}")
    size = tuple(model.image_size)
    frames: list[Frame] = []
    if hasattr(calib, "__getitem__") and hasattr(calib, "__len__") and hasattr(calib, "classes"):
        idx = np.unique(np.linspace(0, len(calib) - 1, min(n, len(calib))).round().astype(int))
        for i in idx:
            img = calib[int(i)][0]
            arr = img.permute(1, 2, 0).numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
            frames.append(Frame(np.ascontiguousarray(arr), (arr.shape[0], arr.shape[1]), f"<dataset {i}>"))
    else:
        entries = expand_sources(calib)
        picks = np.unique(np.linspace(0, len(entries) - 1, min(n, len(entries))).round().astype(int))
        chosen = [entries[i] for i in picks]
        for fr in iter_entries(chosen, size, SourceStats()):
            frames.append(fr)
            if len(frames) >= n:
                break
    if not frames:
        raise ExportError("no calibration images could be read")
    return Preprocessor(size, keep_aspect)(frames).images  # type: ignore[arg-type]


def _reader(images: np.ndarray, batch: int) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class _Images(CalibrationDataReader):  # type: ignore[misc]
        """Feeds the calibration images to onnxruntime's calibrator in batches."""

        def __init__(self) -> None:
            self._it = iter([{"images": images[i:i + batch]} for i in range(0, len(images), batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    return _Images()


def quantize_network(fp32: bytes, images: np.ndarray, quant_format: str = "qdq", per_channel: bool = False,
                     calibrate_method: str = "minmax", batch: int = 8) -> bytes:
    """int8 static quantisation of a network graph (``images -> cls_logits, box_deltas``, fp32 bytes);
    returns the serialized int8 graph (outputs stay float32)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if quant_format not in QUANT_FORMATS:
        raise ExportError(f"quant_format must be one of {list(QUANT_FORMATS)}, got {quant_format!r}")
    if calibrate_method not in CALIB_METHODS:
        raise ExportError(f"calibrate_method must be one of {list(CALIB_METHODS)}, got {calibrate_method!r}")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory(prefix="ssdkit-quant-") as tmp:
        src, pre, out = (os.path.join(tmp, n) for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        Path(src).write_bytes(fp32)
        try:
            quant_pre_process(src, pre, skip_symbolic_shape=False)
        except Exception:  # symbolic shape inference fails on some graphs; the plain graph quantises too
            pre = src
        try:
            quantize_static(
                pre, out, _reader(images, batch),
                quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
                per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=methods[calibrate_method],
            )
        except Exception as exc:
            raise ExportError(f"int8 quantisation failed: {str(exc).splitlines()[0][:300]}") from None
        return Path(out).read_bytes()


# ------------------------------------------------------------------------------------ measurements
def compare_speed(graphs: dict[str, bytes], images: np.ndarray, batch_sizes: Sequence[int] = (1, 8),
                  rounds: int = 5) -> dict[str, dict[str, float]]:
    """Median ms per image of each graph at each batch size, runs interleaved across graphs.

    Interleaving (A, B, A, B...) makes a load spike from another process hit every contender
    alike, which matters on shared machines; medians drop the spikes.
    """
    from .ort import OrtRunner

    runners = {k: OrtRunner(v) for k, v in graphs.items()}
    out: dict[str, dict[str, float]] = {k: {} for k in graphs}
    for b in batch_sizes:
        x = np.ascontiguousarray(np.resize(images, (b, *images.shape[1:])))
        for r in runners.values():  # warm-up: memory arena, kernel selection
            r(x)
        times: dict[str, list[float]] = {k: [] for k in graphs}
        for _ in range(rounds):
            for k, r in runners.items():
                t0 = time.perf_counter()
                r(x)
                times[k].append((time.perf_counter() - t0) * 1e3 / b)
        for k in graphs:
            out[k][f"batch {b}"] = float(np.median(times[k]))
    return out


def detection_agreement(model: nn.Module, ref: Callable[[np.ndarray], Sequence[np.ndarray]],
                        test: Callable[[np.ndarray], Sequence[np.ndarray]], images: np.ndarray,
                        confidence: float = 0.3, batch: int = 8) -> dict[str, float]:
    """How well ``test``'s detections reproduce ``ref``'s (both raw-output runners): a detection is
    recovered by one of the same class with IoU >= 0.5. Returns recall, precision, counts."""
    from torchvision.ops import box_iou

    from ..postprocess import decode_detections

    n_ref = n_test = hit_r = hit_t = 0
    for s in range(0, len(images), batch):
        x = images[s:s + batch]
        dets = []
        for run in (ref, test):
            c, b = run(x)
            dets.append(decode_detections(torch.from_numpy(np.asarray(c)), torch.from_numpy(np.asarray(b)),
                                          model.anchors, model.image_size, confidence, 0.45, 200,
                                          variances=model.variances,
                                          normalize_coords=model.anchor_generator.normalize_coords))
        for r, t in zip(*dets):
            n_ref += len(r)
            n_test += len(t)
            if len(r) and len(t):
                same = (r[:, None, 0] == t[None, :, 0]) & (box_iou(r[:, 2:], t[:, 2:]) >= 0.5)
                hit_r += int(same.any(1).sum())
                hit_t += int(same.any(0).sum())
    return {"confidence": confidence, "images": float(len(images)), "fp32": float(n_ref), "int8": float(n_test),
            "recall": hit_r / n_ref if n_ref else 1.0, "precision": hit_t / n_test if n_test else 1.0}


def evaluate_onnx(model: nn.Module, graph: bytes, dataset: Any, metric: str = "voc07", batch_size: int = 8,
                  keep_aspect: bool = False) -> Any:
    """:func:`ssdkit.engine.evaluator.evaluate` with the network forward run by onnxruntime on a raw
    (``cls_logits, box_deltas``) graph; everything else (preprocessing, decoding at confidence 0.01,
    mapping to original pixels, the metric) is the evaluator's own."""
    from ..engine.evaluator import evaluate
    from .ort import OrtRunner

    runner = OrtRunner(graph)

    def forward(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, b = runner(images.cpu().numpy())
        return torch.from_numpy(c), torch.from_numpy(b)

    return evaluate(model, dataset, metric, batch_size=batch_size, keep_aspect=keep_aspect, forward=forward)


# ------------------------------------------------------------------------------------ pipeline
def quantize_export(
    model: Any,
    path: str | os.PathLike[str] | None,
    calib: Any,
    *,
    n_calib: int = 64,
    outputs: str = "raw",
    dynamic_batch: bool = True,
    batch_size: int = 1,
    opset: int = 17,
    quant_format: str = "qdq",
    per_channel: bool = False,
    calibrate_method: str = "minmax",
    val_dataset: Any = None,
    metric: str = "voc07",
    keep_aspect: bool = False,
    measure_speed: bool = True,
    log: Callable[[str], None] | None = None,
    **nms_kw: Any,
) -> tuple[Any, QuantReport]:
    """Quantise a model's ONNX export to int8 and write it (see the module docstring).

    Args:
        model: an :class:`~ssdkit.models.SSD` or a checkpoint path.
        path: the int8 file (default ``<checkpoint stem>[_nms].int8.onnx``).
        calib: calibration images (folder, glob, paths, arrays, or a dataset).
        n_calib: calibration images used (spread evenly over ``calib``).
        outputs: ``'raw'`` | ``'decoded'`` | ``'nms'`` (post-processing stays float32).
        dynamic_batch, batch_size, opset: as :func:`~ssdkit.deploy.export.export_model`.
        quant_format, per_channel, calibrate_method: quantisation settings.
        val_dataset: an ssdkit dataset to measure the mAP change on (optional).
        metric: ``'voc07'`` | ``'voc10'`` | ``'coco'`` for ``val_dataset``.
        measure_speed: time fp32 vs int8 networks.
        log: progress messages (e.g. ``print``).
        **nms_kw: ``confidence_thresh``, ``iou_threshold``, ``top_k``, ``nms_max_output_size``.

    Returns:
        ``(ExportResult, QuantReport)``. The written graph is checked to run and, for post-processed
        outputs, its decoding/NMS is verified against ssdkit's decoder on the int8 network outputs.
    """
    import onnx

    from .export import _onnx_module_bytes, default_export_path, export_model, load_model, make_runner, verify_export
    from .graph import OUTPUT_NAMES

    say = log or (lambda s: None)
    t0 = time.perf_counter()
    net = load_model(model)
    dest = Path(path) if path is not None else default_export_path(model, "onnx", outputs, int8=True)
    h, w = net.image_size
    b = 1 if dynamic_batch else int(batch_size)
    with torch.no_grad():
        fp32_proto = _onnx_module_bytes(net, (torch.zeros((b, 3, h, w), dtype=torch.uint8),), ["images"],
                                        OUTPUT_NAMES["raw"], dynamic_batch, opset, "torchscript")
    fp32 = fp32_proto.SerializeToString()
    say(f"calibrating on up to {n_calib} images...")
    images = calibration_images(net, calib, n_calib, keep_aspect)
    # a static graph only takes batches of its own size; calibration statistics do not depend on the batch
    int8 = quantize_network(fp32, images, quant_format, per_channel, calibrate_method, batch=8 if dynamic_batch else b)
    rep = QuantReport(quant_format, per_channel, calibrate_method, int(images.shape[0]), len(fp32), len(int8))
    # the int8 network is checked against itself through the post-processing (the quantisation error
    # is reported below, not verified against tolerances)
    result = export_model(net, dest, "onnx", outputs=outputs, dynamic_batch=dynamic_batch, batch_size=batch_size,
                          opset=opset, verify=False, net_proto=onnx.load_from_string(int8),
                          extra_metadata={"quantization": {"type": "int8-static", "format": quant_format,
                                                           "per_channel": per_channel, "calibration": calibrate_method,
                                                           "n_calib": int(images.shape[0])}}, **nms_kw)
    int8_run = make_runner("onnx", int8)
    if outputs != "raw":
        # same post-processing on the int8 network: compare the merged graph with ssdkit's decoder fed by
        # the int8 network, through a stand-in "model" whose forward is the int8 network
        proxy = _RunnerModel(net, int8_run)
        data = Path(dest).read_bytes()
        nms = result.metadata.get("nms")
        sizes = [1, min(4, len(images))] if dynamic_batch else [b]
        vr = verify_export(proxy, make_runner("onnx", data), outputs, images[: max(sizes)], sizes, nms,
                           "onnxruntime (int8)")
        if not vr.ok:
            raise ExportError("the int8 graph's post-processing differs from ssdkit's decoder: "
                              + "; ".join(vr.problems[:3]))
        result.verify = vr
    fp32_run = make_runner("onnx", fp32)
    rep.agreement = detection_agreement(net, fp32_run, int8_run, images)
    if measure_speed:
        say("timing fp32 vs int8...")
        speed = compare_speed({"fp32": fp32, "int8": int8}, images)
        rep.fp32_ms, rep.int8_ms = speed["fp32"], speed["int8"]
    if val_dataset is not None:
        say(f"evaluating fp32 and int8 on {len(val_dataset)} validation images...")
        e32 = evaluate_onnx(net, fp32, val_dataset, metric, keep_aspect=keep_aspect)
        e8 = evaluate_onnx(net, int8, val_dataset, metric, keep_aspect=keep_aspect)
        rep.metric, rep.map_fp32, rep.map_int8, rep.val_images = metric, float(e32.map), float(e8.map), int(e8.n_images)
    rep.seconds = time.perf_counter() - t0
    return result, rep


class _RunnerModel(nn.Module):
    """An SSD stand-in whose forward is an ONNX runner (for verifying post-processing on int8 outputs)."""

    def __init__(self, model: nn.Module, run: Callable[[np.ndarray], Sequence[np.ndarray]]) -> None:
        super().__init__()
        self._run = run
        self.register_buffer("anchors", model.anchors, persistent=False)
        for k in ("image_size", "variances", "anchor_generator", "n_classes", "class_names", "config"):
            setattr(self, k, getattr(model, k))

    @property
    def num_anchors(self) -> int:
        return int(self.anchors.shape[0])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, b = self._run(images.cpu().numpy())
        return torch.from_numpy(np.asarray(c)), torch.from_numpy(np.asarray(b))
