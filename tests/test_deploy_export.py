"""ONNX / TorchScript export round trips, verification against PyTorch, in-graph NMS semantics."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from ssdkit.deploy.export import (
    BOX_RTOL,
    SCORE_ATOL,
    compare_detections,
    export_model,
    make_runner,
    sample_batch,
)
from ssdkit.deploy.ort import OrtRunner, read_metadata
from ssdkit.deploy.synthetic import realistic_ssd_
from ssdkit.errors import ExportError
from ssdkit.models import build_model
from ssdkit.postprocess import decode_detections

# (name, image_size): ssd300 at its real size (VGG cannot run below ~260 px), the others small or default
MODELS = {
    "ssd7": ("ssd7", (96, 128)),
    "ssdlite": ("ssdlite320_mobilenet_v3_large", None),
    "ssd300": ("ssd300_vgg16", None),
}


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    out = {}
    for key, (name, size) in MODELS.items():
        torch.manual_seed(0)
        out[key] = realistic_ssd_(build_model(name, 3, image_size=size, class_names=["a", "b", "c"]))
    return out


@pytest.mark.parametrize(
    "key,fmt,outputs,dynamic",
    [
        ("ssd7", "onnx", "raw", False),
        ("ssd7", "onnx", "nms", True),
        ("ssd7", "onnx", "decoded", True),
        ("ssd7", "torchscript", "nms", False),
        ("ssdlite", "onnx", "raw", True),
        ("ssdlite", "onnx", "nms", False),
        ("ssdlite", "torchscript", "raw", False),
        ("ssd300", "onnx", "nms", True),
    ],
)
def test_export_round_trip(models, tmp_path, key, fmt, outputs, dynamic):
    model = models[key]
    path = tmp_path / f"m.{fmt}"
    res = export_model(model, path, fmt, outputs=outputs, dynamic_batch=dynamic, n_samples=2)
    assert path.is_file() and res.size_bytes == path.stat().st_size
    rep = res.verify
    assert rep is not None and rep.ok, rep.summary()
    assert rep.batch_sizes == ([1, 2] if dynamic or fmt == "torchscript" else [1])
    assert rep.n_reference > 0 and rep.n_matched + rep.n_borderline >= rep.n_reference
    assert rep.max_box_rel_err <= BOX_RTOL and rep.max_score_err <= SCORE_ATOL
    names = [o[0] for o in res.output_specs]
    assert names == {"raw": ["cls_logits", "box_deltas"], "decoded": ["scores", "boxes"],
                     "nms": ["detections", "num_detections"]}[outputs]
    assert res.inputs[0][0] == "images" and res.inputs[0][1] == "uint8"
    if fmt == "onnx":
        meta = json.loads(read_metadata(path)["ssdkit"])
        assert meta["class_names"] == ["a", "b", "c"] and meta["outputs"] == outputs
        assert meta["image_size"] == list(model.image_size)
        batch_dim = res.inputs[0][2][0]
        assert (batch_dim == "batch") == dynamic
    assert "result: OK" in res.summary()


def test_static_batch_graph_runs_other_batch_sizes_in_chunks(models, tmp_path):
    model = models["ssd7"]
    path = tmp_path / "b2.onnx"
    export_model(model, path, outputs="raw", batch_size=2, n_samples=2)
    runner = OrtRunner(path)
    assert runner.static_batch == 2
    x = sample_batch(model, n=3)
    cls, box = runner(x)  # 3 images through a batch-2 graph: chunked and padded
    with torch.no_grad():
        ref_cls, _ = model(torch.from_numpy(x))
    assert cls.shape == tuple(ref_cls.shape) and box.shape[0] == 3
    assert np.abs(cls - ref_cls.numpy()).max() < 1e-3


def test_nms_graph_matches_decode_detections_with_many_candidates(models, tmp_path):
    """Low threshold (most anchors are candidates), top_k cut and a per-class cap: the in-graph
    NMS must still equal ssdkit's exact decoder."""
    model = models["ssd7"]
    path = tmp_path / "nms.onnx"
    export_model(model, path, outputs="nms", dynamic_batch=True, confidence_thresh=0.02, top_k=50,
                 nms_max_output_size=20, iou_threshold=0.5, verify=False)
    x = sample_batch(model, n=3)
    det, num = OrtRunner(path)(x)
    assert det.shape == (3, 50, 6) and num.dtype == np.int64
    with torch.no_grad():
        c, b = model(torch.from_numpy(x))
    ref = decode_detections(c, b, model.anchors, model.image_size, 0.02, 0.5, 50, variances=model.variances,
                            nms_max_output_size=20)
    for i in range(3):
        got = det[i, : num[i]]
        m, borderline, _, _, problems = compare_detections(ref[i].numpy(), got, 0.02, 50)
        assert not problems, problems[:3]
        assert m + borderline == len(ref[i]) == num[i]
        # per-class cap respected, padding rows are zero
        assert np.bincount(got[:, 0].astype(int)).max() <= 20
        assert not det[i, num[i]:].any()


