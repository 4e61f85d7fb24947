"""decode_detections against the per-image, per-class numpy reference (section 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.reference_numpy import decode_numpy, greedy_nms_numpy
from ssdkit.anchors import AnchorGenerator
from ssdkit.postprocess import decode_detections, group_rank


def realistic_outputs(seed: int, b: int, n: int, c: int, bg_bias: float = 4.0):
    """Mostly-background logits with a few confident anchors, small random offsets."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, n, c + 1, generator=g) * 1.5
    logits[..., 0] += bg_bias
    hot = torch.rand(b, n, generator=g) < 0.02
    cls = torch.randint(1, c + 1, (b, n), generator=g)
    logits[hot, cls[hot]] += 8.0
    deltas = torch.randn(b, n, 4, generator=g) * 0.5
    return logits, deltas


def assert_same_detections(out: list[torch.Tensor], ref: list[np.ndarray]) -> None:
    assert len(out) == len(ref)
    for o, r in zip(out, ref):
        o = o.double().numpy()
        assert o.shape == r.shape, (o.shape, r.shape)
        np.testing.assert_array_equal(o[:, 0], r[:, 0])
        np.testing.assert_allclose(o[:, 1], r[:, 1], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(o[:, 2:], r[:, 2:], rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("seed", range(2))
def test_per_class_matches_reference_ssd300(seed: int) -> None:
    gen = AnchorGenerator.preset("ssd300_voc")
    anchors = gen.anchors()
    logits, deltas = realistic_outputs(seed, 2, gen.num_anchors, 20, bg_bias=5.5)
    out = decode_detections(logits, deltas, anchors, 300)
    ref = decode_numpy(logits.numpy(), deltas.numpy(), anchors.double().numpy(), 300, 300)
    assert_same_detections(out, ref)
    for o in out:
        assert (o[1:, 1] <= o[:-1, 1]).all(), "not sorted by descending score"
        assert o.shape[0] <= 200


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), conf=st.sampled_from([0.01, 0.1, 0.3, 0.5]), iou=st.sampled_from([0.3, 0.45, 0.7]),
       top_k=st.sampled_from([None, 5, 50]), nms=st.sampled_from(["per_class", "global"]),
       hw=st.sampled_from([(100, 100), (90, 150)]), bias=st.sampled_from([0.0, 2.0, 4.0]))
def test_random_settings_match_reference(seed, conf, iou, top_k, nms, hw, bias) -> None:
    h, w = hw
    gen = AnchorGenerator(hw, [(h // 10, w // 10), (h // 30, w // 30)], scales=[0.1, 0.3, 0.6])
    anchors = gen.anchors()
    logits, deltas = realistic_outputs(seed, 2, gen.num_anchors, 3, bias)
    out = decode_detections(logits, deltas, anchors, hw, confidence_thresh=conf, iou_threshold=iou, top_k=top_k,
                            nms=nms)
    ref = decode_numpy(logits.numpy(), deltas.numpy(), anchors.double().numpy(), h, w, confidence_thresh=conf,
                       iou_threshold=iou, top_k=top_k, nms=nms)
    assert_same_detections(out, ref)


def test_generator_input_pixel_anchors_and_variances() -> None:
    gen = AnchorGenerator((60, 90), [(6, 9), (3, 4)], scales=[0.2, 0.4, 0.8], normalize_coords=False)
    logits, deltas = realistic_outputs(1, 2, gen.num_anchors, 2, 1.0)
    var = (1.0, 1.0, 1.0, 1.0)
    out = decode_detections(logits, deltas * 0.1, gen, (60, 90), variances=var)
    ref = decode_numpy(logits.numpy(), deltas.numpy() * 0.1, gen.anchors(dtype=torch.float64).numpy(), 60, 90,
                       variances=var, normalize_coords=False)
    assert_same_detections(out, ref)


def test_fixed_example_nms_and_thresholds() -> None:
    anchors = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.27, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]])
    logits = torch.full((1, 3, 3), -10.0)
    logits[0, 0, 1] = 5.0  # class 1, high
    logits[0, 1, 1] = 4.0  # class 1, overlaps anchor 0 strongly -> suppressed
    logits[0, 2, 2] = 3.0  # class 2, elsewhere
    out = decode_detections(logits, torch.zeros(1, 3, 4), anchors, 100)[0]
    assert out[:, 0].tolist() == [1.0, 2.0]
    torch.testing.assert_close(out[0, 2:], torch.tensor([0.0, 0.0, 50.0, 50.0]))
    torch.testing.assert_close(out[1, 2:], torch.tensor([50.0, 50.0, 100.0, 100.0]))
    p = torch.softmax(logits[0, 0].double(), -1)[1]
    assert float(out[0, 1]) == pytest.approx(float(p), rel=1e-6)
    # global mode: background argmax anchors are dropped; threshold is inclusive there
    out_g = decode_detections(logits, torch.zeros(1, 3, 4), anchors, 100, nms="global", confidence_thresh=float(p))
    assert out_g[0].shape[0] == 1
    # per-class mode: threshold is strict
    out_s = decode_detections(logits, torch.zeros(1, 3, 4), anchors, 100, confidence_thresh=float(p))
    assert out_s[0][:, 0].tolist() == []


