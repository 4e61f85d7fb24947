"""``ssdkit predict``: images, folders, globs, videos; JSON/CSV; one-line errors with exit code 2."""

from __future__ import annotations

import csv
import json

import cv2
import pytest
import torch

from ssdkit.checkpoint import save
from ssdkit.cli.main import main
from ssdkit.deploy.synthetic import realistic_ssd_, synthetic_images, synthetic_video
from ssdkit.models import build_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    torch.manual_seed(0)
    m = realistic_ssd_(build_model("ssd7", 2, image_size=(96, 128), class_names=["real", "fake"]), background_logit=7.0)
    path = tmp_path_factory.mktemp("ckpt") / "faces.pt"
    save(path, m)
    return str(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("imgs")
    for i, img in enumerate(synthetic_images(3, (120, 160), seed=11)):
        cv2.imwrite(str(d / f"im{i}.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return str(d)


def test_predict_folder_video_json_csv(ckpt, images, tmp_path, capsys):
    clip = synthetic_video(str(tmp_path / "clip.mp4"), seconds=1.0, fps=10.0)
    out = tmp_path / "preds"
    rc = main(["predict", ckpt, images, clip, "--out", str(out), "--save-json", "--save-csv", "--quiet",
               "--backend", "onnxruntime"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "3 images" in cap.out and "1 unreadable files skipped" in cap.out
    assert cap.err.count("warning: skipped") == 1 and "corrupt.png" in cap.err
    for i in range(3):
        assert (out / f"im{i}.jpg").is_file()
    records = json.loads((out / "predictions.json").read_text())
    assert [r["source"].rsplit("/", 1)[-1] for r in records] == ["im0.jpg", "im1.jpg", "im2.jpg"]
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == sum(len(r["detections"]) for r in records)
    assert rows and set(rows[0]) >= {"source", "class", "score", "xmin", "ymax"}
    assert (out / "clip.mp4").is_file() and len((out / "clip.jsonl").read_text().splitlines()) == 10
    summary = json.loads((out / "clip.summary.json").read_text())  # real/fake model: per-video summary
    assert summary["frames"] == 10 and "fraction_flagged_fake" in summary
    assert "frames/s" in cap.out and "flagged fake" in cap.out


def test_predict_glob_classes_and_names(ckpt, images, tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["predict", ckpt, f"{images}/im*.jpg", f"{images}/im0.jpg", "--out", str(out), "--classes", "fake",
                 "--conf", "0.5", "--quiet", "--save-json"]) == 0
    records = json.loads((out / "predictions.json").read_text())
    assert len(records) == 4 and (out / "im0_1.jpg").is_file()  # same name twice: numbered
    assert all(d["class"] == "fake" and d["score"] > 0.5 for r in records for d in r["detections"])


@pytest.mark.parametrize(
    "args,message",
    [
        (["missing.pt", "x.jpg"], "checkpoint not found"),
        (["{ckpt}", "{images}/corrupt.png"], "corrupt.png"),
        (["{ckpt}", "{images}/*.bmp"], "no images matched"),
        (["{ckpt}", "{images}/nothing.jpg"], "nothing.jpg"),
        (["{ckpt}", "{images}", "--conf", "2"], "--conf"),
        (["{ckpt}", "{images}", "--onnx", "m.onnx"], "--onnx needs --backend onnxruntime"),
        (["{ckpt}", "{images}", "--classes", "cat"], "unknown class 'cat'"),
    ],
)
def test_predict_errors_are_one_line(ckpt, images, tmp_path, capsys, args, message):
    argv = ["predict", *[a.format(ckpt=ckpt, images=images) for a in args], "--out", str(tmp_path / "o"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ssdkit predict: error:") and message in err and "\n" not in err
