"""Predictor: odd images (grayscale, RGBA, 16-bit, EXIF, 1x1, 8000x8000), sources, backends, Detections."""

from __future__ import annotations

import io
import json
import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import ssdkit
from ssdkit.deploy.export import compare_detections
from ssdkit.deploy.predictor import Detections, Predictor
from ssdkit.deploy.sources import SkippedImageWarning
from ssdkit.deploy.synthetic import realistic_ssd_, synthetic_images
from ssdkit.errors import DataError
from ssdkit.models import build_model

SIZE = (96, 128)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return realistic_ssd_(build_model("ssd7", 3, image_size=SIZE, class_names=["red", "green", "blue"]),
                          background_logit=6.0)


@pytest.fixture(scope="module")
def predictor(model) -> Predictor:
    return Predictor(model, batch_size=4, confidence_thresh=0.2)


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return synthetic_images(1, (150, 200), seed=3)[0]


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, "PNG") if mode else Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_detections_are_in_original_pixels_and_match_model_predict(model, predictor, rgb):
    """Predictor == SSD.predict with the evaluation preprocessing's inverse (the evaluate pipeline)."""
    from ssdkit.data import eval_preprocessing

    det = predictor.predict(rgb)[0]
    assert det.image_size == (150, 200) and len(det) > 0
    assert det.boxes.dtype == np.float32 and det.scores.dtype == np.float32 and det.labels.dtype == np.int64
    assert (det.boxes[:, [0, 2]] <= 200).all() and (det.boxes[:, [1, 3]] <= 150).all() and (det.boxes >= 0).all()
    assert np.all(np.diff(det.scores) <= 0) and (det.scores > 0.2).all()
    img, tgt = eval_preprocessing(SIZE)(rgb)
    ref = model.predict(torch.from_numpy(img).permute(2, 0, 1), confidence_thresh=0.2,
                        inverse=torch.as_tensor(tgt["inverse"]), orig_size=[(150, 200)])[0]
    m, _, _, _, problems = compare_detections(ref.numpy(), det.to_tensor().numpy(), 0.2, 200)
    assert not problems and m == len(ref) == len(det)


def test_torch_backend_runs_a_fused_channels_last_copy_and_leaves_the_model_alone(model, predictor):
    net = predictor._net
    assert net is not model and net.fused and not model.fused
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and net.input_norm.channels_last
    assert Predictor(net)._net is net  # an already fused model is used as it is


def test_onnxruntime_threads_spin_at_batch_1_only_unless_told(model):
    def spins(p: Predictor) -> str:
        return p._runner.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")

    assert spins(Predictor(model, backend="onnxruntime", batch_size=1)) == "1"
    assert spins(Predictor(model, backend="onnxruntime", batch_size=4)) == "0"
    assert spins(Predictor(model, backend="onnxruntime", batch_size=4, spinning=True)) == "1"
    assert spins(Predictor(model, backend="onnxruntime", batch_size=1, spinning=False)) == "0"


def test_onnxruntime_backend_matches_torch(model, predictor, rgb, tmp_path):
    imgs = [rgb, synthetic_images(1, (300, 120), seed=5)[0]]
    ref = predictor.predict(imgs)
    ort_pred = Predictor(model, backend="onnxruntime", batch_size=4, confidence_thresh=0.2)
    got = ort_pred.predict(imgs)
    for r, g in zip(ref, got):
        m, bl, _, _, problems = compare_detections(r.to_tensor().numpy(), g.to_tensor().numpy(), 0.2, 200)
        assert not problems and m + bl == len(r)
    # an --nms export file alone is enough: the model description comes from its metadata
    from ssdkit.deploy.export import export_model

    export_model(model, tmp_path / "m.onnx", outputs="nms", dynamic_batch=True, confidence_thresh=0.2, verify=False)
    from_file = Predictor(str(tmp_path / "m.onnx"), confidence_thresh=0.2)
    assert from_file.backend == "onnxruntime" and from_file.class_names == ["red", "green", "blue"]
    for r, g in zip(ref, from_file.predict(imgs)):
        m, bl, _, _, problems = compare_detections(r.to_tensor().numpy(), g.to_tensor().numpy(), 0.2, 200)
        assert not problems and m + bl == len(r)
    # an export of another model is refused up front, and a graph's baked-in threshold is reported
    from ssdkit.errors import ExportError

    with pytest.warns(UserWarning, match="keeps only scores > 0.2"):
        Predictor(model, backend="onnxruntime", onnx=str(tmp_path / "m.onnx"), confidence_thresh=0.1)
    other = build_model("ssd7", 3, image_size=(64, 96))
    export_model(other, tmp_path / "other.onnx", verify=False)
    with pytest.raises(ExportError, match="not an export of this model"):
        Predictor(model, backend="onnxruntime", onnx=str(tmp_path / "other.onnx"))


