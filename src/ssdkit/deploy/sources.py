"""What :meth:`ssdkit.Predictor.predict` accepts, expanded into a stream of RGB images.

Sources, in any mix (a single source or a list):

- arrays: ``np.ndarray`` ``[H, W]`` / ``[H, W, 1|3|4]`` (RGB order; OpenCV's BGR arrays must be
  converted by the caller), ``torch.Tensor`` ``[3|1, H, W]`` or ``[H, W]``, or a PIL image (its EXIF
  orientation is applied). dtypes: uint8; uint16 (high byte, as OpenCV); bool; float (taken as
  ``0..255``, the ssdkit image convention, and clipped); other integers (clipped to ``0..255``).
  Alpha is dropped, grayscale is repeated into three channels.
- an image file or URL (anything :func:`ssdkit.data.read_image` reads: grayscale, RGBA, palette,
  CMYK, 16-bit, EXIF-rotated);
- a video file (by extension, :data:`VIDEO_EXTENSIONS`): every frame, in order;
- a folder: its image and video files (by extension), sorted by name; ``recursive=True`` descends;
- a glob pattern (``*``, ``?``, ``[``; ``**`` recurses): matching image and video files, sorted.

Error policy (documented in ``docs/deploy.md``): a source named explicitly that is missing or
unreadable raises (:class:`~ssdkit.errors.DataError` / ``FileNotFoundError``); a file found by
expanding a folder or a glob that cannot be decoded is **skipped** with one warning per file and
counted in :attr:`SourceStats.skipped`. A folder or glob that yields no image raises ``DataError``.

Huge JPEGs are decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling (OpenCV
``IMREAD_REDUCED_COLOR_*``) when the reduced image is still at least the network input size: an
8000x8000 photo decodes in ~1/10 of the time and memory, and boxes still come back in the full
image's pixels (the reduction is folded into the ``inverse`` mapping).
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = [
    "VIDEO_EXTENSIONS",
    "Frame",
    "Entry",
    "SourceStats",
    "SkippedImageWarning",
    "expand_sources",
    "iter_frames",
    "to_rgb_uint8",
    "is_video",
    "load_image_file",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")
_GLOB_CHARS = ("*", "?", "[")
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT/JPG/DAC)


class SkippedImageWarning(UserWarning):
    """An image found in a folder or by a glob could not be read and was skipped."""


@dataclass
class Frame:
    """One image to run: decoded RGB pixels plus where they came from.

    Attributes:
        image: ``np.ndarray[h, w, 3]`` uint8 RGB as decoded (possibly DCT-reduced, see ``scale``).
        orig_size: ``(H, W)`` of the original image (as displayed, EXIF applied): boxes are
            reported in these pixels.
        source: file path / URL, ``'<array N>'`` for in-memory images.
        path: the file path or URL (``None`` for arrays); used to re-read a reduced image for plots.
        frame: frame index within a video, else ``None``.
        fps: the video's frame rate (``None`` for still images).
    """

    image: np.ndarray
    orig_size: tuple[int, int]
    source: str
    path: str | None = None
    frame: int | None = None
    fps: float | None = None

    @property
    def reduced(self) -> bool:
        """True when ``image`` is smaller than the original (DCT-scaled decode of a huge JPEG)."""
        return tuple(self.image.shape[:2]) != tuple(self.orig_size)


@dataclass
class SourceStats:
    """Counts of an expansion: files found, skipped (with reasons) and videos."""

    images: int = 0
    videos: int = 0
    frames: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def is_video(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has a video file extension (:data:`VIDEO_EXTENSIONS`)."""
    return os.fspath(path).lower().endswith(VIDEO_EXTENSIONS)


def _is_image_name(name: str) -> bool:
    from ..data.io import IMAGE_EXTENSIONS

    return name.lower().endswith(IMAGE_EXTENSIONS)


