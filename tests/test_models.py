"""ssdkit.models: architectures (layer structure, parameter and anchor counts), forward/backward,
output layout, predict/encoder integration, export, pretrained weights and the registry."""

from __future__ import annotations

import math
import os

import pytest
import torch
from models_utils import TwoMapBackbone, images
from torch import nn

import ssdkit
from ssdkit.anchors import AnchorGenerator
from ssdkit.checkpoint import save
from ssdkit.errors import ConfigError
from ssdkit.models import SSD, build_model, count_macs, list_models, register_model
from ssdkit.models.registry import _CUSTOM
from ssdkit.models.vgg import fc_to_conv, torchvision_vgg16_to_ssd
from ssdkit.models.weights import WeightsNotFoundError

ALL = ["ssd300_vgg16", "ssd512_vgg16", "ssd7", "ssd300_mobilenet_v1", "ssdlite320_mobilenet_v2",
       "ssdlite320_mobilenet_v3_large", "toy_ssd"]


# ------------------------------------------------------------------------------------------ helpers
def conv_params(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def keras_ssd_vgg_params(n_classes_with_bg: int, variant: int) -> int:
    """Parameter count of the Keras SSD300/SSD512 model, layer by layer (keras_ssd300.py / keras_ssd512.py)."""
    vgg = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
           (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    n = sum(conv_params(a, b, 3) for a, b in vgg)
    n += conv_params(512, 1024, 3) + conv_params(1024, 1024, 1)  # fc6 (dilated), fc7
    extras = [(1024, 256, 1), (256, 512, 3), (512, 128, 1), (128, 256, 3), (256, 128, 1), (128, 256, 3),
              (256, 128, 1), (128, 256, 3)]
    if variant == 512:
        extras += [(256, 128, 1), (128, 256, 4)]  # conv10_1, conv10_2
    n += sum(conv_params(a, b, k) for a, b, k in extras)
    n += 512  # conv4_3_norm gamma
    sources = [512, 1024, 512, 256, 256, 256] + ([256] if variant == 512 else [])
    boxes = [4, 6, 6, 6, 4, 4] if variant == 300 else [4, 6, 6, 6, 6, 4, 4]
    for c, b in zip(sources, boxes):
        n += conv_params(c, b * n_classes_with_bg, 3) + conv_params(c, b * 4, 3)
    return n


def keras_ssd7_total_params(n_classes_with_bg: int) -> int:
    """Keras SSD7 'Total params' (trainable + BN moving mean/variance), keras_ssd7.py."""
    widths = [(3, 32, 5), (32, 48, 3), (48, 64, 3), (64, 64, 3), (64, 48, 3), (48, 48, 3), (48, 32, 3)]
    n = sum(conv_params(a, b, k) + 4 * b for a, b, k in widths)  # conv + BN gamma/beta/mean/var
    for c in (64, 48, 48, 32):
        n += conv_params(c, 4 * n_classes_with_bg, 3) + conv_params(c, 4 * 4, 3)
    return n


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------------------------------ architecture facts
def test_ssd300_and_ssd512_parameter_counts_equal_keras():
    m300 = build_model("ssd300_vgg16", 20)
    assert n_params(m300) == keras_ssd_vgg_params(21, 300) == 26_285_486
    m512 = build_model("ssd512_vgg16", 20)
    assert n_params(m512) == keras_ssd_vgg_params(21, 512) == 27_188_676
    # layer structure: Keras layer names are the module names, pool5 3x3/1, fc6 dilated 6, L2Norm at 20
    base = m300.backbone.base
    assert isinstance(base.pool5, nn.MaxPool2d) and base.pool5.kernel_size == 3 and base.pool5.stride == 1
    assert base.fc6.dilation == (6, 6) and base.fc6.out_channels == 1024 and base.fc7.kernel_size == (1, 1)
    assert torch.all(m300.backbone.conv4_3_norm.weight == 20.0)
    assert m512.backbone.extras.conv10_2.kernel_size == (4, 4)


def test_ssd7_parameter_count_equals_keras():
    m = build_model("ssd7", 5)
    bn_stats = sum(b.numel() for k, b in m.named_buffers() if k.endswith(("running_mean", "running_var")))
    # conv 143,280 + BN gamma/beta 672 + heads 41,568 (classes) + 27,712 (boxes); Keras adds 672 moving stats
    assert n_params(m) == 213_232
    assert n_params(m) + bn_stats == keras_ssd7_total_params(6) == 213_904


def test_architectures_match_torchvision_parameter_for_parameter():
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    tv = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=91)
    ours = build_model("ssdlite320_mobilenet_v3_large", 90)  # no ImageNet weights -> reduced tail, as torchvision
    assert ours.config["reduced_tail"] is True
    assert n_params(ours) == n_params(tv) == 3_440_060
    assert count_macs(ours, 320) == 583_171_904  # torchvision lists 0.583 G "ops" for this model
    assert n_params(build_model("ssd300_vgg16", 90)) == 35_641_826  # torchvision ssd300_vgg16, 91 classes


EXPECTED = {
    # name: (default (H, W), feature maps, anchors)
    "ssd300_vgg16": ((300, 300), [38, 19, 10, 5, 3, 1], 8732),
    "ssd512_vgg16": ((512, 512), [64, 32, 16, 8, 4, 2, 1], 24564),
    "ssd7": ((300, 480), [(37, 60), (18, 30), (9, 15), (4, 7)], 11692),
    "ssd300_mobilenet_v1": ((300, 300), [18, 9, 5, 3, 2, 1], 2006),
    "ssdlite320_mobilenet_v2": ((320, 320), [20, 10, 5, 3, 2, 1], 3234),
    "ssdlite320_mobilenet_v3_large": ((320, 320), [20, 10, 5, 3, 2, 1], 3234),
    "toy_ssd": ((128, 128), [32, 16, 8], 5376),
}


@pytest.mark.parametrize("name", ALL)
def test_default_sizes_feature_maps_and_anchor_counts(name):
    size, fms, n_anchors = EXPECTED[name]
    m = build_model(name, 20)
    assert m.image_size == size
    assert m.feature_map_sizes == [f if isinstance(f, tuple) else (f, f) for f in fms]
    assert m.num_anchors == n_anchors == m.anchors.shape[0]
    assert m.anchors.dtype == torch.float32 and m.anchors.shape == (n_anchors, 4)
    # the anchors are exactly the generator's, and the config rebuilds the same architecture
    assert torch.equal(m.anchors, m.anchor_generator.anchors())
    again = build_model(**m.config)
    assert torch.equal(again.anchors, m.anchors)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}
    assert again.config == m.config


