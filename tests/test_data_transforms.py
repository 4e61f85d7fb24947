"""Transforms: property tests (boxes stay valid and inside, inverse maps round-trip), Keras arithmetic,
seeded reproducibility, tensor and torchvision interop."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssdkit.data import constant_size_augmentation, eval_preprocessing, ssd_augmentation, variable_size_augmentation
from ssdkit.data import transforms as T

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def samples(draw: st.DrawFn, min_side: int = 8, max_side: int = 64) -> tuple[np.ndarray, dict]:
    h = draw(st.integers(min_side, max_side))
    w = draw(st.integers(min_side, max_side))
    n = draw(st.integers(0, 5))
    boxes = []
    for _ in range(n):
        x0 = draw(st.floats(0, w - 1, allow_nan=False))
        y0 = draw(st.floats(0, h - 1, allow_nan=False))
        x1 = draw(st.floats(min(x0 + 0.5, w), w, allow_nan=False))
        y1 = draw(st.floats(min(y0 + 0.5, h), h, allow_nan=False))
        boxes.append([x0, y0, x1, y1])
    seed = draw(st.integers(0, 2**31))
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    target = {
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "labels": np.arange(1, n + 1, dtype=np.int64),  # unique: labels identify boxes through the ops
        "difficult": np.zeros(n, bool),
        "image_id": "x",
    }
    return img, target


def _ops() -> list[T.Transform]:
    area = T.BoxFilter(True, True, True, "area", (0.3, 1.0), min_area=4)
    val = T.ImageValidator("area", (0.5, 1.0), 1)
    return [
        T.Resize((30, 50), ["nearest", "linear", "cubic", "area", "lanczos"]),
        T.RandomFlip(1.0), T.RandomFlip(1.0, "vertical"),
        T.CropPad(-3, 5, 20, 25), T.CropPad(2, -4, 40, 10, clip_boxes=True, box_filter=T.BoxFilter(True, False, True)),
        T.PadToAspect(2.0), T.PadToAspect((300, 200), position="top_left"),
        T.RandomTranslate(p=1.0, box_filter=area, image_validator=val),
        T.RandomTranslate(p=1.0),
        T.RandomScale(0.5, 2.0, p=1.0, box_filter=area, image_validator=val),
        T.RandomScale(0.5, 2.0, p=1.0),
        T.RandomRotate((90, 180, 270), p=1.0),
        T.RandomExpand(1.0, 4.0, p=1.0),
        T.SSDRandomCrop(p=1.0),
        T.RandomPatch("w_ar", 0.3, 2.0, box_filter=T.BoxFilter(True, False, False, "area"), image_validator=val),
        T.RandomPatch("h_w", 0.3, 1.0), T.RandomPatch("h_ar", 0.5, 1.5, p=1.0),
        T.PhotometricDistort(channel_swap=0.5), T.RandomGamma(p=1.0), T.RandomHistogramEqualization(p=1.0),
        T.RandomBrightness(p=1.0), T.RandomContrast(p=1.0), T.RandomSaturation(p=1.0), T.RandomHue(p=1.0),
        T.RandomChannelSwap(p=1.0), T.FilterBoxes(),
        ssd_augmentation(48), constant_size_augmentation(), variable_size_augmentation((24, 40)),
        eval_preprocessing(32, keep_aspect=True),
    ]


OPS = _ops()


def _check_valid(out: np.ndarray, t: dict, src: dict) -> None:
    h, w = out.shape[:2]
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    b = t["boxes"]
    assert b.dtype == np.float32 and b.shape[1] == 4
    assert len(b) == len(t["labels"]) == len(t["difficult"])
    assert np.isfinite(b).all()
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
    assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
    assert set(t["labels"].tolist()) <= set(src["labels"].tolist())
    assert t["image_id"] == "x"


@pytest.mark.parametrize("op", OPS, ids=lambda o: type(o).__name__)
@SETTINGS
@given(sample=samples(), seed=st.integers(0, 2**32 - 1))
def test_ops_keep_boxes_valid_and_inverse_maps_back(op: T.Transform, sample: tuple, seed: int) -> None:
    img, tgt = sample
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in tgt.items()}
    img_before = img.copy()
    out, t = op(img, tgt, rng=seed)
    np.testing.assert_array_equal(img, img_before)  # inputs are never modified
    for k in ("boxes", "labels"):
        np.testing.assert_array_equal(tgt[k], before[k])
    _check_valid(out, t, tgt)
    inv = t["inverse"]
    if np.isnan(inv).any():
        assert isinstance(op, T.RandomRotate)
        return
    # every output box maps back inside its source box (exactly onto it where nothing was clipped)
    back = T.invert_boxes(t["boxes"], inv)
    src = {int(k): b for k, b in zip(tgt["labels"], tgt["boxes"])}
    tol = 1e-3 * max(img.shape) + 2e-3 * max(out.shape)
    for lab, b in zip(t["labels"], back):
        s = src[int(lab)]
        assert b[0] >= s[0] - tol and b[1] >= s[1] - tol and b[2] <= s[2] + tol and b[3] <= s[3] + tol, (b, s)


@SETTINGS
@given(sample=samples(), size=st.tuples(st.integers(8, 80), st.integers(8, 80)), keep=st.booleans())
def test_eval_preprocessing_inverse_round_trips(sample: tuple, size: tuple, keep: bool) -> None:
    img, tgt = sample
    out, t = eval_preprocessing(size, keep_aspect=keep)(img, tgt)
    assert out.shape[:2] == size
    np.testing.assert_allclose(T.invert_boxes(t["boxes"], t["inverse"]), tgt["boxes"], atol=1e-3 * max(img.shape))
    assert t["inverse"][0] > 0 and t["inverse"][1] > 0
    if keep:  # aspect preserved: one scale for both axes
        assert abs(t["inverse"][0] - t["inverse"][1]) < 0.02 * t["inverse"][0] + 1e-3 * max(size)


def test_invert_boxes_batched_tensor_and_flip() -> None:
    img = np.zeros((40, 60, 3), np.uint8)
    tgt = {"boxes": np.array([[5, 6, 20, 30]], np.float32), "labels": np.array([1]), "difficult": np.array([False])}
    _out, t = T.Compose([T.Flip(), T.Resize(100), T.CropPad(-10, 7, 90, 95)])(img, tgt)
    assert t["inverse"][0] < 0
    np.testing.assert_allclose(T.invert_boxes(t["boxes"], t["inverse"]), tgt["boxes"], atol=1e-3)
    bt = torch.as_tensor(t["boxes"])[None].repeat(2, 1, 1)
    it = torch.as_tensor(t["inverse"])[None].repeat(2, 1)
    np.testing.assert_allclose(T.invert_boxes(bt, it).numpy()[1], tgt["boxes"], atol=1e-3)


# ------------------------------------------------------------------------------------ Keras arithmetic
def _keras_bc(img: np.ndarray, delta: float | None, factor: float | None) -> np.ndarray:
    x = img.astype(np.float32)
    if delta is not None:
        x = np.clip(x + delta, 0, 255)
    if factor is not None:
        x = np.clip(127.5 + factor * (x - 127.5), 0, 255)
    return np.round(x).astype(np.uint8)


def _keras_hsv(img: np.ndarray, sat: float | None, hue: float | None) -> np.ndarray:
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
    if sat is not None:
        hsv[:, :, 1] = np.clip(hsv[:, :, 1] * sat, 0, 255)
    if hue is not None:
        hsv[:, :, 0] = (hsv[:, :, 0] + hue) % 180.0
    return cv2.cvtColor(np.round(hsv).astype(np.uint8), cv2.COLOR_HSV2RGB)


@settings(max_examples=60, deadline=None)
@given(delta=st.one_of(st.none(), st.floats(-48, 48)), factor=st.one_of(st.none(), st.floats(0.5, 1.8)),
       sat=st.one_of(st.none(), st.floats(0.5, 1.8)), hue=st.one_of(st.none(), st.floats(-18, 18)))
def test_lookup_tables_reproduce_the_keras_float_ops(delta: float | None, factor: float | None,
                                                     sat: float | None, hue: float | None) -> None:
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    got = img if delta is None and factor is None else T._lut(img, T._bc_lut(delta, factor))
    np.testing.assert_array_equal(got, _keras_bc(img, delta, factor))
    if sat is not None or hue is not None:
        np.testing.assert_array_equal(T._hsv_apply(img, hue, sat), _keras_hsv(img, sat, hue))


def test_box_filter_criteria_match_keras_definitions() -> None:
    b = np.array([[-10, 0, 10, 10], [0, 0, 10, 10], [95, 95, 105, 105], [50, 50, 50, 60], [0, 0, 3, 3]], np.float64)
    f = T.BoxFilter(True, False, False, "area", (0.5, 1.0))
    assert f.mask(b, 100, 100).tolist() == [True, True, False, True, True]  # zero area: 0 >= 0.5 * 0
    f = T.BoxFilter(True, False, False, "area", (0.0, 1.0))
    assert f.mask(b, 100, 100).tolist() == [True, True, True, False, True]  # area 0 never counts at lower 0
    f = T.BoxFilter(True, False, False, "center_point")
    assert f.mask(b, 100, 100).tolist() == [True, True, True, True, True]  # centre (100, 100) is on the border
    assert f.mask(b, 99, 99).tolist() == [True, True, False, True, True]
    f = T.BoxFilter(False, True, True, min_area=16)
    assert f.mask(b, 100, 100).tolist() == [True, True, True, False, False]
    v = T.ImageValidator("iou", (0.005, 1.0), 1)
    assert v(b[:1], 100, 100) and not v(b[4:], 100, 100)
    assert not T.ImageValidator("area", (0.5, 1.0), "all")(b, 100, 100)


# ------------------------------------------------------------------------------------ randomness
@pytest.mark.parametrize("chain", [ssd_augmentation(300), constant_size_augmentation(300),
                                   variable_size_augmentation(300)], ids=["ssd", "constant", "variable"])
def test_chains_are_reproducible_under_a_seed(chain: T.Transform) -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    tgt = {"boxes": np.array([[10, 10, 60, 80], [70, 20, 150, 110]], np.float32), "labels": np.array([1, 2]),
           "difficult": np.array([False, True])}
    runs = [[chain(img, tgt, rng=s) for s in range(6)] for _ in range(2)]
    for (a, ta), (b, tb) in zip(*runs):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ta["boxes"], tb["boxes"])
        assert a.shape == (300, 300, 3)
    assert len({r[0].tobytes() for r in runs[0]}) > 1  # different seeds differ
    chain.seed(5)
    a1 = chain(img, tgt)[0]
    chain.seed(5)
    np.testing.assert_array_equal(chain(img, tgt)[0], a1)
    g = torch.Generator().manual_seed(3)
    g2 = torch.Generator().manual_seed(3)
    np.testing.assert_array_equal(chain(img, tgt, rng=g)[0], chain(img, tgt, rng=g2)[0])


def test_probabilities_are_respected() -> None:
    img = np.zeros((8, 8, 3), np.uint8)
    img[:, :4] = 255
    flip = T.RandomFlip(0.3)
    rng = np.random.default_rng(0)
    flipped = sum(flip(img, None, rng=rng)[0][0, 0, 0] == 0 for _ in range(2000))
    assert 0.25 < flipped / 2000 < 0.35
    crop = T.SSDRandomCrop()
    big = np.zeros((100, 100, 3), np.uint8)
    tgt = {"boxes": np.array([[20, 20, 80, 80]], np.float32), "labels": np.array([1]), "difficult": np.array([False])}
    same = sum(crop(big, tgt, rng=rng)[0].shape == (100, 100, 3) for _ in range(700))
    assert 0.1 < same / 700 < 0.2  # ~1/7 untouched (plus rare full-size patches)


def test_tensor_in_tensor_out_and_torchvision_transforms() -> None:
    from torchvision.transforms import v2

    from ssdkit.data.transforms import apply_transform

    img = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    tgt = {"boxes": torch.tensor([[1.0, 2.0, 30.0, 20.0]]), "labels": torch.tensor([2]),
           "difficult": torch.tensor([True])}
    out, t = T.Compose([T.RandomFlip(1.0), T.Resize(32)])(img, tgt)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 32, 32) and out.dtype == torch.uint8
    assert isinstance(t["boxes"], torch.Tensor) and t["difficult"].tolist() == [True]
    np.testing.assert_allclose(t["boxes"].numpy(), [[30 / 60 * 32, 2 * 32 / 40, 59 / 60 * 32, 20 * 32 / 40]], atol=1e-4)
    tv = v2.Compose([v2.RandomHorizontalFlip(1.0), v2.Resize((20, 30)),
                     v2.SanitizeBoundingBoxes(labels_getter=lambda s: (s[1]["labels"], s[1]["difficult"]))])
    arr = img.permute(1, 2, 0).numpy()
    o, t2 = apply_transform(tv, arr,
                            {k: v.numpy() for k, v in tgt.items()} | {"inverse": np.array([1, 1, 0, 0], np.float32)})
    assert o.shape == (20, 30, 3) and np.isnan(t2["inverse"]).all()
    np.testing.assert_allclose(t2["boxes"], [[15, 1, 29.5, 10]], atol=1e-4)


def test_ssd_augmentation_knobs_build_the_chain_they_name() -> None:
    """Defaults = the original chain; expand_p=0 drops the zoom-out, vflip/rotate90 add their ops."""
    names = [type(op).__name__ for op in ssd_augmentation(64).transforms]
    assert names == ["PhotometricDistort", "RandomExpand", "SSDRandomCrop", "RandomFlip", "Resize"]
    chain = ssd_augmentation(64, expand_p=0.0, crop_p=0.5, crop_min_scale=0.5, flip=0.25, vflip=0.5, rotate90=0.3)
    ops = chain.transforms
    assert [type(op).__name__ for op in ops] == ["PhotometricDistort", "RandomRotate", "SSDRandomCrop", "RandomFlip",
                                                 "RandomFlip", "Resize"]
    assert (ops[1].p, ops[2].p, ops[2].min_scale) == (0.3, 0.5, 0.5)
    assert (ops[3].p, ops[3].direction, ops[4].p, ops[4].direction) == (0.25, "horizontal", 0.5, "vertical")
    expand = ssd_augmentation(64, expand_max=1.5, expand_p=1.0).transforms[1]
    assert (expand.max_scale, expand.p) == (1.5, 1.0)
    # vflip=1 on a slide: the only box mirrors vertically (no crop, no zoom, no horizontal flip)
    img = np.zeros((40, 40, 3), np.uint8)
    tgt = {"boxes": np.array([[4, 2, 20, 10]], np.float32), "labels": np.array([1]), "difficult": np.array([False])}
    only_v = ssd_augmentation(40, expand_p=0.0, crop_p=0.0, flip=0.0, vflip=1.0)
    _, out = only_v(img, tgt, rng=np.random.default_rng(0))
    np.testing.assert_allclose(out["boxes"], [[4, 30, 20, 38]], atol=1e-4)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"vflip": 1.5}, r"vflip is a probability in \[0, 1\], got 1\.5"),
    ({"crop_p": -0.1}, r"crop_p is a probability"),
    ({"expand_max": 1.0}, r"expand_max must be > 1"),
    ({"crop_min_scale": 0.0}, r"crop_min_scale must be in \(0, 1\]"),
])
def test_ssd_augmentation_rejects_bad_knobs(kwargs: dict, match: str) -> None:
    from ssdkit.data import build_augmentation
    from ssdkit.errors import ConfigError

    with pytest.raises(ValueError, match=match):
        ssd_augmentation(64, **kwargs)
    key = next(iter(kwargs))
    with pytest.raises(ConfigError, match=r"^augment: invalid value for chain 'ssd': " + match):
        build_augmentation({"chain": "ssd", key: kwargs[key]}, 64)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError):
        T.Resize(10, "bogus")
    with pytest.raises(ValueError):
        T.RandomRotate((45,))
    with pytest.raises(ValueError):
        constant_size_augmentation(scale=(1.2, 2.0, 0.5))
    with pytest.raises(ValueError):
        T.Compose([T.Resize(10)])(np.zeros((4, 4), np.uint8))