def test_odd_images(predictor, rgb, tmp_path):
    """Grayscale, RGBA, 16-bit and palette PNGs, an EXIF-rotated JPEG, a 1x1 image: all predicted,
    sizes as displayed."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    files = {
        "gray.png": _png(gray),
        "rgba.png": _png(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])),
        "g16.png": cv2.imencode(".png", gray.astype(np.uint16) * 257)[1].tobytes(),
        "tiny.png": _png(np.full((1, 1, 3), 200, np.uint8)),
        "pal.png": _png(np.asarray(Image.fromarray(rgb).convert("P"))),
    }
    ex = Image.Exif()
    ex[0x0112] = 6  # displayed rotated 90 degrees clockwise
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", exif=ex.tobytes(), quality=95)
    files["exif.jpg"] = buf.getvalue()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    dets = {d.source.split("/")[-1]: d for d in predictor.predict(str(tmp_path))}
    assert set(dets) == set(files)
    assert dets["exif.jpg"].image_size == (200, 150)  # EXIF orientation applied
    assert dets["tiny.png"].image_size == (1, 1)
    assert dets["g16.png"].image_size == (150, 200)
    for d in dets.values():
        h, w = d.image_size
        assert (d.boxes[:, [0, 2]] <= w).all() and (d.boxes[:, [1, 3]] <= h).all()
    # the gray PNG and its 16-bit version decode to the same pixels -> same detections
    _assert_same_detections(dets["gray.png"], dets["g16.png"])
    # EXIF: the same detections as on the explicitly rotated image
    flags = cv2.IMREAD_IGNORE_ORIENTATION | cv2.IMREAD_COLOR_RGB
    stored = cv2.imdecode(np.frombuffer(files["exif.jpg"], np.uint8), flags)
    rot = predictor.predict(np.ascontiguousarray(np.rot90(stored, -1)))[0]
    _assert_same_detections(rot, dets["exif.jpg"])


def _assert_same_detections(a: Detections, b: Detections) -> None:
    """Same detection sets; the order of near-equal scores may differ between a batch of 4 and a
    batch of 1 (float summation order), so rows are matched, not compared by position."""
    assert len(a) == len(b) > 0
    matched, borderline, box_err, _, problems = compare_detections(
        a.to_tensor().numpy(), b.to_tensor().numpy(), 0.2, 200)
    assert not problems and matched == len(a) and borderline == 0 and box_err < 1e-4


def test_huge_jpeg_is_decoded_reduced_and_mapped_to_full_pixels(predictor, tmp_path):
    h = w = 8000
    yy, xx = np.mgrid[0:h:8, 0:w:8]
    small = np.dstack([(xx % 256), (yy % 256), ((xx + yy) % 256)]).astype(np.uint8)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    cv2.rectangle(big, (2000, 3000), (5000, 6000), (255, 0, 0), -1)
    path = tmp_path / "huge.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    del big
    from ssdkit.deploy.sources import load_image_file

    fr = load_image_file(str(path), SIZE)
    assert fr.orig_size == (8000, 8000) and fr.image.shape[:2] == (1000, 1000) and fr.reduced
    det = predictor.predict(str(path))[0]
    assert det.image_size == (8000, 8000) and det.image is None  # reduced pixels are not kept
    # the network sees exactly the reduced image: same detections as on it, boxes scaled by 8
    ref = predictor.predict(fr.image)[0]
    assert len(det) == len(ref) > 0
    np.testing.assert_allclose(det.boxes, ref.boxes * 8, rtol=1e-5, atol=1e-2)


def test_array_inputs(predictor, rgb):
    t = torch.from_numpy(rgb).permute(2, 0, 1)
    batch = np.stack([rgb, rgb])
    outs = predictor.predict([rgb, t, Image.fromarray(rgb), rgb.astype(np.float32), batch])
    assert len(outs) == 6 and [o.source for o in outs[:2]] == ["<array 0>", "<array 1>"]
    for o in outs[1:]:
        np.testing.assert_allclose(o.boxes, outs[0].boxes, atol=1e-4)
    with pytest.raises(DataError, match="shape"):
        predictor.predict(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(DataError, match="cannot predict on a dict"):
        predictor.predict([{"a": 1}])


def test_sources_policy(predictor, rgb, tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"ok{i}.jpg"), rgb)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "notes.txt").write_text("ignored: not an image extension")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        dets = predictor.predict(str(tmp_path))
    assert len(dets) == 3
    assert len(predictor.stats.skipped) == 1 and "broken.jpg" in predictor.stats.skipped[0][0]
    assert sum(issubclass(x.category, SkippedImageWarning) for x in w) == 1
    assert len(predictor.predict(str(tmp_path / "ok*.jpg"))) == 3  # glob
    with pytest.raises(DataError, match=r"broken\.jpg"):  # named explicitly: an error
        predictor.predict(str(tmp_path / "broken.jpg"))
    with pytest.raises(DataError, match="no images matched"):
        predictor.predict(str(tmp_path / "*.png"))
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        predictor.predict(str(tmp_path / "missing.jpg"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image"):
        predictor.predict(str(tmp_path / "empty"))


def test_prefetch_gives_the_same_results_and_stops_cleanly(model, rgb, tmp_path):
    import threading

    for i in range(7):
        cv2.imwrite(str(tmp_path / f"img{i}.jpg"), np.roll(rgb, 9 * i, axis=1))
    (tmp_path / "img9.jpg").write_bytes(b"not an image")
    ref = Predictor(model, batch_size=3, prefetch=False, confidence_thresh=0.2)
    pre = Predictor(model, batch_size=3, prefetch=True, confidence_thresh=0.2)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        a, b = ref.predict(str(tmp_path)), pre.predict(str(tmp_path))
    assert [d.source for d in a] == [d.source for d in b] and len(a) == 7
    assert all(np.array_equal(x.boxes, y.boxes) and np.array_equal(x.labels, y.labels) for x, y in zip(a, b))
    assert pre.stats.skipped == ref.stats.skipped and len(pre.stats.skipped) == 1
    assert sum(issubclass(x.category, SkippedImageWarning) for x in w) == 2  # one per predictor
    # stopping after the first batch ends the reader thread
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImageWarning)  # the thread may reach img9 meanwhile
        for d in pre.stream(str(tmp_path)):
            assert d.source.endswith("img0.jpg")
            break
    assert not any(t.name == "ssdkit-prefetch" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(DataError, match=r"img9\.jpg"):  # an explicitly named bad file still raises
        pre.predict([str(tmp_path / "img0.jpg"), str(tmp_path / "img9.jpg")])


def test_detections_api(predictor, rgb, tmp_path):
    path = tmp_path / "a.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    det = predictor.predict(str(path))[0]
    assert isinstance(det, Detections) and len(det) > 0
    d = json.loads(det.to_json())
    assert d["source"] == str(path) and d["image_size"] == [150, 200]
    assert set(d["timings"]) == {"preprocess_ms", "inference_ms", "postprocess_ms"}
    assert d["detections"][0]["class"] in ("red", "green", "blue") and len(d["detections"][0]["box"]) == 4
    assert det.names[0] == d["detections"][0]["class"]
    t = det.to_tensor()
    assert t.shape == (len(det), 6) and t.dtype == torch.float32
    canvas = det.plot(tmp_path / "plot.png")
    assert canvas.shape == (150, 200, 3) and (tmp_path / "plot.png").is_file()
    assert not np.array_equal(canvas, rgb)
    strong = det.filter(min_score=0.5, classes=["red"])
    assert (strong.scores >= 0.5).all() and (strong.labels == 1).all()
    tm = predictor.timings
    assert tm["images"] >= 1 and tm["total_ms"] > 0


def test_class_filter_and_validation(model, rgb):
    p = Predictor(model, classes=["green", 3], confidence_thresh=0.2)
    assert set(p.predict(rgb)[0].labels.tolist()) <= {2, 3}
    with pytest.raises(ValueError, match="unknown class 'cat'"):
        Predictor(model, classes=["cat"])
    with pytest.raises(ValueError, match="backend"):
        Predictor(model, backend="tflite")
    with pytest.raises(ValueError, match="confidence_thresh"):
        Predictor(model, confidence_thresh=1.5)


def test_lazy_public_name_and_checkpoint(model, tmp_path):
    from ssdkit.checkpoint import save

    save(tmp_path / "m.pt", model)
    p = ssdkit.Predictor(str(tmp_path / "m.pt"))
    assert p.class_names == ["red", "green", "blue"] and p.confidence_thresh == 0.3
    from ssdkit.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not found"):
        ssdkit.Predictor(str(tmp_path / "nope.pt"))