def test_ssd300_default_anchors_are_the_voc_preset():
    m = build_model("ssd300_vgg16", 20)
    assert torch.equal(m.anchors, AnchorGenerator.preset("ssd300_voc").anchors())
    assert m.mean == [123.0, 117.0, 104.0] and m.std == [1.0, 1.0, 1.0] and m.swap_channels == [2, 1, 0]
    m512 = build_model("ssd512_vgg16", 20)
    assert torch.equal(m512.anchors, AnchorGenerator.preset("ssd512_voc").anchors())
    s7 = build_model("ssd7", 2)
    assert s7.variances == (1.0, 1.0, 1.0, 1.0) and s7.mean == [127.5] * 3 and s7.std == [127.5] * 3


@pytest.mark.parametrize(
    "name,size,fms",
    [
        ("ssd7", (240, 320), [(30, 40), (15, 20), (7, 10), (3, 5)]),
        ("ssd300_vgg16", (512, 512), [64, 32, 16, 8, 6, 4]),
        ("ssd512_vgg16", (300, 300), [38, 19, 10, 5, 3, 2, 1]),
        ("ssd300_mobilenet_v1", (224, 320), [(14, 20), (7, 10), (4, 5), (2, 3), (1, 2), (1, 1)]),
        ("ssdlite320_mobilenet_v2", (256, 384), [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]),
        ("toy_ssd", (64, 96), [(16, 24), (8, 12), (4, 6)]),
    ],
)
def test_non_default_sizes_measure_feature_maps(name, size, fms):
    m = build_model(name, 3, image_size=size)
    assert m.image_size == size
    assert m.feature_map_sizes == [f if isinstance(f, tuple) else (f, f) for f in fms]
    # preset steps only hold at the default size; elsewhere the grid is H / f_h, W / f_w
    assert m.config["steps"] is None
    gen = m.anchor_generator
    assert m.num_anchors == sum(h * w * b for (h, w), b in zip(gen.feature_map_sizes, gen.boxes_per_layer))


