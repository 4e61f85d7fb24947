"""Files and images from local paths or fsspec URLs, decoded to RGB ``uint8``.

Paths are plain local paths or URLs: ``file://``, ``memory://`` (tests), and any fsspec backend
installed (``s3://`` needs ``pip install ssdkit[s3]`` (s3fs), ``gs://`` needs ``ssdkit[gcs]``
(gcsfs)); a missing backend raises :class:`~ssdkit.errors.DataError` saying what to install.
``file://`` URLs are turned into local paths (the fast path).

Image normalisation (:func:`decode_image`): every image comes back as a C-contiguous
``np.ndarray[H, W, 3]`` ``uint8`` in RGB order, whatever the file holds:

- grayscale (``L``/``LA``) -> the gray value in all three channels;
- alpha (``RGBA``, ``LA``, palette with transparency) -> alpha dropped (not composited), as
  OpenCV, Pillow's ``convert('RGB')`` and torchvision do, so training and inference agree;
- palette (``P``) -> expanded to its RGB colours;
- CMYK / YCCK JPEG (including Adobe-inverted) -> RGB;
- 16-bit (PNG, TIFF) -> the high byte (``v >> 8``, as OpenCV), so the full range maps to 0..255
  (Pillow's ``I;16 -> L`` conversion clips instead and turns most 16-bit images white);
- EXIF orientation (JPEG, PNG ``eXIf``) applied, so ``(H, W)`` is the size as displayed.

Decoding uses OpenCV (libjpeg-turbo, fastest here) and falls back to Pillow for what OpenCV
cannot read. Corruption is detected before decoding: a JPEG without its end-of-image marker after
the scan, a PNG without its ``IEND`` chunk, and unknown file signatures raise ``DataError`` naming
the file (OpenCV would otherwise return a partly grey image from a truncated JPEG in some versions).
"""

from __future__ import annotations

