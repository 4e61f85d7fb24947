"""Keras ``.h5`` import: files written here in the exact Keras 2 ``save_weights`` layout, outputs compared
with an independent numpy re-implementation of the Keras forward pass (NHWC tensors, HWIO kernels,
TensorFlow padding rules, ``Reshape((-1, n_classes))`` + ``Concatenate(axis=1)``)."""

from __future__ import annotations

from collections.abc import Sequence

import h5py
import numpy as np
import pytest
import torch

from ssdkit.errors import ConfigError
from ssdkit.models import build_model, load_keras_h5, read_keras_h5
from ssdkit.models.weights import WeightsNotFoundError

Layer = tuple[str, list[tuple[str, np.ndarray]]]


# ------------------------------------------------------------------------------------------ Keras file writer
def write_keras_h5(path, layers: Sequence[Layer], chunk_layer_names: bool = False) -> None:
    """Keras 2 ``Model.save_weights`` layout: root attrs ``layer_names``, ``backend``, ``keras_version``;
    one group per layer with attr ``weight_names``; datasets at ``<layer>/<weight name>`` inside it
    (``conv1_1/conv1_1/kernel:0``)."""
    with h5py.File(path, "w") as f:
        names = np.array([n.encode("utf8") for n, _ in layers])
        if chunk_layer_names:  # Keras splits attributes larger than the HDF5 header limit
            half = len(names) // 2
            f.attrs["layer_names0"], f.attrs["layer_names1"] = names[:half], names[half:]
        else:
            f.attrs["layer_names"] = names
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for name, weights in layers:
            g = f.create_group(name)
            g.attrs["weight_names"] = np.array([w.encode("utf8") for w, _ in weights], dtype="S")
            for wname, arr in weights:
                g.create_dataset(wname, data=arr)


def conv_layer(rng, name: str, k: int, cin: int, cout: int, bias: bool = True, scale: float = 1.0) -> Layer:
    std = np.float32(scale * np.sqrt(2.0 / (k * k * cin)))  # He init keeps activations O(1) through VGG
    kernel = rng.standard_normal((k, k, cin, cout), dtype=np.float32) * std
    ws = [(f"{name}/kernel:0", kernel)]
    if bias:
        ws.append((f"{name}/bias:0", rng.standard_normal(cout, dtype=np.float32) * np.float32(0.1)))
    return name, ws


def bn_layer(rng, name: str, c: int) -> Layer:
    return name, [
        (f"{name}/gamma:0", rng.uniform(0.5, 1.5, c).astype(np.float32)),
        (f"{name}/beta:0", rng.standard_normal(c, dtype=np.float32) * np.float32(0.1)),
        (f"{name}/moving_mean:0", rng.standard_normal(c, dtype=np.float32) * np.float32(0.1)),
        (f"{name}/moving_variance:0", rng.uniform(0.5, 2.0, c).astype(np.float32)),
    ]


def empty(name: str) -> Layer:
    return name, []


# ------------------------------------------------------------------------------------------ numpy Keras forward
def k_conv(x, kernel, bias=None, stride=1, padding="same", dilation=1):
    """TensorFlow Conv2D on NHWC ``x`` with an HWIO kernel: sum over taps of ``x[patch] @ kernel[i, j]``."""
    kh, kw, _, cout = kernel.shape
    if padding == "same":
        assert stride == 1
        pads = [(dilation * (k - 1) // 2, dilation * (k - 1) - dilation * (k - 1) // 2) for k in (kh, kw)]
    elif padding == "valid":
        pads = [(0, 0), (0, 0)]
    else:
        pads = padding
    x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    h = (x.shape[1] - dilation * (kh - 1) - 1) // stride + 1
    w = (x.shape[2] - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((x.shape[0] * h * w, cout), dtype=np.float32)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i * dilation: i * dilation + stride * (h - 1) + 1: stride,
                      j * dilation: j * dilation + stride * (w - 1) + 1: stride, :]
            # one 2-D GEMM per tap ([B*H*W, Cin] @ [Cin, Cout]), done by torch.mm: it honours the test
            # session's one-thread setting, where numpy's OpenBLAS would spawn threads on a busy machine
            cols = torch.from_numpy(np.ascontiguousarray(patch).reshape(-1, patch.shape[-1]))
            out += torch.mm(cols, torch.from_numpy(np.ascontiguousarray(kernel[i, j]))).numpy()
    out = out.reshape(x.shape[0], h, w, cout)
    return out if bias is None else out + bias


def k_depthwise(x, kernel, stride=1, padding="same"):
    """DepthwiseConv2D (depth multiplier 1), kernel ``[kh, kw, C, 1]``."""
    kh, kw = kernel.shape[:2]
    pads = [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in (kh, kw)] if padding == "same" else [(0, 0), (0, 0)]
    x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    h = (x.shape[1] - kh) // stride + 1
    w = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], h, w, x.shape[3]), dtype=np.float32)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i: i + stride * (h - 1) + 1: stride, j: j + stride * (w - 1) + 1: stride, :]
            out += patch * kernel[i, j, :, 0]
    return out


