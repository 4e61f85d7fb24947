"""Export a model to ONNX or TorchScript, verified against PyTorch before the file is written.

``export_model(model_or_checkpoint, path, format='onnx'|'torchscript', outputs='raw'|'decoded'|'nms', ...)``

Output contracts (input always ``images``: uint8 ``[B, 3, H, W]``, RGB, ``0..255``, at the model's
input size; normalisation is inside the graph):

=========== ============================================================================================
``raw``     ``cls_logits`` float32 ``[B, N, C+1]`` (background at 0), ``box_deltas`` float32 ``[B, N, 4]``
``decoded`` ``scores`` float32 ``[B, N, C+1]`` (softmax), ``boxes`` float32 ``[B, N, 4]`` xyxy network pixels
``nms``     ``detections`` float32 ``[B, K, 6]`` rows ``[class_id, score, x0, y0, x1, y1]`` (network pixels,
            by descending score, zero rows after ``num_detections``), ``num_detections`` int64 ``[B]``;
            ``K = min(top_k, C * N)``; per-class NMS (see :mod:`ssdkit.deploy.graph`)
=========== ============================================================================================

How ONNX graphs are built: the network is exported with the TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``; 6x faster than the dynamo exporter here and the only one
that takes the custom ``NonMaxSuppression`` symbolic) or, with ``exporter='dynamo'``, the
``torch.export`` exporter; the post-processing (decoding, NMS) is exported as a second graph on
``(cls_logits, box_deltas)`` and merged behind it (:func:`onnx.compose.merge_models`). Keeping the
two parts separate lets int8 quantisation touch only the network (:mod:`ssdkit.deploy.quantize`).

Verification (every export): the exported model is run (onnxruntime, or ``torch.jit.load``) on
sample images at each batch size it must support (1 and ``n`` for a dynamic batch, else the fixed
batch) and compared with the PyTorch model decoded by :func:`ssdkit.postprocess.decode_detections`:
same classes, boxes within ``1e-3`` relative (``max|a - b| / max(1, max|b|)`` per box), scores
within ``1e-4``. A detection present on one side only is tolerated only when its score is within
``1e-4`` of the confidence threshold or of the top-k cut-off (float32 vs float64 rounding can put it
on either side); anything else raises :class:`~ssdkit.errors.ExportError` naming the image and the
detection, and no file is written.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ExportError
from .graph import OUTPUT_NAMES, DecodeBoxes, OnnxNMS, ScriptNMS, WithPostprocess

__all__ = [
    "DEFAULT_CONFIDENCE",
    "BOX_RTOL",
    "SCORE_ATOL",
    "ExportResult",
    "VerifyReport",
    "export_model",
    "export_onnx_bytes",
    "export_torchscript_bytes",
    "verify_export",
    "compare_detections",
    "load_model",
    "sample_batch",
    "export_metadata",
]

#: default confidence of deployed predictions (Predictor, ``--nms`` graphs); evaluation uses 0.01
DEFAULT_CONFIDENCE = 0.3
BOX_RTOL = 1e-3
SCORE_ATOL = 1e-4
#: confidence used to compare raw / decoded exports (the evaluation setting: the most detections)
VERIFY_RAW_CONFIDENCE = 0.01
FORMATS = ("onnx", "torchscript")
EXPORTERS = ("torchscript", "dynamo")


# ------------------------------------------------------------------------------------ reports
@dataclass
class VerifyReport:
    """Result of running an export against PyTorch (see the module docstring).

    ``n_reference``/``n_exported``/``n_matched`` count detections over all images and batch sizes
    (for ``decoded`` exports they count anchors); ``n_borderline`` one-sided detections tolerated
    at the confidence or top-k cut-off; ``raw_max_abs`` the largest absolute output difference per
    output tensor; ``torch_ms``/``exported_ms`` the time of one pass over the ``n_images`` (PyTorch
    at once, the export at its largest verified batch size): indicative only, not a benchmark.
    """

    engine: str
    outputs: str
    n_images: int
    batch_sizes: list[int]
    confidence_thresh: float
    n_reference: int = 0
    n_exported: int = 0
    n_matched: int = 0
    n_borderline: int = 0
    max_box_rel_err: float = 0.0
    max_score_err: float = 0.0
    raw_max_abs: dict[str, float] = field(default_factory=dict)
    torch_ms: float = 0.0
    exported_ms: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """A few human-readable lines (printed by ``ssdkit export``)."""
        bs = " and ".join(str(b) for b in self.batch_sizes)
        lines = [f"verification: {self.engine} vs PyTorch on {self.n_images} sample images, batch {bs}, "
                 f"confidence > {self.confidence_thresh:g}"]
        if self.raw_max_abs:
            lines.append("  max |difference|: " + ", ".join(f"{k} {v:.2e}" for k, v in self.raw_max_abs.items()))
        what = "anchors" if self.outputs == "decoded" else "detections"
        lines.append(
            f"  {what}: {self.n_reference} PyTorch, {self.n_exported} exported, {self.n_matched} matched, "
            f"{self.n_borderline} borderline; max box error {self.max_box_rel_err:.1e} relative (tolerance "
            f"{BOX_RTOL:g}), max score error {self.max_score_err:.1e} (tolerance {SCORE_ATOL:g})"
        )
        lines.append(f"  time for the {self.n_images} images (one run each, not a benchmark): PyTorch "
                     f"{self.torch_ms:.0f} ms, {self.engine} {self.exported_ms:.0f} ms")
        lines.append("  result: OK" if self.ok else "  result: FAILED: " + "; ".join(self.problems[:5]))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class ExportResult:
    """What :func:`export_model` wrote."""

    path: Path
    format: str
    outputs: str
    batch: int | str
    opset: int | None
    size_bytes: int
    inputs: list[tuple[str, str, list[Any]]]
    output_specs: list[tuple[str, str, list[Any]]]
    verify: VerifyReport | None
    metadata: dict[str, Any]

    def summary(self) -> str:
        kind = f"ONNX opset {self.opset}" if self.format == "onnx" else "TorchScript"
        lines = [f"exported {self.path} ({kind}, outputs: {self.outputs}, batch: {self.batch}, "
                 f"{self.size_bytes / 1e6:.1f} MB)"]
        for role, specs in (("input ", self.inputs), ("output", self.output_specs)):
            for name, dtype, shape in specs:
                lines.append(f"  {role} {name:<15} {dtype:<8} [{', '.join(str(s) for s in shape)}]")
        if self.verify is not None:
            lines.append(self.verify.summary())
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ helpers
def load_model(model_or_checkpoint: Any, device: str | torch.device = "cpu") -> nn.Module:
    """An :class:`~ssdkit.models.SSD` in eval mode from a model or a checkpoint path."""
    if isinstance(model_or_checkpoint, nn.Module):
        return model_or_checkpoint.eval()
    if isinstance(model_or_checkpoint, str | os.PathLike):
        from ..checkpoint import load

        return load(model_or_checkpoint, device=device)
    raise TypeError(f"expected an SSD model or a checkpoint path, got {type(model_or_checkpoint).__name__}")


def export_metadata(model: nn.Module, outputs: str, batch: int | str, nms: dict[str, Any] | None) -> dict[str, Any]:
    """The description stored in every export (ONNX ``metadata_props['ssdkit']``, TorchScript
    extra file ``ssdkit.json``); enough to run the file without the checkpoint."""
    from .. import __version__

    return {
        "format": "ssdkit-export",
        "version": 1,
        "ssdkit": __version__,
        "outputs": outputs,
        "output_names": list(OUTPUT_NAMES[outputs]),
        "input": {"name": "images", "dtype": "uint8", "layout": "NCHW", "channels": "RGB", "range": [0, 255]},
        "batch": batch,
        "image_size": list(model.image_size),
        "class_names": list(model.class_names),
        "variances": list(model.variances),
        "model": json.loads(json.dumps(dict(model.config), default=str)),
        "nms": nms,
    }


def sample_batch(model: nn.Module, images: Any = None, n: int = 4, keep_aspect: bool = False) -> np.ndarray:
    """``n`` preprocessed images ``uint8 [n, 3, H, W]`` at the model size: from ``images`` (any
    Predictor source; cycled when fewer) or, by default, :func:`~ssdkit.deploy.synthetic.synthetic_images`."""
    from .preprocess import Preprocessor
    from .sources import SourceStats, expand_sources, iter_entries

    size = tuple(model.image_size)
    frames = []
    if images is None:
        from .sources import Frame
        from .synthetic import synthetic_images

        for img in synthetic_images(n, (max(32, size[0] * 3 // 4), max(32, size[1])), seed=0):
            frames.append(Frame(img, (img.shape[0], img.shape[1]), "<synthetic>"))
    else:
        for fr in iter_entries(expand_sources(images), size, SourceStats()):
            frames.append(fr)
            if len(frames) >= n:
                break
        if not frames:
            raise ExportError("no sample images could be read for verification")
        frames = [frames[i % len(frames)] for i in range(n)]
    return Preprocessor(size, keep_aspect)(frames).images  # type: ignore[arg-type]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' deprecation and tracer warnings (the verification checks the result)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _onnx_module_bytes(module: nn.Module, args: tuple[torch.Tensor, ...], input_names: Sequence[str],
                       output_names: Sequence[str], dynamic_batch: bool, opset: int, exporter: str) -> Any:
    """Export one module to an ``onnx.ModelProto`` (batch axis 0 of every input/output dynamic if asked)."""
    buf = io.BytesIO()
    try:
        with _quiet():
            return _export_one(module, args, buf, input_names, output_names, dynamic_batch, opset, exporter)
    except ExportError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0][:400] if str(exc) else type(exc).__name__
        raise ExportError(f"ONNX export ({exporter} exporter, opset {opset}) failed: {first}") from None


def _export_one(module: nn.Module, args: tuple[torch.Tensor, ...], buf: io.BytesIO, input_names: Sequence[str],
                output_names: Sequence[str], dynamic_batch: bool, opset: int, exporter: str) -> Any:
    import onnx

    if exporter == "dynamo":
        dyn = None
        if dynamic_batch:
            batch = torch.export.Dim("batch", min=1, max=4096)
            dyn = tuple({0: batch} for _ in args)
        prog = torch.onnx.export(module, args, dynamo=True, input_names=list(input_names),
                                 output_names=list(output_names), opset_version=max(opset, 18),
                                 dynamic_shapes=dyn, verbose=False)
        return prog.model_proto
    axes = {n: {0: "batch"} for n in [*input_names, *output_names]} if dynamic_batch else None
    torch.onnx.export(module, args, buf, dynamo=False, opset_version=opset, input_names=list(input_names),
                      output_names=list(output_names), dynamic_axes=axes, do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def _post_module(model: nn.Module, outputs: str, fmt: str, nms: dict[str, Any] | None) -> nn.Module | None:
    if outputs == "raw":
        return None
    if outputs == "decoded":
        return DecodeBoxes(model)
    assert nms is not None
    cls = OnnxNMS if fmt == "onnx" else ScriptNMS
    return cls(model, nms["confidence_thresh"], nms["iou_threshold"], nms["top_k"], nms["nms_max_output_size"])


def merge_postprocess(net: Any, post: Any) -> Any:
    """Chain an ONNX network graph (``images -> cls_logits, box_deltas``) and a post-processing graph
    (``cls_logits, box_deltas -> ...``) into one model; the post graph's internal names get a
    ``post/`` prefix so the two exporters' generated names cannot collide."""
    import onnx
    from onnx import compose

    post = compose.add_prefix(post, "post/", rename_inputs=False, rename_outputs=False)
    if net.ir_version != post.ir_version:
        post.ir_version = net.ir_version = min(net.ir_version, post.ir_version)
    opset = max(o.version for o in net.opset_import if o.domain in ("", "ai.onnx"))
    post_opset = max(o.version for o in post.opset_import if o.domain in ("", "ai.onnx"))
    if post_opset != opset:
        post = onnx.version_converter.convert_version(post, opset)
    try:
        return compose.merge_models(net, post, io_map=[("cls_logits", "cls_logits"), ("box_deltas", "box_deltas")])
    except Exception as exc:
        raise ExportError(f"cannot merge the post-processing graph into the network graph: {exc}") from None