@pytest.mark.parametrize(("name", "c3_channels"), [("ssdlite320_mobilenet_v2", 192),
                                                   ("ssdlite320_mobilenet_v3_large", 240)])
def test_ssdlite_stride8_adds_the_c3_map_and_a_default_scale(name, c3_channels, tmp_path):
    """stride8=True: the C3 expansion (stride 8) predicts too; default scales gain 0.1 in front, the
    other maps, their weights' names and the stride-16/32 outputs are those of the plain model."""
    plain = build_model(name, 3, image_size=(288, 384)).eval()
    m = build_model(name, 3, image_size=(288, 384), stride8=True).eval()
    assert m.feature_map_sizes == [(36, 48), *plain.feature_map_sizes]
    assert m.config["scales"] == [0.1, *plain.config["scales"]] and m.config["stride8"] is True
    assert m.num_anchors == plain.num_anchors + 36 * 48 * 6
    feats = m.backbone(torch.zeros(1, 3, 288, 384))
    assert feats[0].shape[1] == c3_channels and len(feats) == 7
    # same backbone weights -> same stride-16 and later maps (the split moves no layer)
    m.backbone.load_state_dict(_remap_stride8(plain.backbone.state_dict(), m.backbone.state_dict()))
    x = torch.rand(1, 3, 288, 384)
    for a, b in zip(plain.backbone(x), m.backbone(x)[1:]):
        torch.testing.assert_close(a, b)
    # explicit scales must match the 7 layers, with a clear message otherwise
    with pytest.raises(ConfigError, match="n_layers \\+ 1 = 8"):
        build_model(name, 3, stride8=True, scales=[0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0])
    with pytest.raises(ConfigError, match="stride8 must be true or false"):
        build_model(name, 3, stride8="yes")
    save(tmp_path / "s8.pt", m)
    again = ssdkit.load(tmp_path / "s8.pt").eval()
    torch.testing.assert_close(again(x * 255)[0], m(x * 255)[0])


def test_null_scales_and_aspect_ratios_mean_the_model_default():
    """``model.scales=null`` on the command line (a config's fitted scales switched off) gives the
    model's default anchors, stride-8 layer included; ``None`` with min/max still means linspace."""
    fitted = [0.07566, 0.2, 0.2723, 0.6427, 0.65, 0.8, 0.95, 1.0]
    m = build_model("ssdlite320_mobilenet_v2", 3, image_size=(288, 384), stride8=True, scales=None,
                    aspect_ratios=None)
    assert m.config["scales"] == [0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0] != fitted
    assert m.anchor_generator.boxes_per_layer == [6] * 7
    lin = build_model("ssd7", 3, scales=None, min_scale=0.1, max_scale=0.5)
    assert lin.config["scales"] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


def _remap_stride8(plain: dict, target: dict) -> dict:
    """The plain backbone's tensors under the stride-8 split's names (same order, same shapes)."""
    src = [v for k, v in plain.items() if not k.startswith("extras.")]
    dst = [k for k in target if not k.startswith("extras.")]
    assert [tuple(v.shape) for v in src] == [tuple(target[k].shape) for k in dst]
    out = dict(zip(dst, src))
    out.update({k: v for k, v in plain.items() if k.startswith("extras.")})
    return out