def k_maxpool(x, k, stride, padding):
    """MaxPooling2D; TF 'same' pads bottom/right first with -inf (ceil output size)."""
    n, h, w, c = x.shape
    if padding == "same":
        oh, ow = -(-h // stride), -(-w // stride)
        ph, pw = max((oh - 1) * stride + k - h, 0), max((ow - 1) * stride + k - w, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), constant_values=-np.inf)
    else:
        oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    out = np.full((n, oh, ow, c), -np.inf, dtype=np.float32)
    for i in range(k):
        for j in range(k):
            out = np.maximum(out, x[:, i: i + stride * (oh - 1) + 1: stride, j: j + stride * (ow - 1) + 1: stride, :])
    return out


def k_bn(x, w, eps=1e-3):
    g, b, m, v = w
    return (x - m) / np.sqrt(v + eps) * g + b


def relu(x):
    return np.maximum(x, 0)


def elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def heads_reshape(outs, n):
    """Reshape((-1, n)) of each NHWC output, then Concatenate(axis=1)."""
    return np.concatenate([o.reshape(o.shape[0], -1, n) for o in outs], axis=1)


def torch_nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy().astype(np.float32)


def assert_close(ours: torch.Tensor, ref: np.ndarray, rel: float = 2e-4) -> None:
    ref_t = torch.from_numpy(np.ascontiguousarray(ref))
    scale = float(ref_t.abs().max())
    assert ours.shape == ref_t.shape
    assert torch.allclose(ours, ref_t, atol=rel * scale, rtol=rel), float((ours - ref_t).abs().max()) / scale


# ------------------------------------------------------------------------------------------ SSD7
SSD7_CONVS = [(3, 32, 5), (32, 48, 3), (48, 64, 3), (64, 64, 3), (64, 48, 3), (48, 48, 3), (48, 32, 3)]


def ssd7_layers(rng, n_cls: int) -> tuple[list[Layer], dict[str, list[np.ndarray]]]:
    layers: list[Layer] = [empty("input_1"), empty("identity_layer"), empty("input_mean_normalization"),
                           empty("input_stddev_normalization")]
    for k, (cin, cout, ks) in enumerate(SSD7_CONVS, start=1):
        layers += [conv_layer(rng, f"conv{k}", ks, cin, cout), bn_layer(rng, f"bn{k}", cout), empty(f"elu{k}")]
        if k < 7:
            layers.append(empty(f"pool{k}"))
    for k, c in zip((4, 5, 6, 7), (64, 48, 48, 32)):
        layers.append(conv_layer(rng, f"classes{k}", 3, c, 4 * n_cls, scale=0.3))
    for k, c in zip((4, 5, 6, 7), (64, 48, 48, 32)):
        layers.append(conv_layer(rng, f"boxes{k}", 3, c, 16, scale=0.3))
    layers += [empty(f"classes{k}_reshape") for k in (4, 5, 6, 7)] + [empty("mbox_conf"), empty("predictions")]
    weights = {name: [a for _, a in ws] for name, ws in layers if ws}
    return layers, weights


def keras_ssd7_forward(img_rgb: np.ndarray, w: dict, n_cls: int) -> tuple[np.ndarray, np.ndarray]:
    x = (img_rgb - 127.5) / 127.5
    taps = []
    for k in range(1, 8):
        x = elu(k_bn(k_conv(x, *w[f"conv{k}"]), w[f"bn{k}"]))
        if k >= 4:
            taps.append(x)
        if k < 7:
            x = k_maxpool(x, 2, 2, "valid")
    cls = heads_reshape([k_conv(t, *w[f"classes{k}"]) for t, k in zip(taps, (4, 5, 6, 7))], n_cls)
    box = heads_reshape([k_conv(t, *w[f"boxes{k}"]) for t, k in zip(taps, (4, 5, 6, 7))], 4)
    return cls, box