def test_empty_and_all_background() -> None:
    gen = AnchorGenerator(100, [4])
    logits = torch.zeros(2, gen.num_anchors, 4)
    logits[..., 0] = 50.0
    out = decode_detections(logits, torch.zeros(2, gen.num_anchors, 4), gen, 100)
    assert [o.shape for o in out] == [(0, 6), (0, 6)]
    out = decode_detections(torch.zeros(0, gen.num_anchors, 4), torch.zeros(0, gen.num_anchors, 4), gen, 100)
    assert out == []


def test_nms_max_output_size_caps_each_class_after_nms() -> None:
    gen = AnchorGenerator.preset("ssd300_voc")
    logits, deltas = realistic_outputs(0, 1, gen.num_anchors, 3, 0.0)
    full = decode_detections(logits, deltas, gen, 300, top_k=None)[0]
    capped = decode_detections(logits, deltas, gen, 300, top_k=None, nms_max_output_size=5)[0]
    for c in (1, 2, 3):
        fc, cc = full[full[:, 0] == c], capped[capped[:, 0] == c]
        assert cc.shape[0] == min(5, fc.shape[0])
        torch.testing.assert_close(cc, fc[:5])


def test_group_rank() -> None:
    assert group_rank(torch.tensor([2, 0, 2, 1, 0, 2])).tolist() == [0, 0, 1, 0, 1, 2]
    assert group_rank(torch.tensor([], dtype=torch.long)).tolist() == []


def test_greedy_nms_reference_sanity() -> None:
    rows = np.array([[0.9, 0, 0, 10, 10], [0.8, 1, 1, 11, 11], [0.7, 20, 20, 30, 30]])
    assert greedy_nms_numpy(rows, 0.45)[:, 0].tolist() == [0.9, 0.7]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"nms": "soft"}, "nms must be"), ({"top_k": -1}, "top_k"), ({"anchors": torch.zeros(5, 4)}, "anchors must be")],
)
def test_bad_arguments(kwargs, match) -> None:
    gen = AnchorGenerator(100, [4])
    args = {"anchors": gen.anchors(), "image_size": 100}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        decode_detections(torch.zeros(1, gen.num_anchors, 3), torch.zeros(1, gen.num_anchors, 4), **args)


@pytest.mark.parametrize("case", ["untrained", "heavy_suppression"])
def test_candidate_truncation_is_exact(case: str) -> None:
    """More than 400 candidates per class: top-M truncation (and its retry) must not change the result."""
    gen = AnchorGenerator(200, [(24, 24)], scales=[0.1, 0.12], aspect_ratios=[1.0], two_boxes_for_ar1=False)
    g = torch.Generator().manual_seed(0)
    n = gen.num_anchors  # 576 per class > 400
    logits = torch.randn(1, n, 3, generator=g) * 0.3  # near-uniform softmax: every anchor passes 0.01
    deltas = torch.zeros(1, n, 4)
    if case == "heavy_suppression":
        deltas[..., 2:] = 3.0  # boxes ~e^0.6 x larger: neighbours overlap, NMS suppresses most of them
    out = decode_detections(logits, deltas, gen, 200, top_k=150, iou_threshold=0.3)
    ref = decode_numpy(logits.numpy(), deltas.numpy(), gen.anchors(dtype=torch.float64).numpy(), 200, 200,
                       top_k=150, iou_threshold=0.3)
    assert_same_detections(out, ref)


def test_dense_and_sorted_top_m_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over-full groups are truncated by a sort (few candidates) or dense topk (many): same detections."""
    import ssdkit.postprocess as P

    gen = AnchorGenerator.preset("ssd300_voc")
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, gen.num_anchors, 6, generator=g) * 0.5  # ~every anchor and class is a candidate
    deltas = torch.randn(2, gen.num_anchors, 4, generator=g) * 0.3
    monkeypatch.setattr(P, "_SORT_MAX", 10**9)
    by_sort = P.decode_detections(logits, deltas, gen, 300)
    monkeypatch.setattr(P, "_SORT_MAX", 0)
    by_topk = P.decode_detections(logits, deltas, gen, 300)
    for a, b in zip(by_sort, by_topk):
        assert a.shape == b.shape == (200, 6)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