# ------------------------------------------------------------------------------------------ forward / backward
FWD_SIZES = {
    "ssd300_vgg16": (264, 264),  # smallest sizes that keep conv9_2 / conv10_2 >= 1x1: fast but real
    "ssd512_vgg16": (264, 264),
    "ssd7": (300, 480),  # the traffic example's size
    "ssd300_mobilenet_v1": (160, 160),
    "ssdlite320_mobilenet_v2": (160, 160),
    "ssdlite320_mobilenet_v3_large": (160, 192),
    "toy_ssd": (128, 128),
}


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_shapes(name):
    torch.manual_seed(0)
    m = build_model(name, 4, image_size=FWD_SIZES[name])
    h, w = m.image_size
    b = 1 if "vgg" in name else 2  # VGG: batch 1 keeps the test fast (no BN, so batch 1 trains fine)
    x = images(b, h, w)
    cls, box = m(x)
    assert cls.shape == (b, m.num_anchors, 5) and box.shape == (b, m.num_anchors, 4)
    assert cls.dtype == box.dtype == torch.float32
    assert torch.isfinite(cls).all() and torch.isfinite(box).all()
    (cls.logsumexp(-1).mean() + box.square().mean()).backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_head_kernel_1_variant_of_mobilenet_v1():
    m3 = build_model("ssd300_mobilenet_v1", 20)
    m1 = build_model("ssd300_mobilenet_v1", 20, head_kernel=1)
    assert all(c.kernel_size == (1, 1) for c in m1.heads.cls)
    # heads: sum over layers of (3x3 - 1x1) * cin * boxes * (21 + 4)
    cins, boxes = [512, 1024, 512, 256, 256, 128], [4, 6, 6, 6, 4, 4]
    assert n_params(m3) - n_params(m1) == sum(8 * c * b * 25 for c, b in zip(cins, boxes))
    cls, _ = m1.eval()(images(1, 300, 300))  # eval: BN cannot train on 1x1 maps with batch 1
    assert cls.shape == (1, 2006, 21)


def test_uint8_and_float_inputs_agree_and_normalisation_is_keras_order():
    m = build_model("ssd300_vgg16", 2)
    x = images(2, 300, 300)
    # Keras: subtract mean (given in RGB order), divide std, then RGB -> BGR
    expected = (x.float() - torch.tensor([123.0, 117.0, 104.0]).view(1, 3, 1, 1))[:, [2, 1, 0]]
    assert torch.equal(m.input_norm(x), expected)
    assert torch.equal(m.input_norm(x.float()), expected)
    toy = build_model("toy_ssd", 2, mean=[10.0, 20.0, 30.0], std=[2.0, 4.0, 8.0], swap_channels=[1, 2, 0]).eval()
    y = images(2, 128, 128)
    mean, std = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1), torch.tensor([2.0, 4.0, 8.0]).view(1, 3, 1, 1)
    expected = (y.float() - mean) / std
    assert torch.allclose(toy.input_norm(y), expected[:, [1, 2, 0]], atol=1e-6)
    with torch.no_grad():
        a, b = toy(y), toy(y.float())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_output_layout_is_layer_row_column_box_and_box_major_channels():
    """Flattened output n belongs to anchor n; class conv channel = box * (C+1) + class."""

    m = SSD.from_backbone(TwoMapBackbone(4, 4, stride=4), n_classes=2, image_size=(32, 48),
                          aspect_ratios=[1.0, 2.0, 0.5], min_scale=0.2, max_scale=0.8).eval()
    k = 3  # classes incl. background
    gen = m.anchor_generator
    assert gen.feature_map_sizes == [(8, 12), (4, 6)] and gen.boxes_per_layer == [4, 4]
    with torch.no_grad():
        for conv in [*m.heads.cls, *m.heads.box]:
            conv.weight.zero_()
        # encode (box slot, class) in the biases: the output must carry them at anchor n's slot
        for layer, conv in enumerate(m.heads.cls):
            conv.bias.copy_(torch.arange(conv.out_channels, dtype=torch.float32) + 100 * layer)
        for layer, conv in enumerate(m.heads.box):
            conv.bias.copy_(torch.arange(conv.out_channels, dtype=torch.float32) + 100 * layer)
        cls, box = m(images(1, 32, 48))
    n = 0
    for layer, ((fh, fw), nb) in enumerate(zip(gen.feature_map_sizes, gen.boxes_per_layer)):
        for _row in range(fh):
            for _col in range(fw):
                for slot in range(nb):
                    assert cls[0, n].tolist() == [100 * layer + slot * k + c for c in range(k)]
                    assert box[0, n].tolist() == [100 * layer + slot * 4 + j for j in range(4)]
                    n += 1
    assert n == m.num_anchors