def test_ssd7_keras_weights_give_the_keras_outputs(tmp_path):
    rng = np.random.default_rng(0)
    layers, w = ssd7_layers(rng, n_cls=4)
    path = tmp_path / "ssd7.h5"
    write_keras_h5(path, layers, chunk_layer_names=True)
    model = build_model("ssd7", 3, image_size=(90, 120))  # odd sizes exercise the 'valid' (floor) pooling
    report = load_keras_h5(model, path)
    assert report.ok, report.summary()
    assert len(report.loaded) == 7 * 2 + 8
    model.eval()
    x = torch.randint(0, 256, (2, 3, 90, 120), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cls, box = model(x)
    ref_cls, ref_box = keras_ssd7_forward(torch_nhwc(x.float()), w, 4)
    assert_close(cls, ref_cls)
    assert_close(box, ref_box)


# ------------------------------------------------------------------------------------------ SSD300 / SSD512 VGG
VGG = [("conv1_1", 3, 64), ("conv1_2", 64, 64), ("conv2_1", 64, 128), ("conv2_2", 128, 128),
       ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv4_1", 256, 512),
       ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv5_1", 512, 512), ("conv5_2", 512, 512),
       ("conv5_3", 512, 512)]
EXTRAS_300 = [("conv6_1", 1024, 256, 1), ("conv6_2", 256, 512, 3), ("conv7_1", 512, 128, 1), ("conv7_2", 128, 256, 3),
              ("conv8_1", 256, 128, 1), ("conv8_2", 128, 256, 3), ("conv9_1", 256, 128, 1), ("conv9_2", 128, 256, 3)]
SOURCES_300 = [("conv4_3_norm", 512, 4), ("fc7", 1024, 6), ("conv6_2", 512, 6), ("conv7_2", 256, 6),
               ("conv8_2", 256, 4), ("conv9_2", 256, 4)]


def vgg_fc_reduced_layers(rng) -> list[Layer]:
    """The layers of VGG_ILSVRC_16_layers_fc_reduced.h5 (conv1_1 .. conv5_3, fc6 3x3 dilated, fc7 1x1)."""
    layers: list[Layer] = [empty("input_1")]
    for name, cin, cout in VGG:
        layers.append(conv_layer(rng, name, 3, cin, cout))
        if name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3"):
            layers.append(empty(f"pool{name[4]}"))
    layers += [empty("pool5"), conv_layer(rng, "fc6", 3, 512, 1024), conv_layer(rng, "fc7", 1, 1024, 1024)]
    return layers


def ssd300_layers(rng, n_cls: int) -> list[Layer]:
    layers = [empty("input_1"), empty("identity_layer"), empty("input_mean_normalization"),
              empty("input_channel_swap"), *vgg_fc_reduced_layers(rng)[1:]]
    for name, cin, cout, k in EXTRAS_300:
        layers.append(conv_layer(rng, name, k, cin, cout))
        if name in ("conv6_1", "conv7_1"):
            layers.append(empty(f"conv{name[4]}_padding"))
    gamma = rng.uniform(5, 30, 512).astype(np.float32)
    layers.append(("conv4_3_norm", [("conv4_3_norm/conv4_3_norm_gamma:0", gamma)]))
    for name, c, b in SOURCES_300:
        layers.append(conv_layer(rng, f"{name}_mbox_conf", 3, c, b * n_cls, scale=0.3))
    for name, c, b in SOURCES_300:
        layers.append(conv_layer(rng, f"{name}_mbox_loc", 3, c, b * 4, scale=0.3))
    layers += [empty(f"{name}_mbox_priorbox") for name, _, _ in SOURCES_300]
    layers += [empty("mbox_conf"), empty("mbox_loc"), empty("mbox_priorbox"), empty("mbox_conf_softmax"),
               empty("predictions")]
    return layers


def keras_ssd300_forward(img_rgb: np.ndarray, w: dict, n_cls: int) -> tuple[np.ndarray, np.ndarray]:
    x = (img_rgb - np.array([123.0, 117.0, 104.0], dtype=np.float32))[..., [2, 1, 0]]  # mean (RGB), then BGR
    for name, _, _ in VGG:
        x = relu(k_conv(x, *w[name]))
        if name == "conv4_3":
            conv4_3 = x
        if name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3"):
            x = k_maxpool(x, 2, 2, "same")
    x = k_maxpool(x, 3, 1, "same")
    x = relu(k_conv(x, *w["fc6"], dilation=6))
    fc7 = x = relu(k_conv(x, *w["fc7"]))
    feats = {"fc7": fc7}
    for name, _, _, k in EXTRAS_300:
        if name in ("conv6_2", "conv7_2"):  # ZeroPadding2D((1, 1)) + stride-2 'valid'
            x = relu(k_conv(x, *w[name], stride=2, padding=[(1, 1), (1, 1)]))
        else:
            x = relu(k_conv(x, *w[name], padding="same" if k == 1 else "valid"))
        feats[name] = x
    norm = np.sqrt(np.maximum((conv4_3 ** 2).sum(-1, keepdims=True), 1e-12))
    feats["conv4_3_norm"] = conv4_3 / norm * w["conv4_3_norm"][0]
    cls = heads_reshape([k_conv(feats[n], *w[f"{n}_mbox_conf"]) for n, _, _ in SOURCES_300], n_cls)
    box = heads_reshape([k_conv(feats[n], *w[f"{n}_mbox_loc"]) for n, _, _ in SOURCES_300], 4)
    return cls, box


@pytest.fixture(scope="module")
def ssd300_h5(tmp_path_factory):
    rng = np.random.default_rng(0)
    layers = ssd300_layers(rng, n_cls=3)
    path = tmp_path_factory.mktemp("keras") / "VGG_VOC0712_SSD_300x300_iter_120000.h5"
    write_keras_h5(path, layers)
    return path, {name: [a for _, a in ws] for name, ws in layers if ws}


def test_ssd300_keras_weights_give_the_keras_outputs(ssd300_h5):
    path, w = ssd300_h5
    model = build_model("ssd300_vgg16", 2)  # Keras defaults: mean [123, 117, 104] (RGB order), BGR swap
    report = load_keras_h5(model, path)
    assert report.ok, report.summary()
    assert len(report.loaded) == 15 + 8 + 1 + 12  # VGG + fc6/fc7, extras, L2Norm, predictors
    assert torch.equal(model.backbone.conv4_3_norm.weight, torch.from_numpy(w["conv4_3_norm"][0]))
    assert torch.equal(model.backbone.base.conv1_1.weight, torch.from_numpy(w["conv1_1"][0]).permute(3, 2, 0, 1))
    model.eval()
    x = torch.randint(0, 256, (1, 3, 300, 300), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cls, box = model(x)
    ref_cls, ref_box = keras_ssd300_forward(torch_nhwc(x.float()), w, 3)
    assert ref_cls.shape == (1, 8732, 3)
    assert_close(cls, ref_cls, rel=1e-3)
    assert_close(box, ref_box, rel=1e-3)


def test_fc_reduced_vgg_file_as_backbone_weights(tmp_path, ssd300_h5):
    _, w = ssd300_h5
    rng = np.random.default_rng(0)  # same generator sequence as the fixture: identical VGG arrays
    path = tmp_path / "VGG_ILSVRC_16_layers_fc_reduced.h5"
    write_keras_h5(path, vgg_fc_reduced_layers(rng))
    model = build_model("ssd512_vgg16", 5, backbone_weights=str(path))
    base = model.backbone.base
    for name in ("conv1_1", "conv4_3", "conv5_3", "fc6", "fc7"):
        kernel, bias = w[name]
        assert torch.equal(getattr(base, name).weight, torch.from_numpy(kernel).permute(3, 2, 0, 1)), name
        assert torch.equal(getattr(base, name).bias, torch.from_numpy(bias)), name
    assert base.fc6.weight.shape == (1024, 512, 3, 3) and base.fc6.dilation == (6, 6)
    assert model.keras_names["conv10_2_mbox_conf"] == "heads.cls.6"
    assert model.keras_names["fc7_mbox_loc"] == "heads.box.1"
    assert model.swap_channels == [2, 1, 0] and model.mean == [123.0, 117.0, 104.0]  # Caffe weights: BGR
    # the file has no extras, L2Norm or predictors: those keep their initialisation
    assert torch.all(model.backbone.conv4_3_norm.weight == 20.0)


def test_class_count_mismatch_is_an_error_unless_skipped(ssd300_h5):
    path, w = ssd300_h5
    model = build_model("ssd300_vgg16", 20)
    with pytest.raises(ConfigError, match=r"conv4_3_norm_mbox_conf.*\(84, 512, 3, 3\)|shape \(12, 512, 3, 3\)"):
        load_keras_h5(model, path)
    report = load_keras_h5(model, path, skip_mismatch=True)
    assert report.reset_modules() == [f"heads.cls.{k}" for k in range(6)]
    assert torch.equal(model.heads.box[0].weight, torch.from_numpy(w["conv4_3_norm_mbox_loc"][0]).permute(3, 2, 0, 1))


# ------------------------------------------------------------------------------------------ MobileNetV1
def test_mobilenet_v1_keras_application_names_and_depthwise_layout(tmp_path):
    """Keras MobileNet (alpha 0.25) weights by layer name; asymmetric ZeroPadding + 'valid' strided convs."""
    from ssdkit.models.mobilenet_v1 import MOBILENET_V1_BLOCKS

    rng = np.random.default_rng(3)
    alpha = 0.25
    c = int(32 * alpha)
    layers: list[Layer] = [empty("input_1"), empty("conv1_pad"), conv_layer(rng, "conv1", 3, 3, c, bias=False),
                           bn_layer(rng, "conv1_bn", c), empty("conv1_relu")]
    for k, (pw, stride) in enumerate(MOBILENET_V1_BLOCKS, start=1):
        dw = rng.standard_normal((3, 3, c, 1), dtype=np.float32) * np.float32(0.5)
        if stride == 2:
            layers.append(empty(f"conv_pad_{k}"))
        layers += [(f"conv_dw_{k}", [(f"conv_dw_{k}/depthwise_kernel:0", dw)]), bn_layer(rng, f"conv_dw_{k}_bn", c),
                   conv_layer(rng, f"conv_pw_{k}", 1, c, int(pw * alpha), bias=False),
                   bn_layer(rng, f"conv_pw_{k}_bn", int(pw * alpha))]
        c = int(pw * alpha)
    path = tmp_path / "mobilenet_2_5_224_tf_no_top.h5"
    write_keras_h5(path, layers)
    model = build_model("ssd300_mobilenet_v1", 3, width=alpha, backbone_weights=str(path)).eval()
    w = read_keras_h5(path)
    x = torch.randint(0, 256, (1, 3, 300, 300), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        feats = model.backbone(model.input_norm(x))

    def relu6(v):
        return np.clip(v, 0, 6)

    def bn(v, name):
        d = w[name]
        return k_bn(v, (d["gamma"], d["beta"], d["moving_mean"], d["moving_variance"]))

    h = (torch_nhwc(x.float()) - 127.5) / 127.5
    h = relu6(bn(k_conv(h, w["conv1"]["kernel"], stride=2, padding=[(0, 1), (0, 1)]), "conv1_bn"))
    taps = []
    for k, (_, stride) in enumerate(MOBILENET_V1_BLOCKS, start=1):
        if stride == 2:
            h = np.pad(h, ((0, 0), (0, 1), (0, 1), (0, 0)))
            h = k_depthwise(h, w[f"conv_dw_{k}"]["depthwise_kernel"], stride=2, padding="valid")
        else:
            h = k_depthwise(h, w[f"conv_dw_{k}"]["depthwise_kernel"])
        h = relu6(bn(h, f"conv_dw_{k}_bn"))
        h = relu6(bn(k_conv(h, w[f"conv_pw_{k}"]["kernel"]), f"conv_pw_{k}_bn"))
        if k in (11, 13):
            taps.append(h)
    assert [t.shape[1] for t in taps] == [18, 9]
    assert_close(feats[0].permute(0, 2, 3, 1), taps[0], rel=1e-3)
    assert_close(feats[1].permute(0, 2, 3, 1), taps[1], rel=1e-3)


# ------------------------------------------------------------------------------------------ file errors
def test_bad_files_give_clear_errors(tmp_path):
    model = build_model("toy_ssd", 2)
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_keras_h5(model, tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(ConfigError, match="not a readable HDF5 file"):
        load_keras_h5(model, junk)
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ConfigError, match="not a Keras weights file"):
        load_keras_h5(model, tmp_path / "plain.h5")
    other = tmp_path / "other.h5"
    write_keras_h5(other, [conv_layer(np.random.default_rng(0), "dense_99", 1, 3, 4)])
    with pytest.raises(ConfigError, match="no layer of the file matches"):
        load_keras_h5(model, other)
