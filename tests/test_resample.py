"""resample_classes: weight sampling of the class heads (reference section 5), checked against hand-built
index lists (the Keras weight_sampling_tutorial's ``classes_of_interest + i * n_classes``)."""

from __future__ import annotations

import pytest
import torch
from models_utils import TwoMapBackbone, images

from ssdkit import checkpoint
from ssdkit.errors import ConfigError
from ssdkit.models import SSD, build_model, resample_classes


def hand_model() -> SSD:
    """4 classes (+ background): K = 5; layer 0 has 3 boxes per cell, layer 1 has 2."""
    m = SSD.from_backbone(TwoMapBackbone(4, 6), 4, 32, class_names=["cat", "dog", "cow", "owl"],
                          aspect_ratios=[[1.0, 2.0], [1.0]], min_scale=0.2, max_scale=0.8)
    with torch.no_grad():
        for layer, conv in enumerate(m.heads.cls):  # row r of layer L holds the value 100 L + r everywhere
            rows = torch.arange(conv.out_channels, dtype=torch.float32) + 100 * layer
            conv.weight.copy_(rows.view(-1, 1, 1, 1).expand_as(conv.weight))
            conv.bias.copy_(-rows)
    return m


def test_subsample_and_reorder_matches_hand_built_indices():
    m = hand_model()
    assert m.anchor_generator.boxes_per_layer == [3, 2]
    # keep cow, cat (labels 3, 1) in that order, add one class, zeros init
    new = resample_classes(m, keep=["cow", 1], add=["bird"], init="zeros")
    assert new.n_classes == 3 and new.class_names == ["cow", "cat", "bird"]
    assert new.config["n_classes"] == 3 and new.config["class_names"] == ["cow", "cat", "bird"]
    k_old, keep = 5, [0, 3, 1]  # background always first
    for layer, (conv, boxes) in enumerate(zip(new.heads.cls, [3, 2])):
        assert conv.out_channels == boxes * 4
        expected = []
        for slot in range(boxes):  # same order in every box slot, then the new class
            expected += [100 * layer + slot * k_old + c for c in keep] + [None]
        got = conv.weight[:, 0, 0, 0].tolist()
        assert [None if e is None else float(e) for e in expected] == [
            None if e is None else g for e, g in zip(expected, got)]
        for e, g, b in zip(expected, got, conv.bias.tolist()):
            if e is None:
                assert g == 0.0 and b == 0.0  # new class: zeros
            else:
                assert b == -e
    # box heads and backbone untouched, the input model unchanged
    for a, b in zip(m.heads.box.parameters(), new.heads.box.parameters()):
        assert torch.equal(a, b)
    assert m.n_classes == 4 and m.heads.cls[0].out_channels == 15


def test_resampled_model_scores_are_the_kept_columns():
    torch.manual_seed(0)
    m = build_model("toy_ssd", 5, class_names=list("abcde")).eval()
    new = resample_classes(m, keep=["d", "b"]).eval()
    x = images(2, 128, 128)
    with torch.no_grad():
        (c_old, b_old), (c_new, b_new) = m(x), new(x)
    assert torch.equal(c_new, c_old[..., [0, 4, 2]])
    assert torch.equal(b_new, b_old)
    assert new.heads.n_outputs == 3 and c_new.shape[-1] == 3


def test_new_classes_are_normal_0_005():
    m = build_model("ssd300_mobilenet_v1", 2, width=0.25, head_kernel=1)
    g = torch.Generator().manual_seed(0)
    new = resample_classes(m, add=3, generator=g)
    assert new.class_names == ["class_1", "class_2", "class_3", "class_4", "class_5"]
    added = []
    for conv in new.heads.cls:
        w = conv.weight.view(-1, 6, *conv.weight.shape[1:])  # [A, K=6, ...]: classes 3..5 are new
        added.append(w[:, 3:].reshape(-1))
        assert torch.all(conv.bias.view(-1, 6)[:, 3:] == 0)
    added = torch.cat(added).detach()
    assert added.numel() > 10_000
    assert abs(float(added.std()) - 0.005) < 2e-4 and abs(float(added.mean())) < 2e-4


def test_state_dict_and_checkpoint_inputs(tmp_path):
    m = hand_model()
    state = m.state_dict()
    new_state = resample_classes(state, keep=[2], add=1, init="zeros")
    assert new_state["heads.cls.0.weight"].shape == (3 * 3, 4, 3, 3)
    assert new_state["heads.cls.0.weight"][:, 0, 0, 0].tolist() == [0.0, 2.0, 0.0, 5.0, 7.0, 0.0, 10.0, 12.0, 0.0]
    assert torch.equal(new_state["heads.box.1.weight"], state["heads.box.1.weight"])
    with pytest.raises(ConfigError, match="source has no class names"):
        resample_classes(state, keep=["dog"])
    # a checkpoint dict: config and names follow; the result loads as a model
    toy = build_model("toy_ssd", 3, class_names=["x", "y", "z"])
    path = checkpoint.save(tmp_path / "toy.pt", toy)
    ck = resample_classes(checkpoint.load_checkpoint(path), keep=["z", "x"], add=["w"])
    assert ck["model"]["n_classes"] == 3 and ck["class_names"] == ["z", "x", "w"]
    torch.save(ck, tmp_path / "resampled.pt")
    back = checkpoint.load(tmp_path / "resampled.pt")
    assert back.class_names == ["z", "x", "w"] and back.heads.cls[0].out_channels == 4 * 4


def test_ssdlite_separable_heads_resample_their_final_conv():
    m = build_model("ssdlite320_mobilenet_v3_large", 4, image_size=160)
    new = resample_classes(m, keep=[4])
    assert new.n_classes == 1
    for old_head, new_head in zip(m.heads.cls, new.heads.cls):
        assert torch.equal(old_head.dw[0].weight, new_head.dw[0].weight)  # depthwise part untouched
        w = old_head.pred.weight.view(6, 5, -1)
        assert torch.equal(new_head.pred.weight.view(6, 2, -1), w[:, [0, 4]])


def test_bad_arguments():
    m = hand_model()
    with pytest.raises(ConfigError, match="background is always kept"):
        resample_classes(m, keep=[0, 1])
    with pytest.raises(ConfigError, match=r"out of range 1\.\.4"):
        resample_classes(m, keep=[5])
    with pytest.raises(ConfigError, match="'emu' is not in the source classes"):
        resample_classes(m, keep=["emu"])
    with pytest.raises(ConfigError, match="duplicates"):
        resample_classes(m, keep=[1, "cat"])
    with pytest.raises(ConfigError, match="empty"):
        resample_classes(m, keep=[])
    with pytest.raises(ConfigError, match="init"):
        resample_classes(m, init="uniform")
    with pytest.raises(ConfigError, match="not unique"):
        resample_classes(m, keep=[1], add=["cat"])