def to_rgb_uint8(image: Any) -> np.ndarray:
    """Any in-memory image (see the module docstring) -> C-contiguous ``ndarray[H, W, 3]`` uint8 RGB."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None  # type: ignore[assignment]
    if Image is not None and isinstance(image, Image.Image):
        from PIL import ImageOps

        from ..data.io import _pil_to_rgb

        return _pil_to_rgb(ImageOps.exif_transpose(image))
    if hasattr(image, "detach") and hasattr(image, "permute"):  # torch.Tensor
        t = image.detach().cpu()
        if t.dim() == 3 and t.shape[0] in (1, 3, 4):
            t = t.permute(1, 2, 0)  # tensors are channels first (the ssdkit convention), even [3, H, 3]
        image = t.numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise DataError(f"expected an image [H, W], [H, W, 3|4] or [3, H, W], got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DataError(f"empty image of shape {arr.shape}")
    arr = arr[:, :, :3] if arr.shape[2] == 4 else arr
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        arr = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    else:
        raise DataError(f"unsupported image dtype {arr.dtype}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def load_image_file(path: str, min_size: tuple[int, int] | None = None) -> Frame:
    """Read one image file or URL; huge JPEGs are DCT-reduced while staying >= ``min_size`` ``(H, W)``.

    Raises :class:`~ssdkit.errors.DataError` (missing, truncated or undecodable file).
    """
    from ..data.io import check_integrity, decode_image, probe_image, read_bytes, sniff_format

    try:
        data = read_bytes(path)
    except (FileNotFoundError, IsADirectoryError):
        raise DataError(f"{path}: image file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    if min_size is not None and sniff_format(data) == "jpeg":
        dims = _jpeg_size(data)
        # the orientation is unknown here: the smaller side must allow a 2x reduction either way
        if dims is not None and min(dims) // 2 >= max(min_size):
            reduced = _decode_reduced(data, path, min_size, probe_image, check_integrity)
            if reduced is not None:
                return reduced
    img = decode_image(data, path)
    return Frame(img, (int(img.shape[0]), int(img.shape[1])), path, path)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` from a JPEG's start-of-frame segment (a few microseconds; no decoding)."""
    n, i = len(data), 2
    while i + 9 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF_MARKERS:
            return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
        if marker in (0xDA, 0xD9):
            return None
        i += 2 + length
    return None


def _decode_reduced(data: bytes, path: str, min_size: tuple[int, int], probe: Any, check: Any) -> Frame | None:
    import cv2

    info = probe(data, path)
    if info.mode not in ("RGB", "L") or check(data, "jpeg"):
        return None  # CMYK/YCCK or damaged files take the full decoder (it explains the damage)
    factor = 1
    for f in (2, 4, 8):
        if info.height // f >= min_size[0] and info.width // f >= min_size[1]:
            factor = f
    if factor == 1:
        return None
    flag = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if img is None or img.ndim != 3:
        return None
    return Frame(np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)), (info.height, info.width), path, path)


def iter_frames(path: str, stats: SourceStats | None = None) -> Iterator[Frame]:
    """Frames of a video file as RGB :class:`Frame` s (OpenCV decoding). Raises ``DataError`` when the
    file cannot be opened or holds no frame."""
    import cv2

    if not os.path.isfile(path):
        raise DataError(f"{path}: video file not found")
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise DataError(f"{path}: cannot open the video (unsupported codec or not a video)")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) or None
        i = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            if stats is not None:
                stats.frames += 1
            yield Frame(rgb, (int(rgb.shape[0]), int(rgb.shape[1])), path, path, frame=i, fps=fps)
            i += 1
        if i == 0:
            raise DataError(f"{path}: the video holds no readable frame")
    finally:
        cap.release()


def video_info(path: str) -> dict[str, Any]:
    """``{'frames', 'fps', 'width', 'height'}`` from the container header (frames may be an estimate)."""
    import cv2

    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise DataError(f"{path}: cannot open the video (unsupported codec or not a video)")
        return {
            "frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0),
            "fps": float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
        }
    finally:
        cap.release()


# ------------------------------------------------------------------------------------ expansion
@dataclass(frozen=True)
class Entry:
    """One expanded source: ``kind`` ``'array' | 'image' | 'video'``, the array or path, and whether
    the user named it (errors raise) or a folder/glob found it (errors skip)."""

    kind: str
    value: Any
    explicit: bool


