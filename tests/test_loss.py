"""MultiBoxLoss against a slow per-anchor reference (section 3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.reference_numpy import loss_numpy
from ssdkit.loss import MultiBoxLoss


def slow_reference(logits, deltas, labels, targets, ratio=3, n_neg_min=0, alpha=1.0, per_image=False):
    """Per-anchor Python loops: the formula of the reference document, nothing vectorised."""
    b, n, _ = logits.shape
    ce = [[0.0] * n for _ in range(b)]
    for i in range(b):
        for j in range(n):
            row = [float(v) for v in logits[i, j]]
            m = max(row)
            lse = m + math.log(sum(math.exp(v - m) for v in row))
            ce[i][j] = lse - row[max(0, int(labels[i, j]))]
    n_pos = sum(1 for i in range(b) for j in range(n) if labels[i, j] > 0)
    pos_ce = sum(ce[i][j] for i in range(b) for j in range(n) if labels[i, j] > 0)
    loc = 0.0
    for i in range(b):
        for j in range(n):
            if labels[i, j] > 0:
                for k in range(4):
                    d = abs(float(deltas[i, j, k]) - float(targets[i, j, k]))
                    loc += 0.5 * d * d if d < 1 else d - 0.5
    if per_image:
        neg_sum = 0.0
        for i in range(b):
            negs = sorted((ce[i][j] for j in range(n) if labels[i, j] == 0), reverse=True)
            nz = sum(1 for v in negs if v != 0)
            k = min(max(int(ratio * sum(1 for j in range(n) if labels[i, j] > 0)), n_neg_min), nz)
            neg_sum += sum(negs[:k])
    else:
        negs = sorted((ce[i][j] for i in range(b) for j in range(n) if labels[i, j] == 0), reverse=True)
        nz = sum(1 for v in negs if v != 0)
        k = min(max(int(ratio * n_pos), n_neg_min), nz)
        neg_sum = sum(negs[:k])
    d = max(1, n_pos)
    return {"loss": (pos_ce + neg_sum + alpha * loc) / d, "cls_loss": (pos_ce + neg_sum) / d, "box_loss": loc / d}


def random_inputs(seed: int, b: int = 2, n: int = 40, c: int = 4, p_pos: float = 0.15, p_neutral: float = 0.1):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, n, c + 1, generator=g, dtype=torch.float64) * 2
    deltas = torch.randn(b, n, 4, generator=g, dtype=torch.float64) * 1.5
    r = torch.rand(b, n, generator=g)
    labels = torch.zeros(b, n, dtype=torch.int64)
    labels[r < p_pos] = torch.randint(1, c + 1, (int((r < p_pos).sum()),), generator=g)
    labels[(r >= p_pos) & (r < p_pos + p_neutral)] = -1
    targets = torch.randn(b, n, 4, generator=g, dtype=torch.float64) * (labels > 0)[..., None]
    return logits, deltas, labels, targets


@pytest.mark.parametrize("mining", ["batch", "per_image"])
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), ratio=st.sampled_from([0, 1, 3, 7]), n_neg_min=st.sampled_from([0, 5, 1000]),
       alpha=st.sampled_from([1.0, 0.5, 2.0]), p_pos=st.sampled_from([0.0, 0.05, 0.3]))
def test_matches_slow_reference(mining, seed, ratio, n_neg_min, alpha, p_pos) -> None:
    logits, deltas, labels, targets = random_inputs(seed, p_pos=p_pos)
    out = MultiBoxLoss(ratio, n_neg_min, alpha, mining)(logits, deltas, labels, targets)
    ref = slow_reference(logits, deltas, labels, targets, ratio, n_neg_min, alpha, per_image=mining == "per_image")
    for key in ("loss", "cls_loss", "box_loss"):
        assert float(out[key]) == pytest.approx(ref[key], rel=1e-4, abs=1e-5), key


def test_matches_numpy_reference_large() -> None:
    logits, deltas, labels, targets = random_inputs(7, b=4, n=2000, c=20, p_pos=0.01, p_neutral=0.05)
    out = MultiBoxLoss()(logits.float(), deltas.float(), labels, targets.float())
    ref = loss_numpy(logits.numpy(), deltas.numpy(), labels.numpy(), targets.numpy())
    for key in ref:
        assert float(out[key]) == pytest.approx(ref[key], rel=1e-4)


def test_fixed_value() -> None:
    # one positive (class 1) and three negatives; neg_pos_ratio 1 keeps the hardest negative only
    logits = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [0.0, 3.0], [0.0, -2.0]]])
    labels = torch.tensor([[1, 0, 0, 0]])
    deltas = torch.tensor([[[0.5, 0.0, 2.0, 0.0], [9.0, 9.0, 9.0, 9.0], [0.0] * 4, [0.0] * 4]])
    out = MultiBoxLoss(neg_pos_ratio=1)(logits, deltas, labels, torch.zeros(1, 4, 4))
    ce_pos = math.log(2.0)
    ce_hard = math.log(1 + math.exp(3.0))
    assert float(out["cls_loss"]) == pytest.approx(ce_pos + ce_hard, rel=1e-6)
    assert float(out["box_loss"]) == pytest.approx(0.125 + 1.5, rel=1e-6)
    assert float(out["loss"]) == pytest.approx(ce_pos + ce_hard + 1.625, rel=1e-6)
    assert float(out["n_pos"]) == 1 and float(out["n_neg"]) == 1


def test_neutral_anchors_are_ignored_and_gradients_flow() -> None:
    logits, deltas, labels, targets = random_inputs(3)
    logits.requires_grad_(True)
    deltas.requires_grad_(True)
    out = MultiBoxLoss()(logits, deltas, labels, targets)
    out["loss"].backward()
    neutral = labels == -1
    assert neutral.any()
    assert (logits.grad[neutral] == 0).all() and (deltas.grad[labels <= 0] == 0).all()
    assert logits.grad[labels > 0].abs().sum() > 0


def test_no_positives_and_no_negatives() -> None:
    logits = torch.randn(2, 10, 3)
    out = MultiBoxLoss()(logits, torch.zeros(2, 10, 4), torch.zeros(2, 10, dtype=torch.long), torch.zeros(2, 10, 4))
    assert float(out["loss"]) == 0.0  # k = min(3 * 0, ...) = 0 negatives
    out = MultiBoxLoss(n_neg_min=4)(logits, torch.zeros(2, 10, 4), torch.zeros(2, 10, dtype=torch.long),
                                    torch.zeros(2, 10, 4))
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 3), torch.zeros(20, dtype=torch.long),
                                                 reduction="none").topk(4).values.sum()
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-6)
    all_neutral = torch.full((2, 10), -1, dtype=torch.long)
    out = MultiBoxLoss()(logits, torch.zeros(2, 10, 4), all_neutral, torch.zeros(2, 10, 4))
    assert float(out["loss"]) == 0.0


@pytest.mark.parametrize(
    ("shape_change", "match"),
    [("deltas", "box_deltas must be"), ("labels", "labels must be"), ("targets", "box_targets must be"),
     ("range", "labels must be in -1..2")],
)
def test_bad_shapes(shape_change: str, match: str) -> None:
    logits, deltas = torch.randn(2, 10, 3), torch.randn(2, 10, 4)
    labels, targets = torch.zeros(2, 10, dtype=torch.long), torch.zeros(2, 10, 4)
    if shape_change == "deltas":
        deltas = deltas[:, :9]
    elif shape_change == "labels":
        labels = labels[:1]
    elif shape_change == "targets":
        targets = targets[..., :2]
    else:
        labels[0, 0] = 3
    with pytest.raises(ValueError, match=match):
        MultiBoxLoss()(logits, deltas, labels, targets)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="mining"):
        MultiBoxLoss(mining="online")
    with pytest.raises(ValueError, match="neg_pos_ratio"):
        MultiBoxLoss(neg_pos_ratio=-1)


def test_numpy_reference_agrees_with_slow_reference() -> None:
    logits, deltas, labels, targets = random_inputs(99)
    ref = slow_reference(logits, deltas, labels, targets)
    ref2 = loss_numpy(logits.numpy(), deltas.numpy(), labels.numpy(), targets.numpy())
    assert np.isclose(ref["loss"], ref2["loss"], rtol=1e-9)
