"""Box conversions, IoU and the centroid offset encoding."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_iou as tv_box_iou

from ssdkit import boxes as B


def _rand_xyxy(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 100
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 50 + 0.5
    return torch.cat((xy, xy + wh), 1)


def test_fixed_conversions() -> None:
    b = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    assert B.xyxy_to_cxcywh(b).tolist() == [[20.0, 40.0, 20.0, 40.0]]
    assert B.xyxy_to_xywh(b).tolist() == [[10.0, 20.0, 20.0, 40.0]]
    assert B.cxcywh_to_xyxy(torch.tensor([[20.0, 40.0, 20.0, 40.0]])).tolist() == b.tolist()
    assert B.convert(b, "xyxy", "xyxy").tolist() == b.tolist()
    with pytest.raises(ValueError, match="unknown box format"):
        B.convert(b, "xyxy", "yxyx")


@pytest.mark.parametrize("fmt", ["cxcywh", "xywh"])
def test_conversion_round_trips(fmt: str) -> None:
    b = _rand_xyxy(50)
    torch.testing.assert_close(B.convert(B.convert(b, "xyxy", fmt), fmt, "xyxy"), b)
    other = "xywh" if fmt == "cxcywh" else "cxcywh"
    torch.testing.assert_close(B.convert(B.convert(b, "xyxy", fmt), fmt, other), B.convert(b, "xyxy", other))


def test_iou_matches_torchvision_and_fixed_value() -> None:
    a, b = _rand_xyxy(30, 1), _rand_xyxy(40, 2)
    torch.testing.assert_close(B.box_iou(a, b), tv_box_iou(a, b))
    one = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    half = torch.tensor([[5.0, 0.0, 15.0, 10.0]])
    assert B.box_iou(one, half).item() == pytest.approx(50 / 150)
    # batched broadcast [B, G, 4] x [N, 4]
    batched = B.box_iou(torch.stack([a[:5], a[5:10]]), b)
    torch.testing.assert_close(batched[1], tv_box_iou(a[5:10], b))
    # zero-area pairs give 0, not NaN
    z = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert B.box_iou(z, z).item() == 0.0


@settings(max_examples=100, deadline=None)
@given(
    gt=st.tuples(st.floats(-1, 2), st.floats(-1, 2), st.floats(1e-3, 3), st.floats(1e-3, 3)),
    an=st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(1e-2, 1), st.floats(1e-2, 1)),
    var=st.sampled_from([(0.1, 0.1, 0.2, 0.2), (1.0, 1.0, 1.0, 1.0), (0.2, 0.3, 0.5, 0.7)]),
)
def test_encode_decode_round_trip(gt, an, var) -> None:
    g = torch.tensor([gt], dtype=torch.float64)
    a = torch.tensor([an], dtype=torch.float64)
    torch.testing.assert_close(B.decode(B.encode(g, a, var), a, var), g, rtol=1e-9, atol=1e-9)


def test_encode_fixed_value() -> None:
    g = torch.tensor([[0.55, 0.5, 0.2, 0.4]])
    a = torch.tensor([[0.5, 0.5, 0.1, 0.2]])
    out = B.encode(g, a)
    torch.testing.assert_close(out, torch.tensor([[0.05 / 0.01, 0.0, torch.log(torch.tensor(2.0)) / 0.2,
                                                   torch.log(torch.tensor(2.0)) / 0.2]]))


def test_bad_variances() -> None:
    g = torch.ones(1, 4)
    with pytest.raises(ValueError, match="4 values"):
        B.encode(g, g, (0.1, 0.2))
    with pytest.raises(ValueError, match="positive"):
        B.decode(g, g, (0.1, 0.1, 0.0, 0.2))
