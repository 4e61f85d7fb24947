"""SSDTargetEncoder against the per-image numpy reference of the Keras SSDInputEncoder (section 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.reference_numpy import encode_numpy
from ssdkit.anchors import AnchorGenerator
from ssdkit.matching import SSDTargetEncoder, validate_targets


def random_gt(rng: np.random.Generator, b: int, h: int, w: int, gmax: int, n_classes: int, tiny: bool = True):
    boxes, labels = [], []
    for _ in range(b):
        g = int(rng.integers(0, gmax + 1))
        lo = np.log(2 if tiny else 0.05 * min(h, w))
        bw = np.exp(rng.uniform(lo, np.log(w), g))
        bh = np.clip(bw * np.exp(rng.normal(0, 0.6, g)), 1.0, h)
        x0 = rng.uniform(-0.1 * w, w - 0.9 * bw)
        y0 = rng.uniform(-0.1 * h, np.maximum(h - 0.9 * bh, 1.0))
        boxes.append(np.stack([x0, y0, x0 + bw, y0 + bh], 1))
        labels.append(rng.integers(1, n_classes + 1, g))
    return boxes, labels


def run_both(enc: SSDTargetEncoder, boxes, labels, anchors: np.ndarray, h: int, w: int, **kw):
    lab, tgt = enc([torch.from_numpy(b) for b in boxes], [torch.from_numpy(x) for x in labels])
    lab_r, tgt_r = encode_numpy(boxes, labels, anchors, h, w, **kw)
    return lab.numpy(), tgt.numpy(), lab_r, tgt_r


@pytest.mark.parametrize("matching", ["multi", "bipartite"])
@pytest.mark.parametrize("seed", range(6))
def test_ssd300_matches_reference(matching: str, seed: int) -> None:
    gen = AnchorGenerator.preset("ssd300_voc")
    rng = np.random.default_rng(seed)
    boxes, labels = random_gt(rng, 6, 300, 300, 20, 20)
    enc = SSDTargetEncoder(gen, 300, 20, matching=matching)
    lab, tgt, lab_r, tgt_r = run_both(enc, boxes, labels, gen.anchors(dtype=torch.float64).numpy(), 300, 300,
                                      matching=matching)
    np.testing.assert_array_equal(lab, lab_r)
    np.testing.assert_allclose(tgt, tgt_r, atol=1e-4, rtol=1e-5)
    dense = SSDTargetEncoder(gen, 300, 20, matching=matching, algorithm="dense")
    lab_d, tgt_d = dense([torch.from_numpy(b) for b in boxes], [torch.from_numpy(x) for x in labels])
    np.testing.assert_array_equal(lab_d.numpy(), lab)
    np.testing.assert_array_equal(tgt_d.numpy(), tgt)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    img=st.tuples(st.integers(32, 512), st.integers(32, 512)),
    n_layers=st.integers(1, 3),
    pos=st.floats(0.3, 0.8),
    neg_gap=st.floats(0.0, 0.3),
    matching=st.sampled_from(["multi", "bipartite"]),
    clip=st.booleans(),
    norm=st.booleans(),
    two=st.booleans(),
)
def test_random_configurations_match_reference(seed, img, n_layers, pos, neg_gap, matching, clip, norm, two) -> None:
    rng = np.random.default_rng(seed)
    h, w = img
    fms = [(max(1, h // (8 * 2**k)), max(1, w // (8 * 2**k))) for k in range(n_layers)]
    scales = sorted(rng.uniform(0.05, 1.0, n_layers + 1).tolist())
    gen = AnchorGenerator(img, fms, scales=scales, aspect_ratios=[1.0, 2.0, 0.5], two_boxes_for_ar1=two,
                          clip_boxes=clip, normalize_coords=norm)
    anchors = gen.anchors(dtype=torch.float64).numpy()
    boxes, labels = random_gt(rng, 3, h, w, 8, 5)
    neg = pos - neg_gap
    enc = SSDTargetEncoder(gen, img, 5, matching=matching, pos_iou_threshold=pos, neg_iou_limit=neg)
    lab, tgt, lab_r, tgt_r = run_both(enc, boxes, labels, anchors, h, w, matching=matching,
                                      pos_iou_threshold=pos, neg_iou_limit=neg, normalize_coords=norm)
    np.testing.assert_array_equal(lab, lab_r)
    np.testing.assert_allclose(tgt, tgt_r, atol=1e-4, rtol=1e-5)


def test_every_ground_truth_gets_a_positive_even_tiny_or_outside() -> None:
    gen = AnchorGenerator.preset("ssd300_voc")
    enc = SSDTargetEncoder(gen, 300, 3)
    boxes = torch.tensor([[10.0, 10.0, 11.0, 11.5],   # far smaller than any anchor
                          [0.0, 0.0, 300.0, 300.0],   # whole image
                          [10.0, 10.0, 11.0, 11.5],   # exact duplicate: needs its own anchor
                          [400.0, 400.0, 420.0, 430.0]])  # outside the image, IoU 0 with every anchor
    labels = torch.tensor([1, 2, 3, 1])
    lab, _, matched = enc.encode([boxes], [labels])
    for g in range(4):
        assert (matched[0] == g).sum() >= 1, f"gt {g} has no anchor"
    assert set(lab[0][lab[0] > 0].tolist()) == {1, 2, 3}
    # the zero-IoU box takes the first anchor nobody else took, as the reference does
    lab_r, _ = encode_numpy([boxes.numpy()], [labels.numpy()], gen.anchors(dtype=torch.float64).numpy(), 300, 300)
    np.testing.assert_array_equal(lab.numpy(), lab_r)
    taken_before = set(matched[0][: int(matched[0].eq(3).nonzero()[0])].tolist()) - {-1}
    assert taken_before <= {0, 1, 2}


def test_empty_images_and_all_empty_batch() -> None:
    gen = AnchorGenerator.preset("ssd300_voc")
    enc = SSDTargetEncoder(gen, 300, 3)
    lab, tgt = enc([torch.zeros(0, 4), torch.tensor([[50.0, 50.0, 150.0, 150.0]])], [torch.zeros(0), torch.tensor([2])])
    assert lab.shape == (2, 8732) and tgt.shape == (2, 8732, 4)
    assert (lab[0] == 0).all() and (tgt[0] == 0).all()
    assert (lab[1] == 2).sum() >= 1 and (lab[1] == -1).sum() > 0
    lab, tgt = enc([[], []], [[], []])
    assert (lab == 0).all() and lab.dtype == torch.int64 and tgt.dtype == torch.float32
    lab, tgt = enc([], [])
    assert lab.shape == (0, 8732)


def test_fixed_small_example() -> None:
    # 1 layer, 2x2 cells, one square box per cell of side 50 px in a 100x100 image
    gen = AnchorGenerator(100, [2], scales=[0.5, 0.5], aspect_ratios=[1.0], two_boxes_for_ar1=False)
    enc = SSDTargetEncoder(gen, 100, 2, pos_iou_threshold=0.5, neg_iou_limit=0.3)
    # exactly the top-left anchor -> IoU 1 there; the others overlap 0
    lab, tgt = enc([torch.tensor([[0.0, 0.0, 50.0, 50.0]])], [torch.tensor([2])])
    assert lab.tolist() == [[2, 0, 0, 0]]
    assert torch.allclose(tgt, torch.zeros_like(tgt), atol=1e-6)
    # a box straddling the two top cells: IoU 1/3 with each -> one bipartite positive (the first), one neutral
    lab, tgt = enc([torch.tensor([[25.0, 0.0, 75.0, 50.0]])], [torch.tensor([1])])
    assert lab.tolist() == [[1, -1, 0, 0]]
    torch.testing.assert_close(tgt[0, 0], torch.tensor([0.25 / 0.5 / 0.1, 0.0, 0.0, 0.0]))


def test_ties_prefer_lowest_gt_then_lowest_anchor() -> None:
    gen = AnchorGenerator(100, [2], scales=[0.5, 0.5], aspect_ratios=[1.0], two_boxes_for_ar1=False)
    enc = SSDTargetEncoder(gen, 100, 3, pos_iou_threshold=0.3, neg_iou_limit=0.2)
    box = torch.tensor([[25.0, 0.0, 75.0, 50.0]])  # IoU 1/3 with anchors 0 and 1
    lab, _, matched = enc.encode([torch.cat([box, box])], [torch.tensor([1, 2])])
    # gt 0 gets anchor 0 (bipartite, lowest index), gt 1 gets anchor 1; multi keeps them
    assert matched[0].tolist()[:2] == [0, 1] and lab[0].tolist()[:2] == [1, 2]


def test_ssd7_like_pixels_and_variances_match_reference() -> None:
    gen = AnchorGenerator((300, 480), [(37, 60), (18, 30), (9, 15), (4, 7)], scales=[0.08, 0.16, 0.32, 0.64, 0.96],
                          normalize_coords=False)
    rng = np.random.default_rng(3)
    boxes, labels = random_gt(rng, 4, 300, 480, 12, 5)
    enc = SSDTargetEncoder(gen, (300, 480), 5, variances=(1.0, 1.0, 1.0, 1.0))
    lab, tgt, lab_r, tgt_r = run_both(enc, boxes, labels, gen.anchors(dtype=torch.float64).numpy(), 300, 480,
                                      variances=(1.0, 1.0, 1.0, 1.0), normalize_coords=False)
    np.testing.assert_array_equal(lab, lab_r)
    np.testing.assert_allclose(tgt, tgt_r, atol=1e-4, rtol=1e-5)


def test_tensor_anchors_and_float32_boxes() -> None:
    gen = AnchorGenerator.preset("ssd300_voc")
    rng = np.random.default_rng(11)
    boxes, labels = random_gt(rng, 4, 300, 300, 10, 20, tiny=False)
    a = SSDTargetEncoder(gen.anchors(), 300, 20)([torch.from_numpy(b).float() for b in boxes],
                                                 [torch.from_numpy(x) for x in labels])
    b = SSDTargetEncoder(gen, 300, 20)([torch.from_numpy(b).float() for b in boxes],
                                       [torch.from_numpy(x) for x in labels])
    assert (a[0] == b[0]).float().mean() > 0.999  # float32 anchors may flip exact threshold ties only


@pytest.mark.parametrize(
    ("boxes", "labels", "match"),
    [
        ([[[10, 10, 5, 20]]], [[1]], r"image 0, box 0: degenerate box"),
        ([[[0, 0, 5, 5]], [[1, 1, 9, 9], [10, 10, 10, 20]]], [[1], [1, 2]], r"image 1, box 1: degenerate"),
        ([[[0, 0, float("nan"), 5]]], [[1]], r"image 0, box 0: non-finite"),
        ([[[0, 0, float("inf"), 5]]], [[1]], r"non-finite"),
        ([[[0, 0, 5, 5]]], [[0]], r"label 0 is out of range 1..3"),
        ([[[0, 0, 5, 5]]], [[4]], r"label 4 is out of range"),
        ([[[0, 0, 5, 5]]], [[1.5]], r"not an integer"),
        ([[[0, 0, 5]]], [[1]], r"image 0: boxes must have shape \(G, 4\)"),
        ([[[0, 0, 5, 5]]], [[1, 2]], r"image 0: labels must have shape \(1,\)"),
        ([[[0, 0, 5, 5]]], [[1], [2]], r"boxes for 1 images but labels for 2"),
    ],
)
def test_bad_ground_truth_names_image_and_box(boxes, labels, match) -> None:
    enc = SSDTargetEncoder(AnchorGenerator(100, [2]), 100, 3)
    with pytest.raises(ValueError, match=match):
        enc([torch.tensor(b, dtype=torch.float32) for b in boxes], [torch.tensor(x) for x in labels])


def test_ground_truth_in_other_containers_and_dtypes_encodes_the_same() -> None:
    gen = AnchorGenerator(100, [4, 2])
    enc = SSDTargetEncoder(gen, 100, 3)
    boxes = [[[10.0, 10, 40, 50], [50, 50, 90, 95]], [[20.0, 5, 70, 60]]]
    labels = [[1, 3], [2]]
    ref = enc([torch.tensor(b) for b in boxes], [torch.tensor(x) for x in labels])
    variants = [
        ([np.array(b, dtype=np.float32) for b in boxes], [np.array(x) for x in labels]),  # numpy
        (boxes, labels),  # nested lists
        ([torch.tensor(b, dtype=torch.bfloat16) for b in boxes], [torch.tensor(x) for x in labels]),  # exact here
        ([torch.tensor(b, dtype=torch.float64) for b in boxes], [torch.tensor(x, dtype=torch.float32) for x in labels]),
    ]
    for vb, vl in variants:
        lab, tgt = enc(vb, vl)
        assert torch.equal(lab, ref[0]) and torch.allclose(tgt, ref[1], atol=1e-6)
    # bool labels (one-class data) count as class 1
    gb, gl, counts, removed = validate_targets(boxes, [torch.tensor([True, True]), [True]], 3, "remove")
    assert gb.dtype == torch.float64 and gl.dtype == torch.int64 and gl.tolist() == [1, 1, 1]
    assert counts.tolist() == [2, 1] and removed == 0
    with pytest.raises(ValueError, match=r"image 1: boxes/labels are not numeric arrays"):
        enc(boxes, [[1, 3], ["cat"]])
    with pytest.raises(ValueError, match=r"image 0, box 1: label 0 is out of range"):
        enc(boxes, [[True, False], [True]])


def test_degenerate_remove_counts_and_drops() -> None:
    gen = AnchorGenerator.preset("ssd300_voc")
    enc = SSDTargetEncoder(gen, 300, 3, degenerate="remove")
    boxes = [torch.tensor([[10.0, 10, 10, 20], [50, 50, 120, 150]]), torch.tensor([[5.0, 5, 6, 5]])]
    lab, _ = enc(boxes, [torch.tensor([1, 2]), torch.tensor([3])])
    assert enc.n_removed == 2
    assert set(lab[0].unique().tolist()) <= {-1, 0, 2} and (lab[0] == 2).any()
    assert (lab[1] == 0).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"anchors": torch.zeros(0, 4)}, "anchor set is empty"),
        ({"anchors": torch.ones(5, 3)}, r"shape \(N, 4\)"),
        ({"matching": "hungarian"}, "matching must be"),
        ({"degenerate": "warn"}, "degenerate must be"),
        ({"variances": (0.1, 0.1, 0.2)}, "variances"),
        ({"n_classes": 0}, "n_classes"),
    ],
)
def test_bad_encoder_parameters(kwargs, match) -> None:
    base = {"anchors": AnchorGenerator(100, [2]), "image_size": 100, "n_classes": 3}
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        SSDTargetEncoder(**base)


def test_zero_neg_limit_uses_dense_path_and_matches_reference() -> None:
    gen = AnchorGenerator(120, [(6, 6), (3, 3)], scales=[0.2, 0.5, 0.9])
    rng = np.random.default_rng(5)
    boxes, labels = random_gt(rng, 2, 120, 120, 4, 2)
    enc = SSDTargetEncoder(gen, 120, 2, neg_iou_limit=0.0)
    lab, tgt, lab_r, tgt_r = run_both(enc, boxes, labels, gen.anchors(dtype=torch.float64).numpy(), 120, 120,
                                      neg_iou_limit=0.0)
    np.testing.assert_array_equal(lab, lab_r)
    np.testing.assert_allclose(tgt, tgt_r, atol=1e-4, rtol=1e-5)


def test_encoder_pickles_and_gives_the_same_targets() -> None:
    import pickle

    gen = AnchorGenerator.preset("ssd300_voc")
    enc = SSDTargetEncoder(gen, 300, 3)
    boxes, labels = [torch.tensor([[20.0, 30, 120, 160]])], [torch.tensor([2])]
    first = enc(boxes, labels)  # creates the per-thread scratch buffer
    clone = pickle.loads(pickle.dumps(enc))
    second = clone(boxes, labels)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert clone.config() == enc.config()
