"""Anchor coverage and fitting on generated box distributions with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssdkit.anchor_analysis import best_anchor_iou, plot_anchor_coverage
from ssdkit.anchors import AnchorGenerator, coverage, fit_anchors
from ssdkit.boxes import box_iou


def brute_force_best(boxes: torch.Tensor, gen: AnchorGenerator) -> torch.Tensor:
    return box_iou(boxes.double(), gen.anchors_xyxy_pixels().double()).max(dim=1).values


@pytest.mark.parametrize("clip", [False, True])
def test_best_iou_equals_brute_force(clip: bool) -> None:
    gen = AnchorGenerator((300, 400), [(19, 25), (10, 13), (5, 7), (3, 4)], scales=[0.1, 0.25, 0.45, 0.7, 0.95],
                          aspect_ratios=[1.0, 2.0, 0.5, 3.0], clip_boxes=clip)
    rng = np.random.default_rng(0)
    side = np.exp(rng.uniform(np.log(3), np.log(380), 400))
    ar = np.exp(rng.normal(0, 0.7, 400))
    w, h = side * np.sqrt(ar), side / np.sqrt(ar)
    x0, y0 = rng.uniform(-20, 400, 400), rng.uniform(-20, 300, 400)
    boxes = torch.tensor(np.stack([x0, y0, x0 + w, y0 + h], 1))
    best, layer = best_anchor_iou(boxes, gen)
    # anchor pixels from normalised anchors differ from the encoder's normalised IoU by rounding only
    np.testing.assert_allclose(best.numpy(), brute_force_best(boxes, gen).numpy(), atol=1e-6)
    assert layer.min() >= 0 and layer.max() < gen.n_layers


def test_boxes_equal_to_anchors_are_fully_covered() -> None:
    gen = AnchorGenerator.preset("ssd300_voc")
    a = gen.anchors_xyxy_pixels()
    idx = torch.randperm(a.shape[0], generator=torch.Generator().manual_seed(0))[:300]
    rep = coverage([a[idx[:150]], a[idx[150:]]], gen, labels=[torch.ones(150), torch.full((150,), 2)],
                   class_names=["cat", "dog"])
    assert rep.n_boxes == 300
    assert rep.frac_pos == 1.0 and rep.frac_below == 0.0
    assert rep.mean_best_iou == pytest.approx(1.0, abs=1e-6)
    assert set(rep.by_class) == {"cat", "dog"} and rep.by_class["cat"]["frac_pos"] == 1.0
    assert rep.mean_positives is not None and rep.mean_positives >= 1.0
    assert "100.0%" in rep.summary()


def test_boxes_far_smaller_than_the_smallest_anchor_are_not_covered() -> None:
    gen = AnchorGenerator.preset("ssd300_voc")  # smallest anchor side 21 px
    xy = torch.rand(200, 2, generator=torch.Generator().manual_seed(1)) * 290
    tiny = torch.cat([xy, xy + 4.0], 1)  # 4x4 px: best IoU <= 16 / (21.2 * 42.4) < 0.02
    rep = coverage([tiny], gen)
    assert rep.frac_pos == 0.0 and rep.frac_neutral == 0.0 and rep.frac_below == 1.0
    assert rep.by_size["tiny (<16px)"]["boxes"] == 200
    # every box still gets its one bipartite anchor
    assert rep.mean_positives == pytest.approx(1.0)


def test_fit_improves_coverage_at_the_same_anchor_count() -> None:
    gen = AnchorGenerator.preset("ssd300_voc")
    rng = np.random.default_rng(2)
    # small objects (10-20 px, like platelets at 300 px): the VOC scales start at 30 px
    side = rng.uniform(10, 20, 600)
    ar = np.exp(rng.normal(0, 0.2, 600))
    w, h = side * np.sqrt(ar), side / np.sqrt(ar)
    x0, y0 = rng.uniform(0, 270, 600), rng.uniform(0, 270, 600)
    boxes = torch.tensor(np.stack([x0, y0, x0 + w, y0 + h], 1))
    res = fit_anchors([boxes], gen)
    assert res.before.frac_pos < 0.05
    # the 8 px stride of the first layer caps it: a 15 px box 4 px off-centre reaches IoU 0.37 at best
    assert res.after.frac_pos > 0.7
    fitted = AnchorGenerator(**{**gen.config(), "scales": res.scales, "aspect_ratios": res.aspect_ratios})
    assert fitted.num_anchors == gen.num_anchors
    assert res.scales == sorted(res.scales)
    assert "scales: [" in res.yaml_snippet()


def test_fit_aspect_ratios_keeps_counts() -> None:
    gen = AnchorGenerator(300, [(19, 19), (10, 10)], scales=[0.1, 0.3, 0.6], aspect_ratios=[1.0, 2.0, 0.5])
    rng = np.random.default_rng(3)
    side = rng.uniform(30, 120, 500)
    ar = np.full(500, 4.0)  # very wide boxes
    w, h = side * np.sqrt(ar), side / np.sqrt(ar)
    x0, y0 = rng.uniform(0, 300 - w), rng.uniform(0, 300 - h)
    boxes = torch.tensor(np.stack([x0, y0, x0 + w, y0 + h], 1))
    res = fit_anchors(boxes, gen, fit_aspect_ratios=True)
    assert [len(a) for a in res.aspect_ratios] == [3, 3]
    assert res.after.frac_pos >= res.before.frac_pos
    assert max(max(a) for a in res.aspect_ratios) > 2.0


def test_empty_and_bad_inputs(tmp_path) -> None:
    gen = AnchorGenerator(100, [4])
    rep = coverage([torch.zeros(0, 4)], gen)
    assert rep.n_boxes == 0 and rep.frac_pos == 0.0
    with pytest.raises(ValueError, match="no valid boxes"):
        fit_anchors([torch.zeros(0, 4)], gen)
    with pytest.raises(ValueError, match="labels give 1 boxes but boxes give 2"):
        coverage([torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20]])], gen, labels=[torch.tensor([1])])
    out = plot_anchor_coverage([torch.tensor([[0.0, 0, 10, 10], [5, 5, 60, 30]])], gen, tmp_path / "cov.png")
    assert out.stat().st_size > 1000