def test_onnx_runtime_nms_comparisons_are_strict():
    """ONNX Runtime's NonMaxSuppression keeps score > threshold and suppresses IoU > threshold, the
    same strict comparisons as ssdkit (reference section 4)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper as h

    node = h.make_node("NonMaxSuppression", ["b", "s", "m", "i", "t"], ["o"])
    vi = h.make_tensor_value_info
    g = h.make_graph([node], "g", [vi("b", T.FLOAT, [1, None, 4]), vi("s", T.FLOAT, [1, 1, None]),
                                   vi("m", T.INT64, [1]), vi("i", T.FLOAT, [1]), vi("t", T.FLOAT, [1])],
                     [vi("o", T.INT64, [None, 3])])
    sess = ort.InferenceSession(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    onnx.checker.check_model(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))

    def run(boxes, scores, iou, thr):
        feed = {"b": np.array([boxes], np.float32), "s": np.array([[scores]], np.float32), "m": np.array([10]),
                "i": np.array([iou], np.float32), "t": np.array([thr], np.float32)}
        return sess.run(None, feed)[0]

    # a score equal to the threshold is dropped
    assert run([[0, 0, 10, 10], [20, 20, 30, 30]], [0.5, 0.25], 0.5, 0.25)[:, 2].tolist() == [0]
    # IoU exactly 0.5 (100 / 200) is not suppressed at threshold 0.5
    assert run([[0, 0, 10, 10], [0, 0, 20, 10]], [0.9, 0.8], 0.5, 0.0)[:, 2].tolist() == [0, 1]
    # ... and is at 0.49
    assert run([[0, 0, 10, 10], [0, 0, 20, 10]], [0.9, 0.8], 0.49, 0.0)[:, 2].tolist() == [0]


def test_verification_failure_names_the_difference_and_writes_nothing(models, tmp_path, monkeypatch):
    import ssdkit.deploy.export as ex

    real = ex.make_runner

    def skewed(fmt, data, threads=None):
        run = real(fmt, data, threads)

        def go(x):
            det, num = run(x)
            det = det.copy()
            det[:, :, 2:] *= 1.01  # 1% box error: 10x the tolerance
            return det, num

        return go

    monkeypatch.setattr(ex, "make_runner", skewed)
    path = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match=r"verification of the onnx export failed.*image \d+: detection class"):
        export_model(models["ssd7"], path, outputs="nms", n_samples=2)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_compare_detections_tolerates_only_borderline_scores():
    ref = np.array([[1, 0.9, 10, 10, 50, 50], [2, 0.30004, 0, 0, 5, 5]])
    got = np.array([[1, 0.90001, 10.001, 10, 50, 50]])
    m, bl, box_err, score_err, problems = compare_detections(ref, got, conf=0.3, top_k=None)
    assert (m, bl, problems) == (1, 1, [])  # the 0.30004 box sits on the threshold
    assert box_err == pytest.approx(0.001 / 50) and score_err == pytest.approx(1e-5)
    got2 = np.array([[1, 0.9, 10, 10, 50, 50], [3, 0.8, 0, 0, 9, 9]])
    _, _, _, _, problems = compare_detections(ref[:1], got2, conf=0.3, top_k=None, where="img 0: ")
    assert len(problems) == 1 and "class 3 score 0.80000" in problems[0] and "only in the export" in problems[0]
    # wrong class at the same place is a mismatch on both sides
    _, _, _, _, problems = compare_detections(ref[:1], np.array([[2, 0.9, 10, 10, 50, 50]]), 0.3, None)
    assert len(problems) == 2


def test_export_errors(models, tmp_path):
    with pytest.raises(ExportError, match="format"):
        export_model(models["ssd7"], tmp_path / "x", "tflite")
    with pytest.raises(ExportError, match="opset >= 11"):
        export_model(models["ssd7"], tmp_path / "x.onnx", outputs="nms", opset=10)
    with pytest.raises(ExportError, match="confidence_thresh"):
        export_model(models["ssd7"], tmp_path / "x.onnx", outputs="nms", confidence_thresh=1.5)
    with pytest.raises(ExportError, match="output path"):
        export_model(models["ssd7"], None)


def test_torchscript_export_loads_with_metadata(models, tmp_path):
    path = tmp_path / "m.torchscript.pt"
    export_model(models["ssd7"], path, "torchscript", outputs="nms", n_samples=2, verify=False)
    extra = {"ssdkit.json": ""}
    import torchvision  # noqa: F401  (torchvision::nms)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated upstream
        mod = torch.jit.load(str(path), _extra_files=extra)
    meta = json.loads(extra["ssdkit.json"])
    assert meta["outputs"] == "nms" and meta["nms"]["confidence_thresh"] == 0.3
    det, num = mod(torch.zeros((3, 3, 96, 128), dtype=torch.uint8))
    assert det.shape[0] == 3 and num.shape == (3,)
    run = make_runner("torchscript", path.read_bytes())
    assert run(np.zeros((1, 3, 96, 128), np.uint8))[0].shape[0] == 1


@pytest.mark.slow
def test_dynamo_exporter_raw(models, tmp_path):
    res = export_model(models["ssd7"], tmp_path / "d.onnx", exporter="dynamo", dynamic_batch=True, n_samples=2)
    assert res.verify.ok
