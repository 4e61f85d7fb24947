"""Video inference: annotated video, JSON-lines of per-frame detections, real/fake face summary.

``process_video(predictor, "clip.mp4", out_dir)`` reads frames with OpenCV, runs them through the
predictor in batches of ``predictor.batch_size``, and writes (atomically: temporary files renamed
when the video is complete):

- ``<stem>.mp4``: the frames with boxes and ``class score`` tags (OpenCV ``VideoWriter``, ``mp4v``,
  source frame rate and size);
- ``<stem>.jsonl``: one JSON object per frame: ``{"source", "frame", "time_s", "image_size",
  "detections": [{"label", "class", "score", "box"}], "timings"}`` (boxes in frame pixels);
- ``<stem>.summary.json`` for a real/fake face model (class names containing ``real`` and
  ``fake``, or ``summary='faces'``): see :class:`FaceSummary`.

A tqdm progress bar (frames) goes to stderr when ``progress=True``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .sources import iter_frames, video_info

__all__ = ["VideoResult", "FaceSummary", "face_classes", "process_video"]


def face_classes(class_names: list[str]) -> tuple[list[int], list[int]] | None:
    """``(real ids, fake ids)`` (labels ``1..C``) when the names mark a real/fake face model, else ``None``."""
    real = [i + 1 for i, n in enumerate(class_names) if "real" in n.lower()]
    fake = [i + 1 for i, n in enumerate(class_names) if "fake" in n.lower()]
    return (real, fake) if fake and real else None


@dataclass
class FaceSummary:
    """Per-video summary of a real/fake face detector (accumulated frame by frame).

    A frame *has faces* when it has at least one detection (above the predictor's confidence) of a
    real or fake class; it is *flagged fake* when at least one of them is fake.
    ``fraction_flagged_fake = frames_flagged_fake / frames_with_faces``; the verdict is ``fake``
    when that fraction is ``>= fake_fraction_threshold`` (0.5), ``real`` otherwise, ``no faces``
    without any face.
    """

    real_ids: list[int]
    fake_ids: list[int]
    confidence_thresh: float
    fake_fraction_threshold: float = 0.5
    frames: int = 0
    frames_with_faces: int = 0
    frames_flagged_fake: int = 0
    face_detections: int = 0
    fake_detections: int = 0
    sum_conf: float = 0.0
    sum_fake_conf: float = 0.0
    sum_real_conf: float = 0.0
    _first_fake_frame: int | None = field(default=None, repr=False)

    def update(self, frame: int, labels: np.ndarray, scores: np.ndarray) -> None:
        self.frames += 1
        is_fake = np.isin(labels, self.fake_ids)
        is_face = is_fake | np.isin(labels, self.real_ids)
        n = int(is_face.sum())
        if n == 0:
            return
        self.frames_with_faces += 1
        nf = int(is_fake.sum())
        if nf:
            self.frames_flagged_fake += 1
            if self._first_fake_frame is None:
                self._first_fake_frame = frame
        self.face_detections += n
        self.fake_detections += nf
        self.sum_conf += float(scores[is_face].sum())
        self.sum_fake_conf += float(scores[is_fake].sum())
        self.sum_real_conf += float(scores[is_face & ~is_fake].sum())

    def to_dict(self, source: str = "", fps: float | None = None,
                class_names: list[str] | None = None) -> dict[str, Any]:
        frac = self.frames_flagged_fake / self.frames_with_faces if self.frames_with_faces else 0.0
        real_n = self.face_detections - self.fake_detections
        verdict = ("no faces" if not self.frames_with_faces
                   else "fake" if frac >= self.fake_fraction_threshold else "real")

        def mean(total: float, n: int) -> float | None:
            return round(total / n, 5) if n else None

        return {
            "source": source,
            "frames": self.frames,
            "fps": fps,
            "duration_s": round(self.frames / fps, 3) if fps else None,
            "classes": {"real": [class_names[i - 1] for i in self.real_ids] if class_names else self.real_ids,
                        "fake": [class_names[i - 1] for i in self.fake_ids] if class_names else self.fake_ids},
            "confidence_thresh": self.confidence_thresh,
            "frames_with_faces": self.frames_with_faces,
            "fraction_frames_with_faces": round(self.frames_with_faces / self.frames, 5) if self.frames else 0.0,
            "frames_flagged_fake": self.frames_flagged_fake,
            "fraction_flagged_fake": round(frac, 5),
            "face_detections": self.face_detections,
            "fake_detections": self.fake_detections,
            "real_detections": real_n,
            "fraction_fake_detections": (round(self.fake_detections / self.face_detections, 5)
                                         if self.face_detections else 0.0),
            "mean_confidence": mean(self.sum_conf, self.face_detections),
            "mean_fake_confidence": mean(self.sum_fake_conf, self.fake_detections),
            "mean_real_confidence": mean(self.sum_real_conf, real_n),
            "first_fake_frame": self._first_fake_frame,
            "verdict": verdict,
            "fake_fraction_threshold": self.fake_fraction_threshold,
        }


@dataclass
class VideoResult:
    """What :func:`process_video` wrote and measured."""

    source: str
    frames: int
    fps: float | None
    video_path: Path | None
    jsonl_path: Path | None
    summary_path: Path | None
    summary: dict[str, Any] | None
    seconds: float
    detections: int

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


class _AtomicVideoWriter:
    """``cv2.VideoWriter`` into a temporary ``.mp4`` beside ``dest``, renamed over it on a clean exit
    (removed on an exception); opened on the first frame, whose size fixes the video's size."""

    def __init__(self, dest: Path, fps: float, codec: str) -> None:
        self.dest, self.fps, self.codec = dest, fps, codec
        self.tmp: str | None = None
        self.writer: Any = None

    def write(self, rgb: np.ndarray) -> None:
        import cv2

        if self.writer is None:
            fd, self.tmp = tempfile.mkstemp(prefix=f".{self.dest.stem}.", suffix=".mp4", dir=self.dest.parent)
            os.close(fd)
            h, w = rgb.shape[:2]
            self.writer = cv2.VideoWriter(self.tmp, cv2.VideoWriter_fourcc(*self.codec), self.fps, (w, h))
            if not self.writer.isOpened():
                raise DataError(f"{self.dest}: OpenCV cannot write {self.codec!r} video here")
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        from ..fileio import fsync_dir

        if self.writer is not None:
            self.writer.release()
        if self.tmp is None:
            return
        if exc_type is None:
            os.replace(self.tmp, self.dest)
            fsync_dir(self.dest.parent)
        else:
            Path(self.tmp).unlink(missing_ok=True)


def _outputs(path: str, out_dir: Path) -> tuple[Path, Path, Path]:
    stem = Path(path).stem
    video = out_dir / f"{stem}.mp4"
    if video.resolve() == Path(path).resolve():
        video = out_dir / f"{stem}.pred.mp4"  # never overwrite the input clip
    return video, out_dir / f"{stem}.jsonl", out_dir / f"{stem}.summary.json"


def process_video(
    predictor: Any,
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    write_video: bool = True,
    write_jsonl: bool = True,
    summary: str | None = "auto",
    progress: bool = True,
    codec: str = "mp4v",
) -> VideoResult:
    """Run ``predictor`` (:class:`~ssdkit.deploy.predictor.Predictor`) on every frame of a video.

    Args:
        predictor: the predictor (its confidence threshold, classes and batch size apply).
        path: the video file.
        out_dir: output folder (created).
        write_video, write_jsonl: which outputs to write.
        summary: ``'auto'`` (a face summary when the class names contain ``real`` and ``fake``),
            ``'faces'`` (always; raises ``ValueError`` when the names do not say which class is
            which) or ``None``.
        progress: tqdm progress bar on stderr.
        codec: FourCC of the annotated video.

    Returns:
        :class:`VideoResult` with the paths written and the summary.
    """
    from ..fileio import atomic_open
    from ..viz import draw_boxes

    src = os.fspath(path)
    if summary not in (None, "auto", "faces"):
        raise ValueError(f"summary must be 'auto', 'faces' or None, got {summary!r}")
    faces = face_classes(predictor.class_names)
    if summary == "faces" and faces is None:
        raise ValueError(f"--summary faces needs class names containing 'real' and 'fake'; this model's classes "
                         f"are {predictor.class_names}")
    face_sum = None
    if faces is not None and summary is not None:
        face_sum = FaceSummary(faces[0], faces[1], predictor.confidence_thresh)
    info = video_info(src)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    video_path, jsonl_path, summary_path = _outputs(src, out)
    fps = info["fps"] or 25.0
    t0 = time.perf_counter()
    n_frames = n_dets = 0
    with contextlib.ExitStack() as stack:
        jsonl = stack.enter_context(atomic_open(jsonl_path, "w", encoding="utf-8")) if write_jsonl else None
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = stack.enter_context(tqdm(total=info["frames"] or None, desc=Path(src).name, unit="frame",
                                           dynamic_ncols=True, leave=False))
        writer = _AtomicVideoWriter(video_path, fps, codec) if write_video else None
        if writer is not None:
            stack.push(writer)
        frames = iter_frames(src)
        while True:
            chunk = list(itertools.islice(frames, predictor.batch_size))
            if not chunk:
                break
            dets = predictor.predict_frames(chunk)
            for fr, d in zip(chunk, dets):
                n_frames += 1
                n_dets += len(d)
                if jsonl is not None:
                    jsonl.write(json.dumps(d.to_dict()) + "\n")
                if face_sum is not None:
                    face_sum.update(fr.frame or 0, d.labels, d.scores)
                if writer is not None:
                    writer.write(draw_boxes(fr.image, d.boxes, d.labels, d.scores, class_names=predictor.class_names))
            if bar is not None:
                bar.update(len(chunk))
    summary_dict = None
    if face_sum is not None:
        from ..fileio import atomic_write_json

        summary_dict = face_sum.to_dict(src, info["fps"] or None, predictor.class_names)
        atomic_write_json(summary_path, summary_dict)
    return VideoResult(src, n_frames, info["fps"] or None, video_path if write_video and n_frames else None,
                       jsonl_path if write_jsonl else None, summary_path if face_sum is not None else None,
                       summary_dict, time.perf_counter() - t0, n_dets)