def _is_array(x: Any) -> bool:
    if isinstance(x, np.ndarray) or (hasattr(x, "detach") and hasattr(x, "permute")):
        return True
    try:
        from PIL import Image

        return isinstance(x, Image.Image)
    except ImportError:  # pragma: no cover
        return False


def _listing(paths: Iterable[str]) -> list[Entry]:
    out = []
    for p in sorted(paths):
        if is_video(p):
            out.append(Entry("video", p, False))
        elif _is_image_name(p):
            out.append(Entry("image", p, False))
    return out


def _unsupported(x: Any) -> DataError:
    return DataError(f"cannot predict on a {type(x).__name__}: give images, paths, a folder, a glob or a video")


def expand_sources(sources: Any, recursive: bool = False) -> list[Entry]:
    """Expand sources (see the module docstring) into ordered entries without reading any pixels.

    Raises ``FileNotFoundError`` for a path that is neither a file, a folder, a URL nor a glob with
    matches, and :class:`~ssdkit.errors.DataError` when a folder or glob holds no image or video.
    """
    from ..data.io import is_url

    items: Sequence[Any]
    if isinstance(sources, Entry):
        return [sources]
    if isinstance(sources, list) and sources and all(isinstance(e, Entry) for e in sources):
        return list(sources)  # already expanded
    if isinstance(sources, str | os.PathLike) or _is_array(sources):
        items = [sources]
    else:
        try:
            items = list(sources)
        except TypeError:
            raise _unsupported(sources) from None
    entries: list[Entry] = []
    for src in items:
        if _is_array(src):
            if getattr(src, "ndim", 0) == 4:  # a batch [B, H, W, C] array or [B, C, H, W] tensor
                entries.extend(Entry("array", one, True) for one in src)
            else:
                entries.append(Entry("array", src, True))
            continue
        if not isinstance(src, str | os.PathLike):
            raise _unsupported(src)
        s = os.fspath(src)
        if is_url(s):
            entries.append(Entry("video" if is_video(s) else "image", s, True))
        elif os.path.isdir(s):
            root = Path(s)
            found = (root.rglob("*") if recursive else root.iterdir())
            listed = _listing(str(p) for p in found if p.is_file())
            if not listed:
                raise DataError(f"{s}: the folder holds no image or video files (.jpg, .png, .mp4...)")
            entries.extend(listed)
        elif os.path.isfile(s):
            entries.append(Entry("video" if is_video(s) else "image", s, True))
        elif any(c in s for c in _GLOB_CHARS):
            listed = _listing(p for p in glob.glob(s, recursive=True) if os.path.isfile(p))
            if not listed:
                raise DataError(f"no images matched {s!r}")
            entries.extend(listed)
        else:
            raise FileNotFoundError(f"no such image, video, folder or glob match: {s}")
    if not entries:
        raise DataError("no images given")
    return entries


def iter_entries(entries: Sequence[Entry], min_size: tuple[int, int] | None, stats: SourceStats) -> Iterator[Frame]:
    """Decode entries in order: images one by one, videos frame by frame; applies the error policy."""
    n_arr = 0
    for e in entries:
        if e.kind == "array":
            img = to_rgb_uint8(e.value)
            stats.images += 1
            yield Frame(img, (int(img.shape[0]), int(img.shape[1])), f"<array {n_arr}>")
            n_arr += 1
        elif e.kind == "video":
            try:
                stats.videos += 1
                yield from iter_frames(e.value, stats)
            except DataError as exc:
                if e.explicit:
                    raise
                _skip(stats, e.value, str(exc))
        else:
            try:
                fr = load_image_file(e.value, min_size)
            except DataError as exc:
                if e.explicit:
                    raise
                _skip(stats, e.value, str(exc))
                continue
            stats.images += 1
            yield fr


def _skip(stats: SourceStats, path: str, reason: str) -> None:
    stats.skipped.append((path, reason))
    warnings.warn(f"skipped {reason}", SkippedImageWarning, stacklevel=3)