# ------------------------------------------------------------------------------------------ predict / encoder
def test_predict_matches_decode_and_maps_back_with_inverse():
    from ssdkit.postprocess import decode_detections

    torch.manual_seed(0)
    m = build_model("toy_ssd", 3)
    with torch.no_grad():
        for conv in m.heads.cls:  # a few confident foreground anchors
            conv.bias.view(-1, 4)[:, 0] = 2.0
    x = images(2, 128, 128)
    assert m.training
    dets = m.predict(x, confidence_thresh=0.3)
    assert m.training  # mode restored
    with torch.no_grad():
        m.eval()
        cls, box = m(x)
        ref = decode_detections(cls, box, m.anchors, m.image_size, confidence_thresh=0.3, variances=m.variances)
    assert len(dets) == 2 and all(torch.equal(a, b) for a, b in zip(dets, ref))
    assert sum(len(d) for d in dets) > 0 and all(d.shape[1] == 6 for d in dets)
    # inverse (sx, sy, ox, oy): orig = (net - o) / s, clipped to the original image
    inv = torch.tensor([[0.5, 0.25, 0.0, 0.0], [2.0, 2.0, 10.0, 4.0]])
    orig = m.predict(x, confidence_thresh=0.3, inverse=inv, orig_size=[[256, 512], [59, 54]])
    for d, o, (sx, sy, ox, oy), (hh, ww) in zip(dets, orig, inv.tolist(), [(256, 512), (59, 54)]):
        assert torch.equal(d[:, :2], o[:, :2])
        expect = (d[:, 2:].double() - torch.tensor([ox, oy, ox, oy], dtype=torch.float64)) / torch.tensor(
            [sx, sy, sx, sy], dtype=torch.float64)
        expect[:, 0::2] = expect[:, 0::2].clamp(0, ww)
        expect[:, 1::2] = expect[:, 1::2].clamp(0, hh)
        assert torch.allclose(o[:, 2:].double(), expect, atol=1e-4)
    single = m.predict(x[0], confidence_thresh=0.3)
    assert len(single) == 1 and torch.equal(single[0], dets[0])


def test_make_encoder_uses_model_anchors_and_variances():
    from ssdkit.loss import MultiBoxLoss

    m = build_model("ssd7", 2, image_size=(120, 160))
    enc = m.make_encoder(neg_iou_limit=0.4)
    assert enc.num_anchors == m.num_anchors and enc.variances == m.variances == (1.0, 1.0, 1.0, 1.0)
    assert enc.image_size == (120, 160) and enc.n_classes == 2 and enc.neg_iou_limit == 0.4
    labels, targets = enc([torch.tensor([[10.0, 20.0, 60.0, 90.0]])], [torch.tensor([2])])
    assert labels.shape == (1, m.num_anchors) and int((labels == 2).sum()) >= 1
    cls, box = m(images(1, 120, 160))
    loss = MultiBoxLoss()(cls, box, labels, targets)
    assert torch.isfinite(next(iter(loss.values())) if isinstance(loss, dict) else loss)
    with pytest.raises(TypeError, match="comes from the model"):
        m.make_encoder(variances=(0.1, 0.1, 0.2, 0.2))


# ------------------------------------------------------------------------------------------ errors
def test_unknown_model_and_option_errors_list_choices():
    with pytest.raises(ConfigError, match=r"unknown model 'ssd1000'.*ssd300_vgg16.*toy_ssd"):
        build_model("ssd1000", 3)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['head_kernal'\].*head_kernel"):
        build_model("ssd7", 3, head_kernal=1)
    with pytest.raises(ConfigError, match="reduced_tail"):
        build_model("toy_ssd", 3, reduced_tail=True)


def test_bad_values_give_clear_errors():
    with pytest.raises(ConfigError, match=r"ssd300_vgg16: input 200x200 is too small"):
        build_model("ssd300_vgg16", 3, image_size=200)
    with pytest.raises(ConfigError, match="class_names has 2 names but n_classes is 3"):
        build_model("toy_ssd", 3, class_names=["a", "b"])
    with pytest.raises(ConfigError, match="permutation"):
        build_model("toy_ssd", 3, swap_channels=[0, 0, 1])
    with pytest.raises(ConfigError, match="head_kernel"):
        build_model("toy_ssd", 3, head_kernel=2)
    with pytest.raises(ConfigError, match="scales must have n_layers \\+ 1 = 4"):
        build_model("toy_ssd", 3, scales=[0.1, 0.2])
    with pytest.raises(ConfigError, match="n_classes must be >= 1"):
        build_model("toy_ssd", 0)
    with pytest.raises(ConfigError, match="background"):
        build_model("toy_ssd", 2, class_names=["background", "cat"])
    m = build_model("toy_ssd", n_classes=None, class_names=["cat", "dog"])
    assert m.n_classes == 2 and m.class_names == ["cat", "dog"]