import io
import os
import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageInfo",
    "is_url",
    "join",
    "read_bytes",
    "read_text",
    "exists",
    "list_files",
    "stat",
    "write_bytes",
    "sniff_format",
    "check_integrity",
    "decode_image",
    "read_image",
    "probe_image",
    "read_many",
]

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm",
)

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
# fsspec protocol -> the pip extra / package that provides it
_BACKENDS = {
    "s3": ("s3fs", "ssdkit[s3]"), "s3a": ("s3fs", "ssdkit[s3]"),
    "gs": ("gcsfs", "ssdkit[gcs]"), "gcs": ("gcsfs", "ssdkit[gcs]"),
    "az": ("adlfs", "adlfs"), "abfs": ("adlfs", "adlfs"), "abfss": ("adlfs", "adlfs"),
    "hf": ("huggingface_hub", "huggingface_hub"),
}


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` paths other than ``file://`` (those are treated as local)."""
    s = os.fspath(path)
    return bool(_URL.match(s)) and not s.startswith("file://")


def _local(path: str | os.PathLike[str]) -> str:
    s = os.fspath(path)
    return s[len("file://"):] if s.startswith("file://") else s


def _fs(path: str) -> tuple[Any, str]:
    """``(filesystem, path inside it)`` for a URL, with an install hint when the backend is missing."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(path)
    except ImportError as exc:
        proto = path.split("://", 1)[0].lower()
        pkg, extra = _BACKENDS.get(proto, (proto + "fs", proto + "fs"))
        raise DataError(
            f"{path}: reading {proto}:// URLs needs the {pkg!r} package; install it with "
            f"`pip install {extra}` ({exc})"
        ) from None
    except ValueError as exc:
        raise DataError(f"{path}: unsupported URL ({exc})") from None


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """Join path parts; works for local paths and URLs (``/``-separated). Absolute parts win."""
    out = os.fspath(base)
    for p in parts:
        p = os.fspath(p)
        if not p:
            continue
        if _URL.match(p) or os.path.isabs(p):
            out = p
        elif _URL.match(out):
            out = out.rstrip("/") + "/" + p.lstrip("/")
        else:
            out = os.path.join(out, p)
    return out


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a file. Raises ``FileNotFoundError`` (naming the path) when it does not exist."""
    s = os.fspath(path)
    if not is_url(s):
        with open(_local(s), "rb") as f:
            return f.read()
    fs, p = _fs(s)
    try:
        return fs.cat_file(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {s}") from None


def read_text(path: str | os.PathLike[str]) -> str:
    """A text file decoded as UTF-8 (a byte-order mark is dropped; invalid bytes raise ``DataError``)."""
    data = read_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{os.fspath(path)}: not UTF-8 text ({exc}); re-save the file as UTF-8") from None


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a file (creating parent folders); URLs go through fsspec."""
    s = os.fspath(path)
    if is_url(s):
        fs, p = _fs(s)
        fs.pipe_file(p, data)
        return
    s = _local(s)
    os.makedirs(os.path.dirname(os.path.abspath(s)), exist_ok=True)
    with open(s, "wb") as f:
        f.write(data)


def exists(path: str | os.PathLike[str]) -> bool:
    s = os.fspath(path)
    if not is_url(s):
        return os.path.exists(_local(s))
    fs, p = _fs(s)
    return bool(fs.exists(p))


def isdir(path: str | os.PathLike[str]) -> bool:
    s = os.fspath(path)
    if not is_url(s):
        return os.path.isdir(_local(s))
    fs, p = _fs(s)
    return bool(fs.isdir(p))


def stat(path: str | os.PathLike[str]) -> tuple[int, float]:
    """``(size in bytes, modification time)``; the time is 0 where the backend has none."""
    s = os.fspath(path)
    if not is_url(s):
        st = os.stat(_local(s))
        return st.st_size, st.st_mtime_ns / 1e9
    fs, p = _fs(s)
    info = fs.info(p)
    return int(info.get("size") or 0), _mtime(info)


def _mtime(info: dict[str, Any]) -> float:
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        v = info.get(key)
        if v is None:
            continue
        if hasattr(v, "timestamp"):
            return float(v.timestamp())
        try:
            return float(v)
        except (TypeError, ValueError):
            continue
    return 0.0


def list_files(folder: str | os.PathLike[str], recursive: bool = False) -> dict[str, tuple[int, float]]:
    """Files under ``folder``: ``{relative path with '/' separators: (size, mtime)}``.

    One directory walk (one paged listing for buckets), so existence checks of many images cost
    one call instead of one per image. A missing folder gives ``{}``.
    """
    s = os.fspath(folder)
    out: dict[str, tuple[int, float]] = {}
    if not is_url(s):
        base = _local(s)
        if not os.path.isdir(base):
            return out
        stack = [""]
        while stack:
            rel = stack.pop()
            with os.scandir(os.path.join(base, rel)) as it:
                for e in it:
                    r = f"{rel}/{e.name}" if rel else e.name
                    if e.is_dir():
                        if recursive:
                            stack.append(r)
                    elif e.is_file():
                        st = e.stat()
                        out[r] = (st.st_size, st.st_mtime_ns / 1e9)
        return out
    fs, p = _fs(s)
    p = p.rstrip("/")
    try:
        found = fs.find(p, detail=True, maxdepth=None if recursive else 1)
    except FileNotFoundError:
        return out
    for name, info in found.items():
        if info.get("type", "file") != "file":
            continue
        rel = name[len(p):].lstrip("/") if name.startswith(p) else name
        out[rel] = (int(info.get("size") or 0), _mtime(info))
    return out


# ------------------------------------------------------------------------------------ image formats
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)


def sniff_format(data: bytes) -> str | None:
    """Image format from the file signature (``'jpeg'``, ``'png'``, ``'webp'``, ...), or ``None``."""
    for sig, fmt in _SIGNATURES:
        if data.startswith(sig):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if len(data) > 2 and data[:1] == b"P" and data[1:2] in b"123456" and data[2:3] in b" \t\r\n":
        return "pnm"
    return None


@dataclass(frozen=True)
class ImageInfo:
    """What a header read tells about an image: size as displayed (EXIF orientation applied)."""

    height: int
    width: int
    format: str  # 'jpeg', 'png', ...
    mode: str  # Pillow mode of the file: 'RGB', 'L', 'P', 'RGBA', 'CMYK', 'I;16', ...
    orientation: int  # EXIF orientation 1..8 (1 = none)
    n_bytes: int


def _jpeg_scan(data: bytes) -> tuple[int, bool]:
    """Walk the JPEG segments: ``(offset of the first scan, whether an EOI marker follows it)``.

    Thumbnails live inside APP1 and are skipped by the segment lengths, so the EOI found belongs
    to the main image. Returns ``(-1, False)`` for a broken segment structure.
    """
    n = len(data)
    i = 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            return -1, False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if marker == 0xDA:  # start of scan: entropy-coded data follows; EOI must come after it
            return i, data.find(b"\xff\xd9", i + 2 + length) >= 0
        if marker == 0xD9:
            return -1, False
        i += 2 + length
    return -1, False


def check_integrity(data: bytes, fmt: str | None = None) -> str | None:
    """A description of a structural defect (truncation) or ``None``; JPEG and PNG are checked."""
    fmt = fmt or sniff_format(data)
    if fmt == "jpeg":
        if data.rstrip(b"\x00")[-2:] == b"\xff\xd9":
            return None
        start, complete = _jpeg_scan(data)
        if start < 0:
            return "broken JPEG (no image data found: the file is cut short or corrupt)"
        if not complete:
            return "truncated JPEG (no end-of-image marker after the image data: the file is cut short)"
    elif fmt == "png":
        if data[-12:-8] == b"\x00\x00\x00\x00" and data[-8:-4] == b"IEND":
            return None
        if data.rfind(b"IEND") < 0:
            return "truncated PNG (no IEND chunk: the file is cut short)"
    return None


def _bad(name: str, what: str) -> DataError:
    return DataError(
        f"{name}: {what}; replace or re-export the file, or drop it with data.policy.bad_image=skip"
    )


def _checked_format(data: bytes, name: str) -> str:
    """The format of ``data``; ``DataError`` for empty files, unknown signatures and truncated JPEG/PNG."""
    fmt = sniff_format(data)
    if fmt is None:
        if not data:
            raise _bad(name, "empty file (0 bytes)")
        raise _bad(name, f"not an image (unknown file signature {bytes(data[:8])!r})")
    problem = check_integrity(data, fmt)
    if problem:
        raise _bad(name, problem)
    return fmt


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode an encoded image to ``np.ndarray[H, W, 3]`` ``uint8`` RGB (see the module notes).

    Raises :class:`~ssdkit.errors.DataError` naming ``name`` for non-image data, truncated JPEG/PNG
    files and anything no decoder can read.
    """
    _checked_format(data, name)
    import cv2

    flag = getattr(cv2, "IMREAD_COLOR_RGB", None)
    buf = np.frombuffer(data, np.uint8)
    img = cv2.imdecode(buf, flag if flag is not None else cv2.IMREAD_COLOR)
    if img is not None:
        if flag is None:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        if img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8:
            return np.ascontiguousarray(img)
    return _decode_pil(data, name)


def _decode_pil(data: bytes, name: str) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return _pil_to_rgb(ImageOps.exif_transpose(im))
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise _bad(name, f"cannot decode image ({exc})") from None


def _pil_to_rgb(im: Any) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im)
        a = (np.clip(a.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))
    if mode == "F":
        a = np.clip(np.asarray(im, dtype=np.float32), 0, 255).round().astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read and decode an image file or URL to ``np.ndarray[H, W, 3]`` ``uint8`` RGB."""
    s = os.fspath(path)
    try:
        data = read_bytes(s)
    except FileNotFoundError:
        raise DataError(f"{s}: image file not found; fix the path or drop it with data.policy.bad_image=skip") from None
    return decode_image(data, s)


def probe_image(data: bytes, name: str = "<bytes>") -> ImageInfo:
    """Header-level check: format, displayed size and mode without decoding the pixels.

    Raises ``DataError`` for non-images and truncated JPEG/PNG files (the same errors as
    :func:`decode_image`, which additionally catches corruption inside the compressed data).
    """
    from PIL import Image, UnidentifiedImageError

    fmt = _checked_format(data, name)
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            mode = im.mode
            try:
                orientation = int(im.getexif().get(0x0112, 1) or 1)
            except Exception:  # malformed EXIF: decoders ignore it too
                orientation = 1
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise _bad(name, f"cannot read the image header ({exc})") from None
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return ImageInfo(height=int(h), width=int(w), format=fmt, mode=mode, orientation=orientation, n_bytes=len(data))


def read_many(paths: list[str]) -> list[bytes | BaseException]:
    """The bytes of many files (``FileNotFoundError``/``OSError`` instances where a read fails), in order.

    Reads in threads when there are many files or they are URLs (bucket latency overlaps).
    """

    def one(p: str) -> bytes | BaseException:
        try:
            return read_bytes(p)
        except (OSError, DataError) as exc:
            return exc

    if len(paths) < 64 and not any(is_url(p) for p in paths[:1]):
        return [one(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=32 if paths and is_url(paths[0]) else 8) as pool:
        return list(pool.map(one, paths))
