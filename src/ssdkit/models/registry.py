"""Model registry and :func:`build_model`.

Each built-in architecture is a :class:`ModelSpec` row: defaults for the input size, anchors,
variances and input normalisation, the family options it accepts, and the module that builds its
backbone. Family modules are imported only when a model is built, so listing models is cheap.

A family module provides (and optionally ``resolve_options(name, options, backbone_weights) -> options``
and ``anchor_defaults(name, options, anchor_kwargs, given) -> anchor_kwargs``)::

    make_backbone(name: str, **options) -> BackboneParts
    load_pretrained(parts: BackboneParts, weights: str, name: str, **options) -> dict | None
        # loads 'imagenet' or a local file into parts.backbone; returns the input normalisation
        # ({'mean', 'std', 'swap_channels'}) those weights expect, or None to keep the default.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..anchors import PRESETS, AnchorGenerator, _pair
from ..errors import ConfigError
from .ssd import (
    ANCHOR_KEYS,
    SSD,
    SSDHead,
    _class_names,
    _triple,
    anchor_config,
    feature_map_shapes,
    init_conv_,
)

__all__ = ["MODEL_SPECS", "BackboneParts", "ModelSpec", "build_model", "get_spec", "list_models", "register_model"]


@dataclass
class BackboneParts:
    """What a family's ``make_backbone`` returns.

    Attributes:
        backbone: module returning the list of predictor feature maps.
        head: ``'conv'`` or ``'separable'`` predictors.
        backbone_init, head_init: conv init of backbone and predictors (see
            :func:`ssdkit.models.ssd.init_conv_`); families build on the ``meta`` device and the
            registry materialises and initialises once (not at all when a checkpoint is loaded).
        keras_names: Keras layer name -> module path **relative to the SSD** (``heads.cls.0``...),
            for the layers that are not found by their unique module name in the backbone.
        handles: family-specific references (e.g. the torchvision module to load ImageNet weights into).
    """

    backbone: nn.Module
    head: str = "conv"
    backbone_init: str = "he"
    head_init: str = "he"
    keras_names: dict[str, str] = field(default_factory=dict)
    handles: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """Defaults and builder of one named architecture."""

    name: str
    module: str
    description: str
    image_size: tuple[int, int]
    anchors: Mapping[str, Any]
    variances: tuple[float, ...] = (0.1, 0.1, 0.2, 0.2)
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    swap_channels: tuple[int, ...] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    #: anchor keys whose default only holds at the default input size (reset to None elsewhere)
    size_bound: tuple[str, ...] = ("steps",)


def _preset(name: str) -> dict[str, Any]:
    cfg = dict(PRESETS[name])
    cfg.pop("image_size")
    cfg.pop("feature_map_sizes")
    return cfg


def _grid_anchors(scales: list[float], aspect_ratios: list[float]) -> dict[str, Any]:
    """Anchors with one global aspect-ratio list, two squares, centres on the feature-map grid."""
    return {"scales": scales, "aspect_ratios": aspect_ratios, "two_boxes_for_ar1": True, "steps": None,
            "offsets": None, "clip_boxes": False, "normalize_coords": True}


def _vgg(name: str, preset: str, description: str, size: int) -> ModelSpec:
    # Keras/Caffe VGG weights expect BGR input minus the mean colour given in RGB order ([123, 117, 104])
    return ModelSpec(name, "ssdkit.models.vgg", description, (size, size), _preset(preset),
                     mean=(123.0, 117.0, 104.0), swap_channels=(2, 1, 0), options={"head_kernel": 3})


def _ssdlite(name: str, backbone: str, options: dict[str, Any]) -> ModelSpec:
    # torchvision's SSDLite320 default boxes: scales linspace(0.2, 0.95, 6) + [1.0], ratios {2, 3} both
    # ways plus two squares (6 boxes per cell); input scaled to [-1, 1] as torchvision does, also with
    # ImageNet backbone weights
    return ModelSpec(
        name, "ssdkit.models.ssdlite",
        f"SSDLite320 on torchvision {backbone} (depthwise-separable heads and extras)", (320, 320),
        _grid_anchors([0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0], [1.0, 2.0, 0.5, 3.0, 1.0 / 3.0]),
        mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5), options=options,
    )


_HALF_RANGE = {"mean": (127.5, 127.5, 127.5), "std": (127.5, 127.5, 127.5)}  # x / 127.5 - 1

MODEL_SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        _vgg("ssd300_vgg16", "ssd300_voc", "SSD300 on fc-reduced VGG16 (Keras/Caffe layout, conv4_3 L2Norm)", 300),
        _vgg("ssd512_vgg16", "ssd512_voc", "SSD512 on fc-reduced VGG16 (7 predictor layers)", 512),
        ModelSpec(
            "ssd7", "ssdkit.models.ssd7",
            "SSD7: 7 conv-BN-ELU blocks, 4 predictor layers (Keras ssd7, traffic example)", (300, 480),
            _grid_anchors([0.08, 0.16, 0.32, 0.64, 0.96], [0.5, 1.0, 2.0]),
            variances=(1.0, 1.0, 1.0, 1.0), options={"head_kernel": 3}, **_HALF_RANGE,
        ),
        ModelSpec(
            "ssd300_mobilenet_v1", "ssdkit.models.mobilenet_v1",
            "SSD300 on MobileNetV1 (conv_pw_11, conv_pw_13 + 4 extra blocks)", (300, 300),
            {**_preset("ssd300_voc"), "steps": None, "offsets": None},  # maps 18, 9, ...: grid steps
            options={"head_kernel": 3, "width": 1.0}, **_HALF_RANGE,
        ),
        _ssdlite("ssdlite320_mobilenet_v2", "MobileNetV2", {"width": 1.0, "stride8": False}),
        _ssdlite("ssdlite320_mobilenet_v3_large", "MobileNetV3-Large",
                 {"width": 1.0, "reduced_tail": None, "stride8": False}),
        ModelSpec(
            "toy_ssd", "ssdkit.models.toy",
            "toy SSD: BN conv blocks, 3 predictor layers at strides 4, 8, 16 (MNIST-style tutorials)", (128, 128),
            _grid_anchors([0.1, 0.2, 0.4, 0.8], [0.5, 1.0, 2.0]),
            options={"head_kernel": 3, "width": 16}, **_HALF_RANGE,
        ),
    ]
}

#: user-registered builders: name -> fn(n_classes, image_size=None, backbone_weights=None, **overrides) -> SSD
_CUSTOM: dict[str, Callable[..., SSD]] = {}

_COMMON_KEYS = ("variances", "mean", "std", "swap_channels", "class_names")


def list_models() -> list[str]:
    """Names accepted by :func:`build_model` (built-in first, then registered ones)."""
    return [*MODEL_SPECS, *sorted(_CUSTOM)]


def get_spec(name: str) -> ModelSpec:
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose from {list_models()}") from None


def register_model(name: str, builder: Callable[..., SSD] | None = None) -> Any:
    """Register a builder so ``build_model(name, ...)`` and :func:`ssdkit.load` know it.

    ``builder(n_classes, image_size=None, backbone_weights=None, **overrides) -> SSD``; usable as a
    decorator (``@register_model('my_ssd')``). The builder typically calls :meth:`SSD.from_backbone`;
    every override it receives must be accepted again when a checkpoint is reloaded, since the
    model's ``config`` is passed back to it.
    """

    def deco(fn: Callable[..., SSD]) -> Callable[..., SSD]:
        if name in MODEL_SPECS:
            raise ConfigError(f"{name!r} is a built-in model name; choose another name")
        _CUSTOM[name] = fn
        return fn

    return deco(builder) if builder is not None else deco


def build_model(
    name: str,
    n_classes: int | None = None,
    image_size: int | Sequence[int] | None = None,
    backbone_weights: str | None = None,
    **overrides: Any,
) -> SSD:
    """Build a named SSD.

    Args:
        name: one of :func:`list_models` (``ssd300_vgg16``, ``ssd512_vgg16``, ``ssd7``,
            ``ssd300_mobilenet_v1``, ``ssdlite320_mobilenet_v2``, ``ssdlite320_mobilenet_v3_large``,
            ``toy_ssd``, or a registered name).
        n_classes: positive classes (background is added); may be omitted when ``class_names`` is given.
        image_size: ``H`` or ``(H, W)``; default per model. Feature-map sizes are measured on the
            network at this size; preset anchor ``steps`` apply only at the default size (elsewhere
            ``H / f_h, W / f_w`` unless ``steps`` is given).
        backbone_weights: ``None``, ``'imagenet'`` (torchvision's weights API, from the torch hub
            cache only, never downloaded) or a local file (``.pth`` state dict or Keras ``.h5``).
            Unless ``mean``/``std``/``swap_channels`` are given, the input normalisation becomes the
            one those weights expect.
        **overrides: anchor options (``scales``, ``min_scale``, ``max_scale``, ``aspect_ratios``,
            ``two_boxes_for_ar1``, ``steps``, ``offsets``, ``clip_boxes``, ``normalize_coords``),
            ``variances``, ``mean``, ``std``, ``swap_channels``, ``class_names`` and the model's own
            options (``head_kernel``, ``width``, ``reduced_tail``: see ``ssdkit models``).

    Returns:
        an :class:`SSD` in training mode whose ``config`` rebuilds it: ``build_model(**model.config)``.

    Raises:
        ConfigError: unknown name or option, impossible value, input size too small.
    """
    return _build_model(name, n_classes, image_size, backbone_weights, True, **overrides)


def build_uninitialized(name: str, **config: Any) -> SSD:
    """``build_model(name, **config)`` with weights left uninitialised (``torch.empty``): for loading a
    checkpoint that overwrites every parameter and buffer right after (saves the init cost)."""
    return _build_model(name, config.pop("n_classes", None), config.pop("image_size", None), None, False, **config)


def _build_model(
    name: str,
    n_classes: int | None,
    image_size: int | Sequence[int] | None,
    backbone_weights: str | None,
    initialize: bool,
    **overrides: Any,
) -> SSD:
    if name in _CUSTOM:
        model = _CUSTOM[name](n_classes, image_size=image_size, backbone_weights=backbone_weights, **overrides)
        if not isinstance(model, SSD):
            raise ConfigError(f"the builder registered as {name!r} returned {type(model).__name__}, not an SSD")
        model.config["name"] = name
        return model
    spec = get_spec(name)
    allowed = set(ANCHOR_KEYS) | set(_COMMON_KEYS) | set(spec.options)
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {unknown} for model {name!r}; valid options: "
            f"anchors {list(ANCHOR_KEYS)}, {list(_COMMON_KEYS)}, model {sorted(spec.options)}"
        )
    class_names = overrides.pop("class_names", None)
    if n_classes is None:
        if class_names is None:
            raise ConfigError(f"build_model({name!r}): give n_classes or class_names")
        n_classes = len(class_names)
    if isinstance(n_classes, bool) or not isinstance(n_classes, int):
        raise ConfigError(f"n_classes must be an int, got {n_classes!r}")
    names = _class_names(class_names, n_classes)
    try:
        size = spec.image_size if image_size is None else _pair(image_size, "image_size")
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    if min(size) < 1:
        raise ConfigError(f"image_size must be positive, got {size}")
    options = {k: overrides.pop(k, v) for k, v in spec.options.items()}
    given_anchors = {k: overrides.pop(k) for k in ANCHOR_KEYS if k in overrides}
    for k in _NULL_IS_DEFAULT:  # ``scales: null`` in a config = the model's own default, not "none"
        if k in given_anchors and given_anchors[k] is None:
            del given_anchors[k]
    anchor_kw = _anchor_kwargs(spec, size, given_anchors)

    family = importlib.import_module(spec.module)
    anchor_defaults = getattr(family, "anchor_defaults", None)
    if anchor_defaults is not None:  # defaults that depend on the family's options (e.g. an extra layer)
        anchor_kw = anchor_defaults(name, options, anchor_kw, given_anchors)
    resolve = getattr(family, "resolve_options", None)
    if resolve is not None:  # options whose default depends on the weights (stored resolved in config)
        options = resolve(name, options, backbone_weights)
    with torch.device("meta"):  # no memory, no default init: materialised and initialised once below
        parts: BackboneParts = family.make_backbone(name, **options)
    parts.backbone.to_empty(device="cpu")
    if initialize:
        init_conv_(parts.backbone, parts.backbone_init)
    norm = {"mean": list(spec.mean), "std": list(spec.std), "swap_channels": spec.swap_channels}
    if backbone_weights is not None:
        weights_norm = family.load_pretrained(parts, backbone_weights, name, **options)
        if weights_norm:
            norm.update(weights_norm)
    for k in ("mean", "std", "swap_channels"):
        if k in overrides:
            norm[k] = overrides.pop(k)
    variances = overrides.pop("variances", spec.variances)
    assert not overrides, overrides

    try:
        shapes = feature_map_shapes(parts.backbone, size)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}; use a larger image_size (default {size_str(spec.image_size)})") from None
    try:
        gen = AnchorGenerator(size, [s[1:] for s in shapes], **anchor_kw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: anchor configuration: {exc}") from None
    with torch.device("meta"):
        heads = SSDHead([s[0] for s in shapes], gen.boxes_per_layer, n_classes + 1, parts.head,
                        int(options.get("head_kernel", 3)))
    heads.to_empty(device="cpu")
    if initialize:
        init_conv_(heads, parts.head_init)
    config: dict[str, Any] = {
        "name": name,
        "n_classes": n_classes,
        "image_size": list(size),
        "class_names": names,
        "variances": [float(v) for v in variances],
        "mean": _triple(norm["mean"], "mean"),
        "std": _triple(norm["std"], "std"),
        "swap_channels": None if norm["swap_channels"] is None else [int(c) for c in norm["swap_channels"]],
        **anchor_config(gen),
        **options,
    }
    return SSD(
        parts.backbone,
        heads,
        gen,
        n_classes,
        names,
        variances,
        norm["mean"],
        norm["std"],
        norm["swap_channels"],
        config=config,
        keras_names=parts.keras_names,
    )


def size_str(size: Sequence[int]) -> str:
    return "x".join(str(s) for s in size)


#: anchor keys for which an explicit ``None`` means "the model's default" (a resolved config always
#: stores them as lists, so rebuilding from ``model.config`` is unaffected)
_NULL_IS_DEFAULT = ("scales", "aspect_ratios")


def _anchor_kwargs(spec: ModelSpec, size: tuple[int, int], given: dict[str, Any]) -> dict[str, Any]:
    kw = dict(spec.anchors)
    if size != spec.image_size:
        for k in spec.size_bound:
            kw[k] = None
    if ("min_scale" in given or "max_scale" in given) and "scales" not in given:
        kw["scales"] = None  # the user asked for linspace(min_scale, max_scale)
    kw.update(given)
    return kw