def test_wrong_image_size_at_forward_is_refused():
    m = build_model("toy_ssd", 3)
    with pytest.raises(ValueError, match=r"images are 96x128 but this model's anchors were built for 128x128"):
        m(images(1, 96, 128))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        m(torch.zeros(1, 1, 128, 128))


# ------------------------------------------------------------------------------------------ custom backbones
def test_from_backbone_and_register_model_round_trip(tmp_path):
    import ssdkit

    def builder(n_classes, image_size=None, backbone_weights=None, **kw):
        return SSD.from_backbone(TwoMapBackbone(8, 16), n_classes, image_size or 64, name="tiny_ssd", **kw)

    m = builder(2, min_scale=0.2, max_scale=0.9)
    assert m.feature_map_sizes == [(8, 8), (4, 4)] and m.num_anchors == 4 * (64 + 16)
    cls, _ = m(images(1, 64, 64))
    assert cls.shape == (1, 320, 3)
    path = tmp_path / "tiny.pt"
    ssdkit.save(path, m)
    with pytest.raises(ssdkit.errors.CheckpointError, match="register_model"):
        ssdkit.load(path)
    try:
        register_model("tiny_ssd", builder)
        assert "tiny_ssd" in list_models()
        back = ssdkit.load(path)
        m.eval()
        x = images(2, 64, 64)
        assert torch.equal(back(x)[0], m(x)[0])
    finally:
        _CUSTOM.pop("tiny_ssd", None)
    with pytest.raises(ConfigError, match="built-in"):
        register_model("ssd7", builder)
    with pytest.raises(ConfigError, match="list of feature maps"):
        SSD.from_backbone(nn.Conv2d(3, 4, 3), 2, 32)


# ------------------------------------------------------------------------------------------ export
def test_onnx_export_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m = build_model("toy_ssd", 3).eval()
    x = images(2, 128, 128)
    path = tmp_path / "toy.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=False, input_names=["images"], output_names=["cls", "box"],
                      dynamic_axes={"images": {0: "batch"}}, opset_version=17)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cls, box = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref_cls, ref_box = m(x)
    assert torch.allclose(torch.from_numpy(cls), ref_cls, atol=1e-4)
    assert torch.allclose(torch.from_numpy(box), ref_box, atol=1e-4)


