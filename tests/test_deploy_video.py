"""A 3-second generated video end to end: annotated video, JSON-lines, real/fake face summary."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from ssdkit.deploy.predictor import Predictor
from ssdkit.deploy.synthetic import realistic_ssd_, synthetic_video
from ssdkit.deploy.video import FaceSummary, face_classes, process_video
from ssdkit.errors import DataError
from ssdkit.models import build_model


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return synthetic_video(str(tmp_path_factory.mktemp("video") / "clip.mp4"), seconds=3.0, fps=30.0)


@pytest.fixture(scope="module")
def face_predictor() -> Predictor:
    torch.manual_seed(0)
    model = realistic_ssd_(build_model("ssd7", 2, image_size=(96, 128), class_names=["real", "fake"]),
                           background_logit=7.0)
    return Predictor(model, backend="onnxruntime", batch_size=8)


def test_video_end_to_end(face_predictor, clip, tmp_path):
    res = process_video(face_predictor, clip, tmp_path / "out", progress=False)
    assert res.frames == 90 and res.fps == pytest.approx(30.0)
    cap = cv2.VideoCapture(str(res.video_path))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 90
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (160, 120)
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (120, 160, 3)
    lines = [json.loads(x) for x in res.jsonl_path.read_text().splitlines()]
    assert [x["frame"] for x in lines] == list(range(90))
    assert lines[30]["time_s"] == pytest.approx(1.0)
    assert sum(len(x["detections"]) for x in lines) == res.detections > 0
    for x in lines:
        for d in x["detections"]:
            assert d["class"] in ("real", "fake") and d["score"] > 0.3
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 <= x1 <= 160 and 0 <= y0 <= y1 <= 120
    s = json.loads(res.summary_path.read_text())
    assert s == res.summary and s["frames"] == 90 and s["duration_s"] == pytest.approx(3.0)
    assert s["face_detections"] == res.detections
    assert s["frames_with_faces"] == sum(1 for x in lines if x["detections"])
    fake_frames = sum(1 for x in lines if any(d["class"] == "fake" for d in x["detections"]))
    assert s["fraction_flagged_fake"] == pytest.approx(fake_frames / s["frames_with_faces"], abs=1e-5)
    scores = [d["score"] for x in lines for d in x["detections"]]
    assert s["mean_confidence"] == pytest.approx(np.mean(scores), abs=1e-4)
    assert s["verdict"] in ("real", "fake")
    # the same frames through Predictor.predict(video): per-frame Detections in order, no pixels kept
    dets = face_predictor.predict(clip)
    assert [d.frame for d in dets] == list(range(90)) and dets[0].image is None
    assert sum(len(d) for d in dets) == res.detections


def test_face_summary_rules():
    assert face_classes(["Real_face", "FAKE_face"]) == ([1], [2])
    assert face_classes(["RBC", "WBC"]) is None
    s = FaceSummary([1], [2], 0.3)
    s.update(0, np.array([1, 2]), np.array([0.9, 0.5]))
    s.update(1, np.array([1]), np.array([0.7]))
    s.update(2, np.array([], dtype=np.int64), np.array([]))
    d = s.to_dict("v.mp4", 30.0)
    assert d["frames"] == 3 and d["frames_with_faces"] == 2 and d["frames_flagged_fake"] == 1
    assert d["fraction_flagged_fake"] == 0.5 and d["verdict"] == "fake"
    assert d["mean_confidence"] == pytest.approx(0.7) and d["mean_fake_confidence"] == pytest.approx(0.5)
    assert FaceSummary([1], [2], 0.3).to_dict()["verdict"] == "no faces"


def test_video_errors(face_predictor, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(DataError, match=r"bad\.mp4"):
        process_video(face_predictor, bad, tmp_path / "o", progress=False)
    assert not (tmp_path / "o" / "bad.jsonl").exists()
    torch.manual_seed(0)
    other = Predictor(build_model("ssd7", 2, image_size=(96, 128), class_names=["cat", "dog"]))
    with pytest.raises(ValueError, match="real' and 'fake"):
        process_video(other, bad, tmp_path / "o", summary="faces", progress=False)
