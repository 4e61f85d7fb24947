"""The augmentation chains of the Keras SSD code (reference section 6) and evaluation preprocessing.

- :func:`ssd_augmentation` - the original SSD chain: photometric distortions in one of two orders
  (brightness +-32, contrast .5-1.5, saturation .5-1.5, hue +-18, each p=.5), expand (p=.5, zoom-out
  1-4x on a ``background`` canvas, the model's mean colour), IoU-constrained random crop (p=.857, 50
  trials, sides .3-1, aspect .5-2, min IoU from {none, .1, .3, .5, .7, .9}, keep boxes whose centre is
  inside, clip), horizontal flip p=.5, resize to ``size`` with a random interpolation (nearest, linear,
  cubic, area, lanczos), drop degenerate boxes.
- :func:`constant_size_augmentation` - brightness (-48, 48, .5), contrast (.5, 1.8, .5), saturation
  (.5, 1.8, .5), hue (18, .5), then either translate-then-zoom-in or zoom-out-then-translate
  (translate ((.03, .5), (.03, .5), .5), scale (.5, 2, .5)), flip .5; box filter by overlap area
  (.3, 1), min area 16, degenerate; image validator (area, (.5, 1), 1 box); 3 trials, black background.
  Images are first resized to ``size`` when one is given (the chain assumes the network's size).
- :func:`variable_size_augmentation` - photometric as above, random patch (width .3-2 of the image,
  aspect .5-2, 3 trials, same filter/validator), flip .5, resize to ``size`` (linear) with a filter for
  min area 16 and degenerate boxes.
- :func:`eval_preprocessing` - deterministic resize (optionally pad to the aspect ratio first); the
  ``inverse`` it records maps predictions back to the original pixels.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from .transforms import (
    SSD_INTERPOLATIONS,
    BoxFilter,
    Color,
    Compose,
    ImageValidator,
    PadToAspect,
    PhotometricDistort,
    RandomChoice,
    RandomExpand,
    RandomFlip,
    RandomPatch,
    RandomRotate,
    RandomScale,
    RandomTranslate,
    Resize,
    SizeLike,
    SSDRandomCrop,
    Transform,
)

__all__ = [
    "ssd_augmentation",
    "constant_size_augmentation",
    "variable_size_augmentation",
    "eval_preprocessing",
    "build_augmentation",
    "CHAINS",
]

Range3 = tuple[float, float, float]


def ssd_augmentation(
    size: SizeLike = 300,
    background: Color = (123, 117, 104),
    interpolations: Sequence[str] = SSD_INTERPOLATIONS,
    expand_p: float = 0.5,
    expand_max: float = 4.0,
    crop_p: float = 0.857,
    crop_min_scale: float = 0.3,
    flip: float = 0.5,
    vflip: float = 0.0,
    rotate90: float = 0.0,
) -> Compose:
    """The original SSD training chain (see the module docstring); output ``size`` ``(H, W)`` or square.

    The defaults are the original chain's. The knobs exist for data the original chain was not made
    for: ``expand_max`` (zoom-out factor; 4x turns 25 px objects into 6 px ones, so small-object data
    wants ~1.5), ``expand_p``, ``crop_p`` and ``crop_min_scale`` of the IoU crop, and for data without
    a canonical orientation (microscopy, aerial) ``vflip`` (vertical flip probability) and ``rotate90``
    (probability of a 90/180/270 degree rotation, before the crop so the patch aspect stays random).
    """
    for key, p in (("expand_p", expand_p), ("crop_p", crop_p), ("flip", flip), ("vflip", vflip),
                   ("rotate90", rotate90)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{key} is a probability in [0, 1], got {p!r}")
    if expand_p > 0 and not expand_max > 1.0:
        raise ValueError(f"expand_max must be > 1 (the zoom-out factor; expand_p=0 turns it off), got {expand_max!r}")
    if not 0.0 < crop_min_scale <= 1.0:
        raise ValueError(f"crop_min_scale must be in (0, 1], got {crop_min_scale!r}")
    ops: list[Transform] = [
        PhotometricDistort((-32, 32, 0.5), (0.5, 1.5, 0.5), (0.5, 1.5, 0.5), (18, 0.5), 0.0, "random"),
    ]
    if expand_p > 0:
        ops.append(RandomExpand(1.0, expand_max, p=expand_p, background=background))
    if rotate90 > 0:
        ops.append(RandomRotate((90, 180, 270), p=rotate90))
    ops += [SSDRandomCrop(min_scale=crop_min_scale, p=crop_p), RandomFlip(flip)]
    if vflip > 0:
        ops.append(RandomFlip(vflip, "vertical"))
    ops.append(Resize(size, interpolation=list(interpolations), box_filter=BoxFilter(False, False, True)))
    return Compose(ops)


def _photometric(brightness: Range3, contrast: Range3, saturation: Range3, hue: tuple[float, float],
                 order: str) -> PhotometricDistort:
    return PhotometricDistort(brightness, contrast, saturation, hue, 0.0, order)


def constant_size_augmentation(
    size: SizeLike | None = None,
    brightness: Range3 = (-48, 48, 0.5),
    contrast: Range3 = (0.5, 1.8, 0.5),
    saturation: Range3 = (0.5, 1.8, 0.5),
    hue: tuple[float, float] = (18, 0.5),
    flip: float = 0.5,
    translate: tuple[tuple[float, float], tuple[float, float], float] = ((0.03, 0.5), (0.03, 0.5), 0.5),
    scale: Range3 = (0.5, 2.0, 0.5),
    n_trials: int = 3,
    clip_boxes: bool = True,
    overlap_criterion: str = "area",
    bounds_box_filter: tuple[float, float] = (0.3, 1.0),
    bounds_validator: tuple[float, float] = (0.5, 1.0),
    n_boxes_min: int | str = 1,
    min_area: float = 16,
    background: Color = (0, 0, 0),
) -> Transform:
    """The Keras ``DataAugmentationConstantInputSize`` chain (defaults of reference section 6)."""
    if scale[0] >= 1 or scale[1] <= 1:
        raise ValueError(f"scale must satisfy min < 1 < max (it zooms in or out), got {scale}")
    box_filter = BoxFilter(True, True, True, overlap_criterion, bounds_box_filter, min_area)
    validator = ImageValidator(overlap_criterion, bounds_validator, n_boxes_min)
    common: dict[str, Any] = dict(clip_boxes=clip_boxes, box_filter=box_filter, image_validator=validator,
                                  n_trials=n_trials, background=background)
    move = RandomTranslate(translate[0], translate[1], translate[2], **common)
    zoom_in = RandomScale(1.0, scale[1], scale[2], **common)
    zoom_out = RandomScale(scale[0], 1.0, scale[2], **common)
    flip_op = RandomFlip(flip)
    chain = RandomChoice([
        Compose([_photometric(brightness, contrast, saturation, hue, "contrast_first"), move, zoom_in, flip_op]),
        Compose([_photometric(brightness, contrast, saturation, hue, "contrast_last"), zoom_out, move, flip_op]),
    ])
    return chain if size is None else Compose([Resize(size), chain])


def variable_size_augmentation(
    size: SizeLike,
    brightness: Range3 = (-48, 48, 0.5),
    contrast: Range3 = (0.5, 1.8, 0.5),
    saturation: Range3 = (0.5, 1.8, 0.5),
    hue: tuple[float, float] = (18, 0.5),
    flip: float = 0.5,
    min_scale: float = 0.3,
    max_scale: float = 2.0,
    min_aspect_ratio: float = 0.5,
    max_aspect_ratio: float = 2.0,
    n_trials: int = 3,
    clip_boxes: bool = True,
    overlap_criterion: str = "area",
    bounds_box_filter: tuple[float, float] = (0.3, 1.0),
    bounds_validator: tuple[float, float] = (0.5, 1.0),
    n_boxes_min: int | str = 1,
    min_area: float = 16,
    background: Color = (0, 0, 0),
) -> Compose:
    """The Keras ``DataAugmentationVariableInputSize`` chain (defaults of reference section 6)."""
    patch = RandomPatch(
        "w_ar", min_scale, max_scale, False, min_aspect_ratio, max_aspect_ratio,
        box_filter=BoxFilter(True, False, False, overlap_criterion, bounds_box_filter),
        image_validator=ImageValidator(overlap_criterion, bounds_validator, n_boxes_min),
        n_trials=n_trials, clip_boxes=clip_boxes, p=1.0, background=background,
    )
    return Compose([
        _photometric(brightness, contrast, saturation, hue, "contrast_first"),
        patch,
        RandomFlip(flip),
        Resize(size, "linear", box_filter=BoxFilter(False, True, True, min_area=min_area)),
    ])


def eval_preprocessing(size: SizeLike, keep_aspect: bool = False, background: Color = (0, 0, 0),
                       interpolation: str = "linear", pad_position: str = "center") -> Compose:
    """Deterministic test-time preprocessing: ``[PadToAspect] -> Resize``; ``inverse`` maps back."""
    ops: list[Transform] = []
    if keep_aspect:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        ops.append(PadToAspect(hw, background, pad_position))  # type: ignore[arg-type]
    ops.append(Resize(size, interpolation))
    return Compose(ops)


def _none_chain(size: SizeLike, interpolation: str = "linear") -> Compose:
    return Compose([Resize(size, interpolation)])


CHAINS: dict[str, Callable[..., Transform]] = {
    "ssd": ssd_augmentation,
    "constant_size": constant_size_augmentation,
    "variable_size": variable_size_augmentation,
    "none": _none_chain,
}


def _tuplify(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_tuplify(x) for x in v)
    return v


def build_augmentation(cfg: Mapping[str, Any] | None, image_size: SizeLike,
                       background: Color | None = None, section: str = "augment") -> Transform:
    """The training transform from a config ``augment:`` section.

    ``cfg``: ``{chain: ssd | constant_size | variable_size | none, <chain keyword>: value, ...}``; the
    keywords are those of the chain function (e.g. ``brightness: [-32, 32, 0.5]``). ``image_size`` is the
    network input; ``background`` (the model's mean colour) is the SSD chain's default canvas colour.
    Raises :class:`~ssdkit.errors.ConfigError` naming ``augment.<key>`` for unknown keys and bad values.
    """
    cfg = dict(cfg or {})
    chain = cfg.pop("chain", "ssd")
    if chain not in CHAINS:
        raise ConfigError(f"{section}.chain: must be one of {sorted(CHAINS)}, got {chain!r}")
    fn = CHAINS[chain]
    params = inspect.signature(fn).parameters
    for key in cfg:
        if key not in params or key == "size":
            known = sorted(k for k in params if k != "size")
            raise ConfigError(f"{section}.{key}: unknown key for chain {chain!r}; known keys: {known}")
    kwargs = {k: _tuplify(v) for k, v in cfg.items()}
    if "background" in params and "background" not in kwargs and background is not None and chain == "ssd":
        kwargs["background"] = tuple(background) if not isinstance(background, (int, float)) else background
    try:
        return fn(image_size, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{section}: invalid value for chain {chain!r}: {exc}") from None
