"""Image reading: normalisation to RGB uint8 and the broken files a new user meets."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ssdkit.data import CSVDataset, decode_image
from ssdkit.data.io import probe_image
from ssdkit.errors import DataError

# a 40x60 image: red top-left, green top-right, blue bottom-right, black bottom-left
ARR = np.zeros((40, 60, 3), np.uint8)
ARR[:20, :30] = (255, 0, 0)
ARR[:20, 30:] = (0, 255, 0)
ARR[20:, 30:] = (0, 0, 255)


def _pil_bytes(im: Image.Image, fmt: str, **kw: object) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def _close(a: np.ndarray, b: np.ndarray, tol: int = 12) -> bool:
    """Same shape, colours within ``tol`` away from edges (JPEG rings at sharp colour edges)."""
    if a.shape != b.shape:
        return False
    h, w = a.shape[:2]
    inner = (slice(h // 8, h - h // 8), slice(w // 8, w - w // 8))
    diff = np.abs(a.astype(int) - b.astype(int))
    centres = [diff[y, x].max() for y in (h // 4, 3 * h // 4) for x in (w // 4, 3 * w // 4)]
    return max(centres) <= tol and diff[inner].mean() <= 12


def test_rgb_jpeg_and_png() -> None:
    out = decode_image(_pil_bytes(Image.fromarray(ARR), "PNG"))
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, ARR)
    assert _close(decode_image(_pil_bytes(Image.fromarray(ARR), "JPEG", quality=95)), ARR, 40)


def test_grayscale_rgba_palette_cmyk() -> None:
    gray = decode_image(_pil_bytes(Image.fromarray(ARR).convert("L"), "PNG"))
    assert gray.shape == (40, 60, 3) and (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    rgba = Image.fromarray(np.dstack([ARR, np.full((40, 60), 7, np.uint8)]), "RGBA")
    np.testing.assert_array_equal(decode_image(_pil_bytes(rgba, "PNG")), ARR)  # alpha dropped, not composited
    pal = Image.fromarray(ARR).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    np.testing.assert_array_equal(decode_image(_pil_bytes(pal, "PNG")), ARR)
    np.testing.assert_array_equal(decode_image(_pil_bytes(pal, "PNG", transparency=0)), ARR)
    cmyk = _pil_bytes(Image.fromarray(ARR).convert("CMYK"), "JPEG", quality=95)
    assert probe_image(cmyk).mode == "CMYK"
    assert _close(decode_image(cmyk), ARR, 40)
    gif = decode_image(_pil_bytes(Image.fromarray(ARR), "GIF"))
    assert _close(gif, ARR, 2)


def test_16bit_png_maps_full_range() -> None:
    a16 = np.zeros((40, 60), np.uint16)
    a16[:, :20], a16[:, 20:40], a16[:, 40:] = 0, 32768, 65535
    _ok, enc = cv2.imencode(".png", a16)
    data = enc.tobytes()
    assert probe_image(data).mode.startswith("I")
    out = decode_image(data)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 30].tolist() == [128] * 3 and out[0, 50].tolist() == [255] * 3
    rgb16 = np.dstack([a16, a16, a16])
    _ok, enc = cv2.imencode(".png", rgb16)
    assert decode_image(enc.tobytes())[0, 50].tolist() == [255] * 3


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_applied(fmt: str) -> None:
    ex = Image.Exif()
    ex[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _pil_bytes(Image.fromarray(ARR), fmt, exif=ex, **({"quality": 95} if fmt == "JPEG" else {}))
    info = probe_image(data)
    assert (info.height, info.width, info.orientation) == (60, 40, 6)
    out = decode_image(data)
    assert out.shape == (60, 40, 3)
    assert _close(out, np.ascontiguousarray(np.rot90(ARR, -1)), 40)


def test_truncated_jpeg_non_image_and_empty_file() -> None:
    _ok, enc = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = enc.tobytes()
    with pytest.raises(DataError, match="truncated JPEG"):
        decode_image(data[: len(data) // 2], "cut.jpg")
    with pytest.raises(DataError, match="truncated JPEG"):
        decode_image(data[:-2], "cut.jpg")
    with pytest.raises(DataError, match=r"notes\.jpg: not an image"):
        decode_image(b"these are my notes, not a picture", "notes.jpg")
    with pytest.raises(DataError, match="empty file"):
        decode_image(b"", "empty.png")
    png = _pil_bytes(Image.fromarray(ARR), "PNG")
    with pytest.raises(DataError, match="truncated PNG"):
        decode_image(png[:-30], "cut.png")
    # trailing bytes after the end-of-image marker are fine
    assert decode_image(data + b"\x00\x00garbage").shape == (64, 64, 3)


def _dataset_with(tmp_path: Path, files: dict[str, bytes], **kw: object) -> CSVDataset:
    rows = ["filename,xmin,ymin,xmax,ymax,class"]
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        rows.append(f"{name},0,0,1,1,thing")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return CSVDataset(tmp_path, tmp_path / "labels.csv", verbose=False, **kw)


def test_broken_files_error_at_build_or_counted_skip(tmp_path: Path) -> None:
    _ok, good = cv2.imencode(".jpg", np.full((32, 32, 3), 80, np.uint8))
    _ok, tiny = cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))
    files = {
        "good.jpg": good.tobytes(),
        "cut.jpg": good.tobytes()[:200],
        "text.jpg": b"not an image at all",
        "tiny.png": tiny.tobytes(),
    }
    with pytest.raises(DataError) as ei:
        _dataset_with(tmp_path, files)
    msg = str(ei.value)
    assert "cut.jpg" in msg and "text.jpg" in msg and "tiny.png" in msg and "1x1" in msg and "bad_image=skip" in msg
    ds = _dataset_with(tmp_path, files, policy={"bad_image": "skip"})
    assert ds.image_ids == ["good"]
    assert ds.report.count("corrupt_image", "dropped image") == 2
    assert ds.report.count("small_image", "dropped image") == 1
    (tmp_path / "missing.csv").write_text("filename,xmin,ymin,xmax,ymax,class\nnope.jpg,0,0,1,1,a\n")
    with pytest.raises(DataError, match=r"nope\.jpg: image file not found"):
        CSVDataset(tmp_path, tmp_path / "missing.csv", check_images="exists", verbose=False)
    # at check_images='none' the broken file is only found when loaded: a DataError naming it
    ds = _dataset_with(tmp_path, {"cut.jpg": good.tobytes()[:200]}, check_images="none")
    with pytest.raises(DataError, match=r"cut\.jpg: (truncated|broken) JPEG"):
        ds[0]
    # ... or, with bad_image=skip, a warning and the next image
    ds = _dataset_with(tmp_path, {"a_cut.jpg": good.tobytes()[:200], "b_good.jpg": good.tobytes()},
                       check_images="none", policy={"bad_image": "skip"})
    with pytest.warns(UserWarning, match="a_cut.jpg"):
        _img, t = ds[0]
    assert t["image_id"] == "b_good"


def test_decode_level_finds_corruption_inside_the_data(tmp_path: Path) -> None:
    _ok, good = cv2.imencode(".jpg", np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = bytearray(good.tobytes())
    sos = data.find(b"\xff\xda")
    data[sos + 2:sos + 4] = b"\xff\xff"  # broken scan header; the end marker is still there
    ds = _dataset_with(tmp_path, {"bad.jpg": bytes(data)}, check_images="decode", policy={"bad_image": "skip"})
    assert len(ds) == 0 and ds.report.count("corrupt_image") == 1


def _one_colour_png(h: int, w: int, rgb: tuple[int, int, int]) -> bytes:
    """A real PNG of one colour, written chunk by chunk (fast even at 8000x8000)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * w
    z = zlib.compressobj(1)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_8000x8000_image_loads(tmp_path: Path) -> None:
    data = _one_colour_png(8000, 8000, (10, 200, 30))
    assert len(data) < 2_000_000  # one colour: small on disk
    (tmp_path / "big.png").write_bytes(data)
    (tmp_path / "l.csv").write_text("filename,xmin,ymin,xmax,ymax,class\nbig.png,100,200,7900,7999,thing\n")
    ds = CSVDataset(tmp_path, tmp_path / "l.csv", verbose=False)
    assert ds.report.sizes == [(8000, 8000)]
    img, t = ds[0]
    assert img.shape == (3, 8000, 8000) and img[:, 4000, 4000].tolist() == [10, 200, 30]
    assert t["boxes"].tolist() == [[100, 200, 7900, 7999]]
    with pytest.raises(DataError, match="max_image_pixels"):
        CSVDataset(tmp_path, tmp_path / "l.csv", verbose=False, policy={"max_image_pixels": 10_000_000})


def test_report_lists_converted_modes(tmp_path: Path) -> None:
    ds = _dataset_with(tmp_path, {"g.png": _pil_bytes(Image.fromarray(ARR).convert("L"), "PNG"),
                                  "c.png": _pil_bytes(Image.fromarray(ARR), "PNG")})
    assert ds.report.modes == {"L": 1, "RGB": 1}
    assert ds.report.count("converted") == 1
    img, _ = ds[0]
    assert img.shape == (3, 40, 60)