def test_ssdlite_onnx_traceable(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m = build_model("ssdlite320_mobilenet_v3_large", 3, image_size=160).eval()
    x = images(1, 160, 160)
    path = tmp_path / "lite.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=False, input_names=["images"], opset_version=17)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = m(x)
    assert torch.allclose(torch.from_numpy(out[0]), ref[0], atol=1e-4)


def test_torch_export_and_mac_counter_agree_with_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    m = build_model("toy_ssd", 3).eval()
    x = images(2, 128, 128)
    ep = torch.export.export(m, (x,))
    with torch.no_grad():
        got, ref = ep.module()(x), m(x)
    assert torch.allclose(got[0], ref[0], atol=1e-5) and torch.allclose(got[1], ref[1], atol=1e-5)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        m(x[:1])
    assert count_macs(m, 128) == fc.get_total_flops() // 2


# ------------------------------------------------------------------------------------------ pretrained weights
@pytest.mark.shared
def test_imagenet_mobilenet_v2_from_torch_hub_cache(torch_home_with_mnv2, shared_dir):
    ref = torch.load(shared_dir / "weights" / "mobilenet_v2-b0353104.pth", weights_only=True)
    m = build_model("ssdlite320_mobilenet_v2", 3, backbone_weights="imagenet")
    assert torch.equal(m.backbone.stage1[0][0].weight, ref["features.0.0.weight"])
    assert torch.equal(m.backbone.stage1[-1][0].weight, ref["features.14.conv.0.0.weight"])  # C4 expansion
    assert torch.equal(m.backbone.stage2[-1][1].running_var, ref["features.18.1.running_var"])
    # a local file gives the same backbone
    local = shared_dir / "weights" / "mobilenet_v2-b0353104.pth"
    m2 = build_model("ssdlite320_mobilenet_v2", 3, backbone_weights=str(local))
    for k, v in m.backbone.state_dict().items():
        if k.startswith("stage"):  # the extras are randomly initialised in both
            assert torch.equal(v, m2.backbone.state_dict()[k]), k


def test_imagenet_weights_missing_from_cache_name_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    expected = os.path.join(str(tmp_path / "th"), "hub", "checkpoints", "mobilenet_v3_large-8738ca79.pth")
    with pytest.raises(WeightsNotFoundError, match="never downloads") as exc:
        build_model("ssdlite320_mobilenet_v3_large", 3, backbone_weights="imagenet")
    assert expected in str(exc.value)
    with pytest.raises(WeightsNotFoundError, match=r"vgg16-397923af\.pth"):
        build_model("ssd300_vgg16", 3, backbone_weights="imagenet")
    with pytest.raises(WeightsNotFoundError, match="not found"):
        build_model("toy_ssd", 3, backbone_weights=str(tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match="no ImageNet"):
        build_model("ssd7", 3, backbone_weights="imagenet")


def test_fc_to_conv_decimates_fc6_fc7_like_the_ssd_paper():
    out, c, s = 16, 2, 7
    w6 = torch.arange(out * c * s * s, dtype=torch.float32).reshape(out, c * s * s)
    b6 = torch.arange(out, dtype=torch.float32)
    w7 = torch.arange(out * out, dtype=torch.float32).reshape(out, out)
    conv = fc_to_conv(w6, b6, w7, -b6, in_channels=c)
    assert conv["fc6.weight"].shape == (4, c, 3, 3) and conv["fc7.weight"].shape == (4, 4, 1, 1)
    full = w6.reshape(out, c, s, s)
    for o_new, o in enumerate(range(0, out, 4)):
        for i, y in enumerate((0, 3, 6)):
            for j, x in enumerate((0, 3, 6)):
                assert torch.equal(conv["fc6.weight"][o_new, :, i, j], full[o, :, y, x])
    assert conv["fc6.bias"].tolist() == [0.0, 4.0, 8.0, 12.0]
    assert conv["fc7.weight"][:, :, 0, 0].tolist() == w7[::4, ::4].tolist()
    assert conv["fc7.bias"].tolist() == [0.0, -4.0, -8.0, -12.0]


def test_torchvision_vgg16_state_loads_into_the_fc_reduced_backbone(tmp_path):
    """A torchvision vgg16 ``features`` state dict (random here) maps onto conv1_1 .. conv5_3 by name."""
    g = torch.Generator().manual_seed(0)
    idx = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    chans = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
             (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    tv_features = {}
    for i, (cin, cout) in zip(idx, chans):
        tv_features[f"{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g)
        tv_features[f"{i}.bias"] = torch.randn(cout, generator=g)
    state = {f"features.{k}": v for k, v in tv_features.items()}
    converted = torchvision_vgg16_to_ssd(state)
    m = build_model("ssd300_vgg16", 3)
    m.backbone.base.load_state_dict(converted, strict=False)
    assert torch.equal(m.backbone.base.conv1_1.weight, tv_features["0.weight"])
    assert torch.equal(m.backbone.base.conv5_3.bias, tv_features["28.bias"])
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    m2 = build_model("ssd300_vgg16", 3, backbone_weights=str(path))
    assert torch.equal(m2.backbone.base.conv4_3.weight, tv_features["21.weight"])
    assert m2.swap_channels is None and m2.mean == pytest.approx([123.675, 116.28, 103.53])  # torchvision's input


# ------------------------------------------------------------------------------------------ torchvision parity
@pytest.mark.parametrize("which", ["ssdlite320_mobilenet_v3_large", "ssd300_vgg16"])
def test_from_torchvision_gives_the_same_raw_outputs(which):
    from torchvision.models import detection
    from torchvision.models.detection.image_list import ImageList

    from ssdkit.models.torchvision_port import from_torchvision

    torch.manual_seed(0)
    with torch.device("meta"):  # torchvision's vgg16 builder initialises a 138M-parameter classifier first
        tv = getattr(detection, which)(weights=None, weights_backbone=None, num_classes=5)
    tv.to_empty(device="cpu").eval()
    for mod in tv.modules():  # He init keeps activations O(1) (torchvision's SSDLite init gives ~1e-14 logits)
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight)
            if mod.bias is not None:
                nn.init.normal_(mod.bias, std=0.1)
        elif hasattr(mod, "reset_parameters") and not isinstance(mod, nn.Conv2d):
            mod.reset_parameters()
    if which == "ssd300_vgg16":
        tv.backbone.scale_weight.data.fill_(20.0)
    ours = from_torchvision(tv)
    # both networks are fully convolutional: compare at a smaller input to keep the test fast
    size = 160 if "lite" in which else 272  # 272: even through pool4, where torchvision floors and Keras ceils
    x = images(1, size, size)
    mean = torch.tensor(tv.transform.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(tv.transform.image_std).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = tv.head(list(tv.backbone((x.float() / 255 - mean) / std).values()))
        cls, box = ours.heads(ours.backbone(ours.input_norm(x)))
    scale = ref["cls_logits"].abs().max()
    assert scale > 1e-3
    assert torch.allclose(cls, ref["cls_logits"], atol=1e-4 * scale, rtol=1e-4)
    assert torch.allclose(box, ref["bbox_regression"], atol=1e-4 * ref["bbox_regression"].abs().max(), rtol=1e-4)
    # anchors at the native size equal torchvision's except where torchvision clamps a width/height
    h, w = ours.image_size
    feats = [torch.zeros(1, 1, fh, fw) for fh, fw in ours.feature_map_sizes]
    anchors = tv.anchor_generator(ImageList(torch.zeros(1, 3, h, w), [(h, w)]), feats)[0]
    same = (anchors - ours.anchor_generator.anchors_xyxy_pixels()).abs().max(1).values < 1e-3
    assert same.float().mean() > 0.98


def test_fuse_folds_batchnorm_for_inference(tmp_path):
    import ssdkit

    torch.manual_seed(0)
    m = build_model("ssdlite320_mobilenet_v2", 3, image_size=160)
    x = images(2, 160, 160)
    m(x)  # training step: BN statistics move away from their init
    m.eval()
    with torch.no_grad():
        ref = m(x)
        for channels_last in (False, True):
            f = m.fuse(channels_last=channels_last)
            assert f.fused and not f.training and not any(isinstance(q, nn.BatchNorm2d) for q in f.modules())
            assert not any(p.requires_grad for p in f.parameters())
            out = f(x)
            scale = ref[0].abs().max()
            assert torch.allclose(out[0], ref[0], atol=1e-4 * scale) and torch.allclose(out[1], ref[1], atol=1e-4)
            dets = f.predict(x, confidence_thresh=0.0, top_k=20)
            assert len(dets) == 2 and all(d.shape == (20, 6) for d in dets)
    assert any(isinstance(q, nn.BatchNorm2d) for q in m.modules())  # the original is untouched
    with pytest.raises(ssdkit.errors.CheckpointError, match="fused"):
        ssdkit.save(tmp_path / "f.pt", f)


def test_models_cli_table(capsys):
    from ssdkit.cli.main import main

    assert main(["models", "toy_ssd", "ssd7", "--classes", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["name", "input", "params", "GMACs", "anchors", "feature", "maps"]
    toy = out[1].split()
    assert toy[:2] == ["toy_ssd", "128x128"] and toy[4] == "5,376" and toy[5] == "32,16,8"
    assert out[2].split()[:2] == ["ssd7", "300x480"] and out[2].split()[4] == "11,692"
    assert main(["models", "ssd1000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown model(s) ['ssd1000']" in err


def test_list_models_and_macs_are_measured():
    assert list_models()[: len(ALL)] == ALL
    m = build_model("toy_ssd", 3)
    # toy: convs at 64x64 (3->16), 32x32 (16->32, 32->32), 16x16 (32->64, 64->64), 8x8 (64->128, 128->128)
    backbone = 64 * 64 * 16 * 27 + 32 * 32 * (32 * 16 * 9 + 32 * 32 * 9) + 16 * 16 * (64 * 32 * 9 + 64 * 64 * 9) \
        + 8 * 8 * (128 * 64 * 9 + 128 * 128 * 9)
    heads = sum(f * f * c * 9 * 4 * (4 + 4) for f, c in ((32, 32), (16, 64), (8, 128)))
    assert count_macs(m, 128) == backbone + heads
    assert count_macs(m, 128, batch=3) == 3 * (backbone + heads)
    assert math.isclose(count_macs(build_model("ssd300_vgg16", 20), 300) / 1e9, 31.37, abs_tol=0.01)