def set_metadata(proto: Any, meta: dict[str, Any]) -> Any:
    """Store ``meta`` as JSON in ``metadata_props['ssdkit']`` (replacing an older entry)."""
    kept = [p for p in proto.metadata_props if p.key != "ssdkit"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "ssdkit", json.dumps(meta)
    proto.producer_name = "ssdkit"
    proto.doc_string = f"ssdkit SSD export, outputs: {meta['outputs']} ({', '.join(meta['output_names'])})"
    return proto


def export_onnx_bytes(model: nn.Module, outputs: str = "raw", *, dynamic_batch: bool = False, batch_size: int = 1,
                      opset: int = 17, exporter: str = "torchscript", nms: dict[str, Any] | None = None,
                      net_proto: Any = None, extra_metadata: dict[str, Any] | None = None) -> bytes:
    """The serialized ONNX model (with metadata) for ``model``; see the module docstring.

    ``net_proto``: an already exported (e.g. quantised) network graph to put the post-processing
    behind, instead of exporting the network again.
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter must be one of {list(EXPORTERS)}, got {exporter!r}")
    h, w = model.image_size
    b = 1 if dynamic_batch else int(batch_size)
    example = torch.zeros((b, 3, h, w), dtype=torch.uint8)
    if net_proto is None:
        net_proto = _onnx_module_bytes(model, (example,), ["images"], OUTPUT_NAMES["raw"], dynamic_batch, opset,
                                       exporter)
    post = _post_module(model, outputs, "onnx", nms)
    proto = net_proto
    if post is not None:
        n, c1 = model.num_anchors, model.n_classes + 1
        # the post graph is traced on data from a real forward so the eager NMS reference finds boxes
        with torch.no_grad():
            cls_ex, box_ex = model(example)
        post_proto = _onnx_module_bytes(post.eval(), (cls_ex.reshape(b, n, c1), box_ex.reshape(b, n, 4)),
                                        OUTPUT_NAMES["raw"], OUTPUT_NAMES[outputs], dynamic_batch, opset, "torchscript")
        proto = merge_postprocess(net_proto, post_proto)
    meta = export_metadata(model, outputs, "dynamic" if dynamic_batch else b, nms)
    set_metadata(proto, {**meta, **(extra_metadata or {})})
    return proto.SerializeToString()


def export_torchscript_bytes(model: nn.Module, outputs: str = "raw", *, batch_size: int = 1,
                             nms: dict[str, Any] | None = None) -> bytes:
    """The serialized TorchScript module: the network traced, the post-processing scripted.

    Load with ``torch.jit.load(path)`` (after ``import torchvision`` for ``nms`` exports: the graph
    calls ``torchvision::nms``); the export description is the extra file ``ssdkit.json``.
    """
    h, w = model.image_size
    example = torch.zeros((max(1, batch_size), 3, h, w), dtype=torch.uint8)
    try:
        with _quiet():
            traced = torch.jit.trace(model.eval(), example, check_trace=False, strict=False)
            post = _post_module(model, outputs, "torchscript", nms)
            scripted = torch.jit.script(WithPostprocess(traced, post).eval())
            buf = io.BytesIO()
            meta = export_metadata(model, outputs, "dynamic", nms)
            torch.jit.save(scripted, buf, _extra_files={"ssdkit.json": json.dumps(meta)})
    except Exception as exc:
        raise ExportError(f"TorchScript export failed: {str(exc).splitlines()[0][:400]}") from None
    return buf.getvalue()


# ------------------------------------------------------------------------------------ verification
def compare_detections(ref: np.ndarray, got: np.ndarray, conf: float, top_k: int | None,
                       where: str = "") -> tuple[int, int, float, float, list[str]]:
    """Match two ``[K, 6]`` detection sets (same class, score within ``SCORE_ATOL``, box within ``BOX_RTOL``).

    Returns ``(matched, borderline, max_box_rel_err, max_score_err, problems)``: one-sided detections
    whose score is within ``SCORE_ATOL`` of ``conf`` or of the side's top-k cut-off are borderline.
    Vectorised: a ``[K_ref, K_got]`` compatibility matrix, then greedy assignment by box error.
    """
    ref = np.asarray(ref, dtype=np.float64).reshape(-1, 6)
    got = np.asarray(got, dtype=np.float64).reshape(-1, 6)
    problems: list[str] = []
    if len(ref) and len(got):
        scale = np.maximum(1.0, np.abs(ref[:, 2:]).max(1))
        box_err = np.abs(ref[:, None, 2:] - got[None, :, 2:]).max(-1) / scale[:, None]
        score_err = np.abs(ref[:, None, 1] - got[None, :, 1])
        ok = (ref[:, None, 0] == got[None, :, 0]) & (box_err <= BOX_RTOL) & (score_err <= SCORE_ATOL)
        cost = np.where(ok, box_err, np.inf)
        pairs: list[tuple[int, int]] = []
        used_r, used_g = np.zeros(len(ref), bool), np.zeros(len(got), bool)
        for flat in np.argsort(cost, axis=None, kind="stable"):
            i, j = divmod(int(flat), len(got))
            if not np.isfinite(cost[i, j]):
                break
            if not used_r[i] and not used_g[j]:
                used_r[i] = used_g[j] = True
                pairs.append((i, j))
    else:
        pairs, used_r, used_g = [], np.zeros(len(ref), bool), np.zeros(len(got), bool)
        box_err = score_err = np.zeros((len(ref), len(got)))
    max_box = max((float(box_err[i, j]) for i, j in pairs), default=0.0)
    max_score = max((float(score_err[i, j]) for i, j in pairs), default=0.0)

    def cutoff(d: np.ndarray) -> float:
        return float(d[:, 1].min()) if top_k is not None and len(d) >= top_k else -np.inf

    borderline = 0
    for side, dets, used, other in (("PyTorch", ref, used_r, got), ("the export", got, used_g, ref)):
        cut = max(cutoff(dets), cutoff(other))
        for i in np.nonzero(~used)[0]:
            s = dets[i, 1]
            if abs(s - conf) <= SCORE_ATOL or s <= cut + SCORE_ATOL:
                borderline += 1
                continue
            box = ", ".join(f"{v:.2f}" for v in dets[i, 2:])
            near = ""
            if len(other):
                oi = int(np.argmin(np.abs(other[:, 2:] - dets[i, 2:]).max(1)))
                near = (f" (nearest on the other side: class {int(other[oi, 0])}, score {other[oi, 1]:.5f}, "
                        f"box [{', '.join(f'{v:.2f}' for v in other[oi, 2:])}])")
            problems.append(f"{where}detection class {int(dets[i, 0])} score {s:.5f} box [{box}] is only in "
                            f"{side}'s output{near}")
    return len(pairs), borderline, max_box, max_score, problems


def verify_export(model: nn.Module, run: Callable[[np.ndarray], Sequence[np.ndarray]], outputs: str,
                  images: np.ndarray, batch_sizes: Sequence[int], nms: dict[str, Any] | None,
                  engine: str) -> VerifyReport:
    """Compare ``run`` (the exported model: uint8 ``[B, 3, H, W]`` -> its outputs as numpy) with
    PyTorch on ``images`` at every batch size in ``batch_sizes`` (see the module docstring)."""
    from ..postprocess import decode_detections

    is_nms = outputs == "nms" and nms is not None
    conf = nms["confidence_thresh"] if is_nms else VERIFY_RAW_CONFIDENCE
    iou = nms["iou_threshold"] if is_nms else 0.45
    top_k = nms["top_k"] if is_nms else 200
    cap = nms.get("nms_max_output_size") if is_nms else None

    def decode(cls_logits: torch.Tensor, box_deltas: torch.Tensor) -> list[torch.Tensor]:
        return decode_detections(cls_logits, box_deltas, model.anchors, model.image_size, conf, iou, top_k,
                                 variances=model.variances, nms_max_output_size=cap,
                                 normalize_coords=model.anchor_generator.normalize_coords)

    rep = VerifyReport(engine, outputs, int(images.shape[0]), [int(b) for b in batch_sizes], conf)
    x_all = torch.from_numpy(np.ascontiguousarray(images))
    with torch.no_grad():
        t0 = time.perf_counter()
        cls_ref, box_ref = model(x_all)
        rep.torch_ms = (time.perf_counter() - t0) * 1e3
        ref_dets = [d.numpy() for d in decode(cls_ref, box_ref)]
        refs = DecodeBoxes(model)(cls_ref, box_ref) if outputs == "decoded" else (cls_ref, box_ref)
    names = OUTPUT_NAMES[outputs]
    for bsz in batch_sizes:
        for start in range(0, images.shape[0], bsz):
            chunk = images[start:start + bsz]
            if chunk.shape[0] < bsz:  # fixed-batch graphs get whole batches only
                chunk = np.concatenate([chunk, images[: bsz - chunk.shape[0]]])
            try:
                t0 = time.perf_counter()
                out = [np.asarray(o) for o in run(chunk)]
                if bsz == batch_sizes[-1]:
                    rep.exported_ms += (time.perf_counter() - t0) * 1e3
            except ExportError:
                raise
            except Exception as exc:
                raise ExportError(f"running the exported model ({engine}) on a batch of {bsz} failed: "
                                  f"{str(exc).splitlines()[0][:300]}") from None
            idx = [(start + i) % images.shape[0] for i in range(chunk.shape[0])]
            where = f"batch {bsz}, "
            if len(out) != 2:
                rep.problems.append(f"the export returned {len(out)} outputs, expected 2 ({', '.join(names)})")
                continue
            if outputs == "nms":
                got = _nms_rows(rep, out, where)
            else:
                if not _compare_tensors(rep, out, [r[idx] for r in refs], names, outputs, where):
                    continue
                if outputs == "decoded":
                    continue
                with torch.no_grad():
                    got = [d.numpy() for d in decode(torch.from_numpy(out[0]), torch.from_numpy(out[1]))]
            for i, g in zip(idx, got):
                m, bl, be, se, probs = compare_detections(ref_dets[i], g, conf, top_k, where=f"{where}image {i}: ")
                rep.n_reference += len(ref_dets[i])
                rep.n_exported += len(g)
                rep.n_matched += m
                rep.n_borderline += bl
                rep.max_box_rel_err = max(rep.max_box_rel_err, be)
                rep.max_score_err = max(rep.max_score_err, se)
                rep.problems.extend(probs)
    return rep


def _nms_rows(rep: VerifyReport, out: list[np.ndarray], where: str) -> list[np.ndarray]:
    """Per-image ``[K, 6]`` rows of an ``nms`` export, checking the output contract."""
    det, num = out
    if det.ndim != 3 or det.shape[2] != 6 or num.shape != (det.shape[0],):
        rep.problems.append(f"{where}detections {list(det.shape)} / num_detections {list(num.shape)} do not "
                            "follow the [B, K, 6] / [B] contract")
        return [np.zeros((0, 6))] * det.shape[0]
    if any(np.abs(det[i, int(num[i]):]).max(initial=0.0) != 0 for i in range(det.shape[0])):
        rep.problems.append(f"{where}rows after num_detections are not zero")
    return [det[i, : int(num[i])] for i in range(det.shape[0])]


def _compare_tensors(rep: VerifyReport, out: list[np.ndarray], refs: list[torch.Tensor], names: Sequence[str],
                     outputs: str, where: str) -> bool:
    """Shapes and element-wise differences of raw / decoded outputs; False when shapes differ."""
    for name, o, r in zip(names, out, refs):
        if tuple(o.shape) != tuple(r.shape):
            rep.problems.append(f"{where}output {name} has shape {list(o.shape)}, expected {list(r.shape)}")
            return False
        d = float(np.abs(o.astype(np.float64) - r.double().numpy()).max()) if o.size else 0.0
        rep.raw_max_abs[name] = max(rep.raw_max_abs.get(name, 0.0), d)
    if outputs == "decoded":
        s_err = rep.raw_max_abs[names[0]]
        ref_boxes = refs[1].double().numpy()
        scale = np.maximum(1.0, np.abs(ref_boxes).max(-1, keepdims=True))
        b_err = float((np.abs(out[1] - ref_boxes) / scale).max()) if out[1].size else 0.0
        rep.max_score_err = max(rep.max_score_err, s_err)
        rep.max_box_rel_err = max(rep.max_box_rel_err, b_err)
        n = int(np.prod(out[0].shape[:2]))
        rep.n_reference += n
        rep.n_exported += n
        if s_err <= SCORE_ATOL and b_err <= BOX_RTOL:
            rep.n_matched += n
        else:
            rep.problems.append(f"{where}scores differ by up to {s_err:.2e} (tolerance {SCORE_ATOL:g}) and boxes by "
                                f"up to {b_err:.2e} relative (tolerance {BOX_RTOL:g})")
    return True


# ------------------------------------------------------------------------------------ orchestration
def nms_settings(confidence_thresh: float = DEFAULT_CONFIDENCE, iou_threshold: float = 0.45, top_k: int = 200,
                 nms_max_output_size: int | None = None) -> dict[str, Any]:
    """The NMS parameters of an ``nms`` export, as stored in its metadata."""
    return {"confidence_thresh": float(confidence_thresh), "iou_threshold": float(iou_threshold),
            "top_k": int(top_k),
            "nms_max_output_size": None if nms_max_output_size is None else int(nms_max_output_size),
            "mode": "per_class"}


def make_runner(fmt: str, data: bytes, threads: int | None = None) -> Callable[[np.ndarray], list[np.ndarray]]:
    """A callable running a serialized export on uint8 ``[B, 3, H, W]`` batches (numpy in, numpy out)."""
    if fmt == "onnx":
        from .ort import OrtRunner

        return OrtRunner(data, threads)
    import torchvision  # noqa: F401  (registers torchvision::nms for nms exports)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
        mod = torch.jit.load(io.BytesIO(data), map_location="cpu")

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in mod(torch.from_numpy(np.ascontiguousarray(x)))]

    return run


def default_export_path(source: Any, fmt: str, outputs: str, int8: bool = False) -> Path:
    """``runs/x/best.pt`` -> ``runs/x/best.onnx`` (``best_nms.onnx``, ``best_decoded.onnx``,
    ``best.int8.onnx``, ``best.torchscript.pt``)."""
    if not isinstance(source, str | os.PathLike):
        raise ExportError("give an output path when exporting a model object")
    p = Path(source)
    stem = p.stem + ("" if outputs == "raw" else f"_{outputs}")
    if fmt == "torchscript":
        return p.with_name(f"{stem}.torchscript.pt")
    return p.with_name(f"{stem}{'.int8' if int8 else ''}.onnx")


def io_specs(fmt: str, data: bytes, model: nn.Module, outputs: str, batch: int | str) -> tuple[list[Any], list[Any]]:
    """``(inputs, outputs)`` as ``(name, dtype, shape)`` lists, read from the ONNX graph or the contract."""
    if fmt == "onnx":
        import onnx

        g = onnx.load_from_string(data).graph

        def spec(v: Any) -> tuple[str, str, list[Any]]:
            t = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            return v.name, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, dims

        return [spec(v) for v in g.input], [spec(v) for v in g.output]
    h, w = model.image_size
    n, c1 = model.num_anchors, model.n_classes + 1
    shapes = {"raw": ([n, c1], [n, 4]), "decoded": ([n, c1], [n, 4])}
    a, b = OUTPUT_NAMES[outputs]
    if outputs == "nms":
        return ([("images", "uint8", ["batch", 3, h, w])],
                [(a, "float32", ["batch", "K", 6]), (b, "int64", ["batch"])])
    sa, sb = shapes[outputs]
    return [("images", "uint8", ["batch", 3, h, w])], [(a, "float32", ["batch", *sa]), (b, "float32", ["batch", *sb])]


def export_model(
    model: Any,
    path: str | os.PathLike[str] | None = None,
    format: str = "onnx",
    *,
    outputs: str = "raw",
    dynamic_batch: bool = False,
    batch_size: int = 1,
    opset: int = 17,
    exporter: str = "torchscript",
    confidence_thresh: float = DEFAULT_CONFIDENCE,
    iou_threshold: float = 0.45,
    top_k: int = 200,
    nms_max_output_size: int | None = None,
    verify: bool = True,
    sample_images: Any = None,
    n_samples: int = 4,
    keep_aspect: bool = False,
    net_proto: Any = None,
    extra_metadata: dict[str, Any] | None = None,
) -> ExportResult:
    """Export, verify, then write atomically (see the module docstring for formats and contracts).

    Args:
        model: an :class:`~ssdkit.models.SSD` or a checkpoint path.
        path: destination (default next to the checkpoint, see :func:`default_export_path`).
        format: ``'onnx'`` or ``'torchscript'``.
        outputs: ``'raw'``, ``'decoded'`` or ``'nms'`` (decoding + per-class NMS in the graph).
        dynamic_batch: ONNX batch axis dynamic (TorchScript traces always run any batch size).
        batch_size: the fixed batch of a static ONNX graph.
        opset: ONNX opset (>= 11 for ``NonMaxSuppression``; 17 default).
        exporter: ``'torchscript'`` (``torch.onnx.export(dynamo=False)``) or ``'dynamo'`` (network part only).
        confidence_thresh, iou_threshold, top_k, nms_max_output_size: the ``nms`` graph's decoding.
        verify: run the export against PyTorch before writing (raises ``ExportError`` on mismatch).
        sample_images: verification images (any Predictor source; default: synthetic images).
        n_samples: verification images.
        keep_aspect: preprocessing of the verification images (pad to aspect).
        net_proto: ONNX only: a ready network graph (e.g. int8) to use instead of exporting the network.
        extra_metadata: ONNX only: more entries for the ``ssdkit`` metadata (e.g. ``quantization``).

    Returns:
        :class:`ExportResult` (path, sizes, input/output specs, :class:`VerifyReport`).
    """
    if format not in FORMATS:
        raise ExportError(f"format must be one of {list(FORMATS)}, got {format!r}")
    if outputs not in OUTPUT_NAMES:
        raise ExportError(f"outputs must be one of {list(OUTPUT_NAMES)}, got {outputs!r}")
    if batch_size < 1:
        raise ExportError(f"batch size must be >= 1, got {batch_size}")
    if format == "onnx" and outputs == "nms" and opset < 11:
        raise ExportError(f"ONNX NonMaxSuppression needs opset >= 11, got --opset {opset}")
    dest = Path(path) if path is not None else default_export_path(model, format, outputs)
    net = load_model(model)
    nms = nms_settings(confidence_thresh, iou_threshold, top_k, nms_max_output_size) if outputs == "nms" else None
    if nms is not None:
        from .graph import check_decode_args

        check_decode_args(confidence_thresh, iou_threshold, top_k, nms_max_output_size, ExportError)
    with torch.no_grad():
        if format == "onnx":
            data = export_onnx_bytes(net, outputs, dynamic_batch=dynamic_batch, batch_size=batch_size, opset=opset,
                                     exporter=exporter, nms=nms, net_proto=net_proto, extra_metadata=extra_metadata)
            batch: int | str = "dynamic" if dynamic_batch else int(batch_size)
        else:
            data = export_torchscript_bytes(net, outputs, batch_size=batch_size, nms=nms)
            batch = "dynamic"
    report = None
    if verify:
        n = max(int(n_samples), 2 if batch == "dynamic" else int(batch_size))
        images = sample_batch(net, sample_images, n, keep_aspect)
        sizes = [1, n] if batch == "dynamic" else [int(batch)]
        engine = "onnxruntime" if format == "onnx" else "TorchScript"
        report = verify_export(net, make_runner(format, data), outputs, images, sizes, nms, engine)
        if not report.ok:
            more = f" (and {len(report.problems) - 3} more)" if len(report.problems) > 3 else ""
            raise ExportError(f"verification of the {format} export failed, nothing written: "
                              + "; ".join(report.problems[:3]) + more)
    from ..fileio import atomic_write_bytes

    atomic_write_bytes(dest, data)
    ins, outs = io_specs(format, data, net, outputs, batch)
    meta = {**export_metadata(net, outputs, batch, nms), **(extra_metadata or {})}
    return ExportResult(dest, format, outputs, batch, opset if format == "onnx" else None, len(data), ins, outs,
                        report, meta)
