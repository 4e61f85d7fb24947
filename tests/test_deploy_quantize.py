"""int8 static quantisation plumbing on a small model (the accuracy/speed goals are measured by bench/infer.py)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from ssdkit.deploy.ort import OrtRunner, read_metadata
from ssdkit.deploy.quantize import calibration_images, quantize_export
from ssdkit.deploy.synthetic import realistic_ssd_, synthetic_images
from ssdkit.errors import ExportError
from ssdkit.models import build_model


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return realistic_ssd_(build_model("ssd7", 3, image_size=(96, 128), class_names=["red", "green", "blue"]),
                          background_logit=6.0)


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("calib")
    for i, img in enumerate(synthetic_images(12, (120, 160), seed=7)):
        cv2.imwrite(str(d / f"c{i:02d}.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return str(d)


def test_int8_raw_with_map_change(model, calib_dir, tmp_path):
    from ssdkit.data import VOCDataset
    from ssdkit.data.synthetic import make_synthetic_voc

    make_synthetic_voc(str(tmp_path / "voc"), n_images=8, size=(96, 128), splits={"val": 1.0})
    val = VOCDataset(str(tmp_path / "voc"), "val", classes=["red", "green", "blue"])
    path = tmp_path / "m.int8.onnx"
    res, rep = quantize_export(model, path, calib_dir, n_calib=8, outputs="raw", val_dataset=val)
    assert path.is_file() and res.outputs == "raw"
    meta = json.loads(read_metadata(path)["ssdkit"])
    assert meta["quantization"]["type"] == "int8-static" and meta["quantization"]["n_calib"] == 8
    assert rep.n_calib == 8 and rep.int8_bytes < rep.fp32_bytes
    assert set(rep.fp32_ms) == set(rep.int8_ms) == {"batch 1", "batch 8"}
    assert 0.0 <= rep.agreement["recall"] <= 1.0 and rep.agreement["fp32"] > 0
    assert rep.map_fp32 is not None and rep.map_int8 is not None and rep.val_images == 8
    assert rep.map_change == pytest.approx(rep.map_int8 - rep.map_fp32)
    text = rep.summary()
    assert "smaller" in text and "mAP on 8 validation images" in text
    # the int8 graph runs on other batch sizes (dynamic batch by default) and keeps float outputs
    cls, box = OrtRunner(path)(np.zeros((3, 3, 96, 128), np.uint8))
    assert cls.shape == (3, model.num_anchors, 4) and cls.dtype == np.float32 and box.shape[0] == 3


def test_int8_with_nms_in_graph(model, calib_dir, tmp_path):
    path = tmp_path / "nms.int8.onnx"
    res, rep = quantize_export(model, path, calib_dir, n_calib=4, outputs="nms", measure_speed=False,
                               quant_format="qoperator", per_channel=True, confidence_thresh=0.2)
    # post-processing verified against ssdkit's decoder fed by the int8 network
    assert res.verify is not None and res.verify.ok and res.verify.n_reference > 0
    det, num = OrtRunner(path)(np.zeros((2, 3, 96, 128), np.uint8))
    assert det.shape == (2, 200, 6) and num.shape == (2,)
    assert rep.quant_format == "qoperator" and rep.per_channel and not rep.fp32_ms


def test_calibration_sources(model, calib_dir):
    imgs = calibration_images(model, calib_dir, 5)
    assert imgs.shape == (5, 3, 96, 128) and imgs.dtype == np.uint8
    assert calibration_images(model, f"{calib_dir}/c0*.jpg", 100).shape[0] == 10  # all there are
    with pytest.raises(ExportError, match=">= 1"):
        calibration_images(model, calib_dir, 0)
