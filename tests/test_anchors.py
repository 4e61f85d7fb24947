"""Anchor generation against the reference semantics (reference section 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.reference_numpy import anchors_numpy
from ssdkit.anchors import PRESETS, AnchorGenerator


def test_ssd300_voc_fixed_values() -> None:
    gen = AnchorGenerator.preset("ssd300_voc")
    a = gen.anchors()
    assert gen.num_anchors == 8732 == a.shape[0]
    assert gen.boxes_per_layer == [4, 6, 6, 6, 4, 4]
    assert gen.anchors_per_layer == [5776, 2166, 600, 150, 36, 4]
    torch.testing.assert_close(a[0], torch.tensor([0.4 / 30, 0.4 / 30, 0.1, 0.1]), atol=1e-6, rtol=0)
    sizes = gen.box_sizes(0) * 1.0
    expected = torch.tensor(
        [[30.0, 30.0], [math.sqrt(0.1 * 0.2) * 300] * 2, [42.4264, 21.2132], [21.2132, 42.4264]], dtype=torch.float64
    )
    torch.testing.assert_close(sizes, expected, atol=1e-4, rtol=0)
    # order: layer, row, column, box -> the 4 first anchors share a centre, the 5th is one step right
    assert torch.allclose(a[:4, :2], a[0, :2].expand(4, 2))
    torch.testing.assert_close(a[4, :2], torch.tensor([(0.5 + 1) * 8 / 300, 0.5 * 8 / 300]))
    # second row starts after 38 cells of 4 boxes
    torch.testing.assert_close(a[38 * 4, :2], torch.tensor([0.5 * 8 / 300, 1.5 * 8 / 300]))
    # last layer: one cell, 1x1 map, step 300 -> centre 0.5; second ar=1 box uses the last scale
    torch.testing.assert_close(a[-4:, :2], torch.full((4, 2), 0.5))
    torch.testing.assert_close(a[-3, 2:], torch.full((2,), math.sqrt(0.88 * 1.05)))


def test_ssd512_and_coco_presets() -> None:
    assert AnchorGenerator.preset("ssd512_voc").num_anchors == 24564
    assert AnchorGenerator.preset("ssd512_coco").num_anchors == 24564
    coco = AnchorGenerator.preset("ssd300_coco").anchors()
    torch.testing.assert_close(coco[0, 2:], torch.tensor([0.07, 0.07]))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_match_numpy_reference(name: str) -> None:
    cfg = PRESETS[name]
    gen = AnchorGenerator(**cfg)
    size = cfg["image_size"]
    ref = anchors_numpy(
        size, size, cfg["feature_map_sizes"], cfg["scales"], cfg["aspect_ratios"], cfg["two_boxes_for_ar1"],
        cfg["steps"], cfg["offsets"], cfg["clip_boxes"], cfg["normalize_coords"],
    )
    np.testing.assert_allclose(gen.anchors(dtype=torch.float64).numpy(), ref, rtol=0, atol=1e-12)


layer_st = st.tuples(st.integers(1, 12), st.integers(1, 12))


@settings(max_examples=60, deadline=None)
@given(
    img=st.tuples(st.integers(16, 640), st.integers(16, 640)),
    fms=st.lists(layer_st, min_size=1, max_size=4),
    ars=st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0, 1 / 3, 0.25]), min_size=1, max_size=4, unique=True),
    two=st.booleans(),
    clip=st.booleans(),
    norm=st.booleans(),
    use_steps=st.booleans(),
    use_offsets=st.booleans(),
    data=st.data(),
)
def test_random_configs_match_numpy_reference(img, fms, ars, two, clip, norm, use_steps, use_offsets, data) -> None:
    n = len(fms)
    scales = sorted(data.draw(st.lists(st.floats(0.05, 1.2), min_size=n + 1, max_size=n + 1)))
    steps = None
    if use_steps:
        steps = [data.draw(st.one_of(st.none(), st.floats(2, 64), st.tuples(st.floats(2, 64), st.floats(2, 64))))
                 for _ in range(n)]
    offsets = None
    if use_offsets:
        offsets = [data.draw(st.one_of(st.none(), st.floats(0, 1), st.tuples(st.floats(0, 1), st.floats(0, 1))))
                   for _ in range(n)]
    per_layer = data.draw(st.booleans())
    ar_cfg = [ars] * n if per_layer else ars
    gen = AnchorGenerator(img, fms, scales=scales, aspect_ratios=ar_cfg, two_boxes_for_ar1=two, steps=steps,
                          offsets=offsets, clip_boxes=clip, normalize_coords=norm)
    ref = anchors_numpy(img[0], img[1], fms, scales, [ars] * n, two, steps, offsets, clip, norm)
    out = gen.anchors(dtype=torch.float64).numpy()
    assert out.shape == ref.shape == (gen.num_anchors, 4)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-9)
    assert gen.num_anchors == sum(fh * fw for fh, fw in fms) * (len(ars) + (1 if two and 1.0 in ars else 0))


def test_min_max_scale_linspace_and_config_roundtrip() -> None:
    gen = AnchorGenerator((300, 480), [(37, 60), (18, 30), (9, 15), (4, 7)], min_scale=0.08, max_scale=0.96)
    np.testing.assert_allclose(gen.scales, [0.08, 0.3, 0.52, 0.74, 0.96], atol=1e-12)
    again = AnchorGenerator(**gen.config())
    assert torch.equal(again.anchors(), gen.anchors())
    # size = min(H, W) = 300 for non-square inputs
    torch.testing.assert_close(gen.box_sizes(0)[gen.aspect_ratios[0].index(1.0)], torch.tensor([24.0, 24.0],
                               dtype=torch.float64))


def test_float32_and_device_cache() -> None:
    gen = AnchorGenerator.preset("ssd300_voc")
    a32 = gen.anchors()
    assert a32.dtype == torch.float32 and a32 is gen.anchors()
    assert torch.allclose(a32.double(), gen.anchors(dtype=torch.float64), atol=1e-7)


def test_xyxy_pixels_and_layer_slices() -> None:
    gen = AnchorGenerator.preset("ssd300_voc")
    px = gen.anchors_xyxy_pixels()
    torch.testing.assert_close(px[0], torch.tensor([-11.0, -11.0, 19.0, 19.0]), atol=1e-4, rtol=0)
    sl = gen.layer_slices()
    assert [s.stop - s.start for s in sl] == gen.anchors_per_layer and sl[-1].stop == 8732


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"feature_map_sizes": []}, "at least one predictor layer"),
        ({"feature_map_sizes": [4, 2], "scales": [0.1, 0.2]}, "n_layers \\+ 1 = 3"),
        ({"feature_map_sizes": [4], "aspect_ratios": [1.0, -2.0]}, "positive"),
        ({"feature_map_sizes": [4, 2], "aspect_ratios": [[1.0]]}, "one list per predictor layer"),
        ({"feature_map_sizes": [4, 2], "steps": [8]}, "one entry per predictor layer"),
        ({"feature_map_sizes": [4], "steps": 8}, "scalar"),
        ({"feature_map_sizes": [0]}, "positive"),
        ({"feature_map_sizes": [4], "image_size": (300, 300, 3)}, "image_size"),
        ({"feature_map_sizes": [4], "min_scale": 0.9, "max_scale": 0.1}, "min_scale"),
        ({"feature_map_sizes": [4], "scales": [0.1, float("nan")]}, "finite"),
    ],
)
def test_bad_parameters_raise_clear_errors(kwargs: dict, match: str) -> None:
    base = {"image_size": 300}
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        AnchorGenerator(**base)


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown anchor preset"):
        AnchorGenerator.preset("ssd9000")
