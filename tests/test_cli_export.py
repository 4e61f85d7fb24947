"""``ssdkit export``: formats, NMS graphs, int8, reports; one-line errors with exit code 2."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from ssdkit.checkpoint import save
from ssdkit.cli.main import main
from ssdkit.deploy.ort import OrtRunner
from ssdkit.deploy.synthetic import realistic_ssd_, synthetic_images
from ssdkit.models import build_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    torch.manual_seed(0)
    m = realistic_ssd_(build_model("ssd7", 3, image_size=(96, 128)), background_logit=6.0)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save(path, m)
    return str(path)


def test_export_nms_dynamic_default_path_and_report(ckpt, tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main(["export", ckpt, "--nms", "--dynamic-batch", "--report", str(report), "--n-verify", "3"]) == 0
    out = capsys.readouterr().out
    path = ckpt.replace("best.pt", "best_nms.onnx")
    assert f"exported {path}" in out and "detections" in out and "result: OK" in out
    r = json.loads(report.read_text())
    assert r["export"]["verify"]["ok"] and r["export"]["batch"] == "dynamic"
    det, num = OrtRunner(path)(np.zeros((2, 3, 96, 128), np.uint8))
    assert det.shape == (2, 200, 6) and num.shape == (2,)


def test_export_torchscript_and_static_raw(ckpt, tmp_path, capsys):
    assert main(["export", ckpt, "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    assert main(["export", ckpt, "--out", str(tmp_path / "m.onnx"), "--batch-size", "2", "--opset", "13"]) == 0
    out = capsys.readouterr().out
    assert "TorchScript" in out and "ONNX opset 13" in out and "batch: 2" in out
    assert OrtRunner(tmp_path / "m.onnx").static_batch == 2


def test_export_int8(ckpt, tmp_path, capsys):
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, img in enumerate(synthetic_images(4, (120, 160), seed=1)):
        cv2.imwrite(str(calib / f"{i}.jpg"), img)
    out = tmp_path / "q.onnx"
    assert main(["export", ckpt, "--int8", "--calib", str(calib), "--n-calib", "4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "int8 (qdq" in text and "ms/image int8" in text and "smaller" in text


@pytest.mark.parametrize(
    "args,message",
    [
        (["nope.pt"], "checkpoint not found"),
        (["{ckpt}", "--int8"], "--int8 needs calibration images"),
        (["{ckpt}", "--int8", "--calib", "x", "--format", "torchscript"], "--int8 needs --format onnx"),
        (["{ckpt}", "--calib", "x"], "--calib and --val are for --int8"),
        (["{ckpt}", "--nms", "--conf", "1.5"], "confidence_thresh must be in [0, 1)"),
        (["{ckpt}", "--nms", "--outputs", "raw"], "--nms contradicts"),
        (["{ckpt}", "--int8", "--calib", "{tmp}/none"], "no such image, video, folder or glob match"),
    ],
)
def test_export_errors_are_one_line(ckpt, tmp_path, capsys, args, message):
    argv = ["export", *[a.format(ckpt=ckpt, tmp=tmp_path) for a in args], "--out", str(tmp_path / "o.onnx")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ssdkit export: error:") and message in err and "\n" not in err
    assert not (tmp_path / "o.onnx").exists()
