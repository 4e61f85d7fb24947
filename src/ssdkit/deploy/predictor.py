"""``ssdkit.Predictor``: detection on images, folders, globs and videos, with PyTorch or ONNX Runtime.

::

    import ssdkit
    pred = ssdkit.Predictor("runs/bccd/best.pt", backend="onnxruntime")   # or an SSD, or a .onnx export
    for det in pred.predict("images/*.jpg"):
        print(det.source, det.boxes, det.scores, det.names)      # boxes: xyxy in original pixels
        det.plot("out/" + Path(det.source).name)                  # annotated copy
    print(pred.timings)                                            # preprocess / inference / postprocess ms per image

Pipeline per batch of ``batch_size`` images (no Python loop over boxes anywhere):

1. read + decode (:mod:`ssdkit.deploy.sources`: OpenCV/libjpeg-turbo, EXIF, grayscale, RGBA,
   16-bit, DCT-reduced decoding of huge JPEGs) and resize into one uint8 batch
   (:class:`~ssdkit.deploy.preprocess.Preprocessor`, the evaluation preprocessing);
2. the network: PyTorch (``torch.inference_mode``) or an ONNX Runtime session on a raw export
   made in memory at construction (or a given ``.onnx`` file: ``raw`` or ``nms`` outputs);
3. :func:`ssdkit.postprocess.decode_detections` (candidate anchors only, per-class NMS), then one
   vectorised mapping of the whole batch's boxes back to original pixels, clipped. Post-processing
   runs with one PyTorch thread: its tensors are small (~2 ms of CPU per image), and OpenMP
   threads waiting at barriers on cores that other processes (or ONNX Runtime's pool) occupy
   made it 20x slower on 2 shared cores (148 ms vs 7 ms per image, measured).

Confidence: the default ``confidence_thresh=0.3`` suits display and deployment; ``ssdkit evaluate``
uses 0.01 (mAP needs the low-score tail). Pass ``confidence_thresh=0.01`` to reproduce evaluation.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ExportError
from .export import DEFAULT_CONFIDENCE
from .graph import check_decode_args
from .preprocess import Batch, Preprocessor, to_original
from .sources import Frame, SourceStats, expand_sources, iter_entries

__all__ = ["Predictor", "Detections", "DEFAULT_CONFIDENCE", "BACKENDS"]

BACKENDS = ("torch", "onnxruntime")
_BACKEND_ALIASES = {"torch": "torch", "pytorch": "torch", "onnxruntime": "onnxruntime", "ort": "onnxruntime",
                    "onnx": "onnxruntime"}


@dataclass
class Detections:
    """Detections of one image, in the original image's pixels.

    Attributes:
        boxes: ``ndarray[K, 4]`` float32 ``xyxy`` (clipped to the image).
        scores: ``ndarray[K]`` float32, descending.
        labels: ``ndarray[K]`` int64 class ids ``1..C`` (0 is background and never reported).
        class_names: the model's class names (no background; ``class_names[k - 1]`` names label ``k``).
        image_size: ``(H, W)`` of the original image (EXIF orientation applied).
        source: file path, ``'<array N>'``, or the video path.
        frame: frame index for video frames, else ``None``.
        timings: this image's share of its batch: ``preprocess_ms`` (read, decode, resize),
            ``inference_ms`` (network), ``postprocess_ms`` (decoding, NMS, mapping back).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    image_size: tuple[int, int]
    source: str
    frame: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    path: str | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    fps: float | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def names(self) -> list[str]:
        """The class name of each detection."""
        n = len(self.class_names)
        return [self.class_names[k - 1] if 1 <= k <= n else str(k) for k in self.labels.tolist()]

    def to_tensor(self) -> torch.Tensor:
        """``Tensor[K, 6]`` float32 ``[class_id, score, xmin, ymin, xmax, ymax]`` (the ssdkit detection layout)."""
        rows = np.concatenate([self.labels[:, None].astype(np.float32), self.scores[:, None], self.boxes], axis=1)
        return torch.from_numpy(rows.astype(np.float32).reshape(-1, 6))

    def filter(self, min_score: float = 0.0, classes: Sequence[int | str] | None = None) -> Detections:
        """A copy keeping scores ``>= min_score`` (and only ``classes``, names or ids)."""
        keep = self.scores >= min_score
        if classes is not None:
            keep &= np.isin(self.labels, _class_ids(classes, self.class_names))
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep], self.class_names, self.image_size,
                          self.source, self.frame, dict(self.timings), self.path, self.image, self.fps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``source``, ``frame``, ``image_size [H, W]``, ``timings`` and ``detections``
        (``[{label, class, score, box: [x0, y0, x1, y1]}]``, boxes rounded to 0.01 px)."""
        dets = [
            {"label": int(k), "class": n, "score": round(float(s), 5), "box": [round(float(v), 2) for v in b]}
            for k, n, s, b in zip(self.labels.tolist(), self.names, self.scores.tolist(), self.boxes.tolist())
        ]
        out: dict[str, Any] = {"source": self.source}
        if self.frame is not None:
            out["frame"] = self.frame
            if self.fps:
                out["time_s"] = round(self.frame / self.fps, 4)
        out["image_size"] = list(self.image_size)
        out["detections"] = dets
        out["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        return out

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def plot(self, path: str | os.PathLike[str] | None = None, image: Any = None, min_score: float = 0.0,
             **draw_kw: Any) -> np.ndarray:
        """The image with boxes and ``name score`` tags: ``ndarray[H, W, 3]`` uint8 RGB; saved to
        ``path`` (atomically, format from the suffix) when given.

        The image is ``image`` if given, else the one kept at prediction time, else re-read from
        :attr:`path` (video frames and huge DCT-reduced images are not kept).
        """
        from ..viz import draw_boxes, save_image

        img = image if image is not None else self.image
        if img is None:
            if self.path is None or self.frame is not None:
                raise ValueError("this Detections has no image to draw on (video frame or array not kept); "
                                 "pass image=...")
            from .sources import load_image_file

            img = load_image_file(self.path).image
        d = self.filter(min_score) if min_score > 0 else self
        canvas = draw_boxes(img, d.boxes, d.labels, d.scores, class_names=self.class_names, **draw_kw)
        if path is not None:
            save_image(path, canvas)
        return canvas

    def __repr__(self) -> str:
        return (f"Detections({len(self)} boxes, source={self.source!r}"
                + (f", frame={self.frame}" if self.frame is not None else "")
                + f", image_size={self.image_size})")


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """PyTorch intra-op threads set to ``n`` inside the block (``None``: unchanged), restored after."""
    if n is None or n == torch.get_num_threads():
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _class_ids(classes: Sequence[int | str], names: Sequence[str]) -> np.ndarray:
    """Class names or ids -> ids ``1..C``; unknown names raise ``ValueError`` listing the known ones."""
    ids = []
    lower = {n.lower(): i + 1 for i, n in enumerate(names)}
    for c in classes:
        if isinstance(c, str) and not c.isdigit():
            if c.lower() not in lower:
                raise ValueError(f"unknown class {c!r}; the model's classes are {list(names)}")
            ids.append(lower[c.lower()])
        else:
            k = int(c)
            if not 1 <= k <= len(names):
                raise ValueError(f"class id {k} is outside 1..{len(names)}")
            ids.append(k)
    return np.asarray(sorted(set(ids)), dtype=np.int64)


class Predictor:
    """Batched detection with PyTorch or ONNX Runtime (see the module docstring).

    Args:
        model: an :class:`~ssdkit.models.SSD`, a checkpoint path, or an ssdkit ``.onnx`` export
            (then the backend is ONNX Runtime and the model is rebuilt from the file's metadata).
        device: PyTorch device for ``backend='torch'`` (``'cpu'``, ``'cuda'``...).
        backend: ``'torch'`` or ``'onnxruntime'`` (aliases ``'ort'``, ``'onnx'``).
        batch_size: images per network run.
        confidence_thresh: keep scores ``> confidence_thresh`` (per class); default 0.3 (display);
            use 0.01 to match ``ssdkit evaluate``.
        iou_threshold: NMS suppresses ``IoU > iou_threshold``.
        top_k: at most this many detections per image.
        classes: report only these classes (names or ids); selection happens before ``top_k``.
        nms: ``'per_class'`` or ``'global'`` (:func:`ssdkit.postprocess.decode_detections`).
        keep_aspect: pad to the network's aspect ratio before resizing (as the model was evaluated).
        onnx: an existing ONNX export to run (``raw`` or ``nms`` outputs) instead of exporting in memory.
        threads: intra-op threads of the network: the ONNX Runtime session's (default: the CPUs
            available to this process), or PyTorch's during the forward (default: unchanged).
        keep_images: keep each still image's pixels in its :class:`Detections` for :meth:`Detections.plot`
            (video frames are never kept).
        prefetch: read and decode the next batch in a background thread while the network runs
            (:meth:`stream`); ``False`` does everything in the calling thread.
        spinning: let ONNX Runtime's idle threads spin between operators. Default (``None``): at
            ``batch_size=1`` only, where each operator is short and waking sleeping threads costs more
            than the work; larger batches let them sleep, which is kinder to other processes on the
            same cores (``python bench/predictor.py`` measures both).

    Both backends take a snapshot of the model when the Predictor is built (the torch backend runs
    :meth:`~ssdkit.models.SSD.fuse`'s inference copy, channels-last on the CPU; the ONNX Runtime
    backend an export): build a new Predictor after changing the model's weights.
    """

    def __init__(
        self,
        model: Any,
        device: str | torch.device = "cpu",
        backend: str = "torch",
        batch_size: int = 8,
        confidence_thresh: float = DEFAULT_CONFIDENCE,
        iou_threshold: float = 0.45,
        top_k: int = 200,
        classes: Sequence[int | str] | None = None,
        nms: str = "per_class",
        keep_aspect: bool = False,
        onnx: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        keep_images: bool = True,
        prefetch: bool = True,
        spinning: bool | None = None,
    ) -> None:
        if backend not in _BACKEND_ALIASES:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        check_decode_args(confidence_thresh, iou_threshold, top_k)
        self.backend = _BACKEND_ALIASES[backend]
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.confidence_thresh = float(confidence_thresh)
        self.iou_threshold = float(iou_threshold)
        self.top_k = int(top_k)
        self.nms = nms
        self.keep_images = bool(keep_images)
        self.prefetch = bool(prefetch)
        self.spinning = (self.batch_size == 1) if spinning is None else bool(spinning)
        self.stats = SourceStats()
        self._runner: Any = None
        self.threads = threads
        self._graph_nms: dict[str, Any] | None = None
        is_onnx_file = isinstance(model, str | os.PathLike) and os.fspath(model).lower().endswith(".onnx")
        if is_onnx_file:
            onnx, self.backend = model, "onnxruntime"
            self.model = _model_from_onnx(model)
        else:
            from .export import load_model

            self.model = load_model(model, device=self.device if self.backend == "torch" else "cpu")
        if self.backend == "torch":
            self.model = self.model.to(self.device).eval()
            # the network runs as an inference copy: BatchNorm folded into the convolutions and, on the CPU,
            # channels-last (oneDNN's NHWC kernels): same outputs up to float rounding, 1.43x / 1.85x faster
            # at batch 1 / 8 here (`python bench/predictor.py`). Like the ONNX export, it is a snapshot.
            fuse = getattr(self.model, "fuse", None)
            fusable = fuse is not None and not getattr(self.model, "fused", False)
            self._net = fuse(channels_last=self.device.type == "cpu") if fusable else self.model
        else:
            self.model = self.model.cpu().eval()
            self._runner = self._make_runner(onnx, threads)
        self.class_names: list[str] = list(self.model.class_names)
        self.classes = None if classes is None else _class_ids(classes, self.class_names)
        self.image_size: tuple[int, int] = tuple(self.model.image_size)  # type: ignore[assignment]
        self._pre = Preprocessor(self.image_size, keep_aspect)
        self._totals = {"images": 0, "preprocess_ms": 0.0, "inference_ms": 0.0, "postprocess_ms": 0.0}

    # ------------------------------------------------------------------ construction helpers
    def _make_runner(self, onnx: str | os.PathLike[str] | None, threads: int | None) -> Any:
        from .ort import OrtRunner, read_metadata

        if onnx is None:
            from .export import export_onnx_bytes

            with torch.no_grad():
                data = export_onnx_bytes(self.model, "raw", dynamic_batch=True)
            return OrtRunner(data, threads, spinning=self.spinning)
        runner = OrtRunner(onnx, threads, spinning=self.spinning)
        kind = runner.outputs_kind()
        if kind == "decoded":
            raise ExportError(f"{onnx}: 'decoded' exports need NMS outside the graph; give a raw or an --nms export")
        shape = runner.session.get_inputs()[0].shape
        if list(shape[2:]) != list(self.model.image_size):
            raise ExportError(f"{onnx} takes {shape[2]}x{shape[3]} images but the model is "
                              f"{self.model.image_size[0]}x{self.model.image_size[1]}: not an export of this model")
        if kind == "raw":
            n = runner.session.get_outputs()[0].shape[1]
            if isinstance(n, int) and n != self.model.num_anchors:
                raise ExportError(f"{onnx} has {n} anchors but the model has {self.model.num_anchors}: "
                                  "not an export of this model")
        if kind == "nms":
            meta = read_metadata(onnx).get("ssdkit")
            self._graph_nms = json.loads(meta).get("nms") if meta else None
            baked = (self._graph_nms or {}).get("confidence_thresh")
            if baked is not None and baked > self.confidence_thresh:
                warnings.warn(f"{onnx} keeps only scores > {baked} (its --conf); confidence_thresh="
                              f"{self.confidence_thresh} cannot bring lower-scoring boxes back", stacklevel=3)
        return runner

    # ------------------------------------------------------------------ public API
    @property
    def timings(self) -> dict[str, float]:
        """Mean ms per image over everything predicted so far: preprocess, inference, postprocess, total."""
        n = max(1, int(self._totals["images"]))
        out = {k: self._totals[k] / n for k in ("preprocess_ms", "inference_ms", "postprocess_ms")}
        out["total_ms"] = sum(out.values())
        out["images"] = float(self._totals["images"])
        return out

    def predict(self, source: Any, recursive: bool = False) -> list[Detections]:
        """Detections for every image (or video frame) of ``source``, in order.

        ``source``: an image array / tensor / PIL image, a path or URL, a folder, a glob, a video
        file, or a list of these (see :mod:`ssdkit.deploy.sources` for the error policy: files found
        in folders/globs that cannot be read are skipped with a warning and counted in
        ``self.stats.skipped``). For long videos prefer :meth:`stream` (constant memory).
        """
        return list(self.stream(source, recursive))

    __call__ = predict

    def stream(self, source: Any, recursive: bool = False) -> Iterator[Detections]:
        """Like :meth:`predict` but yields batch by batch (memory bounded by two batches).

        With ``prefetch`` (the default) the next batch is read and decoded in a background thread
        while the network runs on the current one (file reading, JPEG decoding and the network all
        release the GIL); results, their order and the error policy are the same as without.
        """
        entries = expand_sources(source, recursive)
        self.stats = SourceStats()
        frames = iter_entries(entries, self.image_size, self.stats)

        def chunks() -> Iterator[tuple[list[Frame], float]]:
            while True:
                t0 = time.perf_counter()
                chunk = list(itertools.islice(frames, self.batch_size))
                if not chunk:
                    return
                yield chunk, (time.perf_counter() - t0) * 1e3

        for chunk, t_read in (_prefetched(chunks()) if self.prefetch else chunks()):
            yield from self.predict_frames(chunk, read_ms=t_read)
        if self.stats.images + self.stats.frames == 0:
            from ..errors import DataError

            skipped = f" ({len(self.stats.skipped)} unreadable files skipped)" if self.stats.skipped else ""
            raise DataError(f"no images could be read from {source!r}{skipped}")

    def predict_frames(self, frames: Sequence[Frame], read_ms: float = 0.0) -> list[Detections]:
        """One batch of decoded :class:`~ssdkit.deploy.sources.Frame` s (any count; run in chunks)."""
        out: list[Detections] = []
        for s in range(0, len(frames), self.batch_size):
            chunk = list(frames[s:s + self.batch_size])
            t0 = time.perf_counter()
            batch = self._pre(chunk)
            t1 = time.perf_counter()
            rows = self._infer_and_decode(batch)
            out.extend(self._wrap(batch, rows, read_ms * len(chunk) / max(1, len(frames)) + (t1 - t0) * 1e3))
        return out

    # ------------------------------------------------------------------ stages
    def _infer_and_decode(self, batch: Batch) -> tuple[list[np.ndarray], float, float]:
        """Network + decoding for one batch: per-image ``[K, 6]`` rows in original pixels, and timings."""
        from ..postprocess import decode_detections

        t0 = time.perf_counter()
        if self.backend == "torch":
            with torch.inference_mode(), torch_threads(self.threads):
                x = torch.from_numpy(batch.images).to(self.device, non_blocking=True)
                cls_logits, box_deltas = self._net(x)
        else:
            outs = self._runner(batch.images)
            if self._graph_nms is not None or self._runner.outputs_kind() == "nms":
                t1 = time.perf_counter()
                det, num = outs
                dets = [det[i, : int(num[i])] for i in range(det.shape[0])]
                dets = [d[d[:, 1] > self.confidence_thresh] for d in dets]
                return self._finish(dets, batch), (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3
            cls_logits, box_deltas = (torch.from_numpy(o) for o in outs)
        t1 = time.perf_counter()
        with torch.inference_mode(), torch_threads(1):
            dets_t = decode_detections(
                cls_logits, box_deltas, self.model.anchors.to(cls_logits.device), self.image_size,
                confidence_thresh=self.confidence_thresh, iou_threshold=self.iou_threshold,
                top_k=None if self.classes is not None else self.top_k, nms=self.nms,
                variances=self.model.variances, normalize_coords=self.model.anchor_generator.normalize_coords,
            )
        dets = [d.cpu().numpy() for d in dets_t]
        return self._finish(dets, batch), (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3

    def _finish(self, dets: list[np.ndarray], batch: Batch) -> list[np.ndarray]:
        if self.classes is not None:
            dets = [d[np.isin(d[:, 0].astype(np.int64), self.classes)][: self.top_k] for d in dets]
        return to_original(dets, batch.inverse, batch.orig_size)

    def _wrap(self, batch: Batch, result: tuple[list[np.ndarray], float, float], pre_ms: float) -> list[Detections]:
        rows, inf_ms, post_ms = result
        t0 = time.perf_counter()
        n = len(rows)
        out = []
        for fr, r in zip(batch.frames, rows):
            keep_img = self.keep_images and fr.frame is None and not fr.reduced
            out.append(Detections(
                boxes=np.ascontiguousarray(r[:, 2:6]), scores=np.ascontiguousarray(r[:, 1]),
                labels=r[:, 0].astype(np.int64), class_names=self.class_names,
                image_size=(int(fr.orig_size[0]), int(fr.orig_size[1])), source=fr.source, frame=fr.frame,
                path=fr.path, image=fr.image if keep_img else None, fps=fr.fps,
            ))
        post_ms += (time.perf_counter() - t0) * 1e3
        share = {"preprocess_ms": pre_ms / n, "inference_ms": inf_ms / n, "postprocess_ms": post_ms / n}
        for d in out:
            d.timings = dict(share)
        self._totals["images"] += n
        for k, v in share.items():
            self._totals[k] += v * n
        return out

    def __repr__(self) -> str:
        return (f"Predictor({self.model.config.get('name', type(self.model).__name__)}, backend={self.backend!r}, "
                f"input={self.image_size[0]}x{self.image_size[1]}, classes={self.class_names}, "
                f"confidence_thresh={self.confidence_thresh}, batch_size={self.batch_size})")


_END = object()


def _prefetched(items: Iterator[Any]) -> Iterator[Any]:
    """``items`` produced one ahead in a daemon thread (a queue of one); exceptions are re-raised here.

    Closing the returned generator early (a ``break`` in the caller) stops the thread after the item
    it is producing.
    """
    import queue
    import threading

    q: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it in its own thread
            put((False, exc))
            return
        put((True, _END))

    # the producer's warnings (skipped files) must reach the caller's filters and recorders as they
    # would without the thread: catch_warnings state is process-wide, so nothing else is needed
    thread = threading.Thread(target=work, name="ssdkit-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _model_from_onnx(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild the (weightless) SSD description of an ssdkit ONNX export from its metadata: anchors,
    image size, variances and class names are all the Predictor needs besides the graph."""
    from ..models.registry import build_uninitialized
    from .ort import read_metadata

    if not Path(path).is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    meta = read_metadata(path).get("ssdkit")
    if not meta:
        raise ExportError(f"{path} has no ssdkit metadata (not exported by `ssdkit export`); "
                          "give the checkpoint and pass the file as onnx=...")
    info = json.loads(meta)
    cfg = dict(info["model"])
    name = cfg.pop("name")
    model = build_uninitialized(name, **cfg)
    return model.eval()
