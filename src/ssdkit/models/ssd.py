"""The :class:`SSD` detector module and the building blocks every family shares.

An :class:`SSD` is four explicit parts:

- ``input_norm`` (:class:`InputNormalization`): uint8/float RGB ``0..255`` -> the backbone's input
  (float, optional channel swap, subtract mean, divide by std), inside ``forward`` so exported
  models take raw pixels;
- ``backbone``: any ``nn.Module`` mapping ``[B, 3, H, W]`` to a **list** of predictor feature maps
  ``[B, C_k, H_k, W_k]`` (base network, extra layers and e.g. the L2 normalisation of ``conv4_3``);
- ``heads`` (:class:`SSDHead`): one class and one box predictor per feature map;
- ``anchor_generator`` (:class:`~ssdkit.anchors.AnchorGenerator`) and its anchors as the buffer
  ``anchors`` ``[N, 4]`` ``(cx, cy, w, h)`` (normalised when ``normalize_coords``), float32.

Output layout. A class predictor for layer ``k`` with ``A_k`` boxes per cell has ``A_k * (C + 1)``
output channels, channel ``box * (C + 1) + class``; the box predictor has ``A_k * 4`` channels,
``box * 4 + coord``. Outputs are flattened in the order layer, row, column, box, which is exactly
the order of :meth:`AnchorGenerator.anchors` and of the Keras ``Reshape((-1, n_classes))`` on an
NHWC tensor, so Keras/Caffe head weights need no output permutation.

Any backbone can be plugged in with :meth:`SSD.from_backbone`::

    class Tiny(nn.Module):                       # returns a list of feature maps
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 16, 3, stride=8, padding=1)
            self.c2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        def forward(self, x):
            a = self.c1(x).relu()
            return [a, self.c2(a).relu()]

    model = SSD.from_backbone(Tiny(), n_classes=3, image_size=128, min_scale=0.2, max_scale=0.9)
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from itertools import pairwise
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..anchors import AnchorGenerator, SizeLike, _pair
from ..boxes import DEFAULT_VARIANCES
from ..errors import ConfigError

__all__ = [
    "ANCHOR_KEYS",
    "SSD",
    "Conv2dReLU",
    "InputNormalization",
    "L2Norm",
    "SSDHead",
    "SeparablePredictor",
    "TappedSequential",
    "count_macs",
    "feature_map_shapes",
    "module_output_shapes",
]

#: Build-time keyword arguments that configure the anchors (reference section 1).
ANCHOR_KEYS = (
    "scales",
    "min_scale",
    "max_scale",
    "aspect_ratios",
    "two_boxes_for_ar1",
    "steps",
    "offsets",
    "clip_boxes",
    "normalize_coords",
)


# ---------------------------------------------------------------------------------------------- blocks
class Conv2dReLU(nn.Conv2d):
    """``Conv2d`` followed by ReLU, as one module so state-dict keys keep the Keras layer name
    (``conv1_1.weight``) and a Keras ``Conv2D(..., activation='relu')`` maps onto one module."""

    def forward(self, x: Tensor) -> Tensor:
        # in place on the fresh conv output (autograd-safe: conv's backward does not need its output);
        # out of place would allocate a second 184 MB tensor for VGG's conv1 at batch 8
        return F.relu(super().forward(x), inplace=True)


class TappedSequential(nn.Module):
    """Runs named layers in order and returns the outputs of the layers named in ``taps``.

    Layer names are the module names (and state-dict keys), chosen to equal the Keras layer names
    where a Keras model exists, so ``.h5`` files load by name. Running stops after the last tap.

    Args:
        layers: ordered ``name -> module``.
        taps: names whose outputs are returned, in network order.
    """

    def __init__(self, layers: Mapping[str, nn.Module], taps: Sequence[str]) -> None:
        super().__init__()
        for name, layer in layers.items():
            self.add_module(name, layer)
        unknown = [t for t in taps if t not in layers]
        if unknown:
            raise ValueError(f"taps {unknown} are not layers of this network: {list(layers)}")
        order = list(layers)
        if [order.index(t) for t in taps] != sorted(order.index(t) for t in taps):
            raise ValueError(f"taps must be in network order, got {list(taps)}")
        self.taps = tuple(taps)

    def forward(self, x: Tensor) -> list[Tensor]:
        out: list[Tensor] = []
        for name, layer in self.named_children():
            x = layer(x)
            if name in self.taps:
                out.append(x)
                if len(out) == len(self.taps):
                    break
        return out


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learnable per-channel scale (ParseNet; SSD ``conv4_3_norm``).

    ``y = x / sqrt(max(sum_c x^2, eps)) * gamma`` with ``gamma`` initialised to ``scale`` (20 in SSD),
    exactly Keras' ``K.l2_normalize(x, axis=channels) * gamma``. Input and output ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = eps
        self.init_scale = float(scale)
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.fill_(self.init_scale)

    def forward(self, x: Tensor) -> Tensor:
        inv = torch.rsqrt(x.pow(2).sum(dim=1, keepdim=True).clamp(min=self.eps))
        return (x * inv).mul_(self.weight.view(1, -1, 1, 1))


class InputNormalization(nn.Module):
    """Raw RGB pixels ``0..255`` (uint8 or float) ``[B, 3, H, W]`` -> network input (float).

    Keras order: subtract ``mean`` and divide by ``std`` (both given in the **input**, i.e. RGB,
    channel order), then reorder channels by ``swap_channels`` (``[2, 1, 0]``: RGB -> BGR). The
    implementation swaps first and applies the swapped mean/std as one fused multiply-add, which is
    the same arithmetic.
    """

    def __init__(
        self,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        swap_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        mean_t = torch.as_tensor([float(m) for m in _triple(mean, "mean")], dtype=torch.float32)
        std_t = torch.as_tensor([float(s) for s in _triple(std, "std")], dtype=torch.float32)
        if bool((std_t == 0).any()):
            raise ConfigError(f"std must be non-zero, got {std_t.tolist()}")
        perm: list[int] | None = None
        if swap_channels is not None and list(swap_channels):
            perm = [int(c) for c in swap_channels]
            if sorted(perm) != [0, 1, 2]:
                raise ConfigError(f"swap_channels must be a permutation of [0, 1, 2], got {list(swap_channels)}")
            if perm == [0, 1, 2]:
                perm = None
        self.mean = mean_t.tolist()
        self.std = std_t.tolist()
        self.swap_channels = perm
        order = perm if perm is not None else [0, 1, 2]
        # y = x * scale + shift, per output channel (after the swap)
        self.register_buffer("scale", (1.0 / std_t[order]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean_t[order] / std_t[order]).view(1, 3, 1, 1), persistent=False)
        if perm is not None:
            self.register_buffer("perm", torch.tensor(perm, dtype=torch.int64), persistent=False)
        else:
            self.perm = None
        #: set by :meth:`SSD.fuse` with ``channels_last=True``: the batch is converted while still uint8
        self.channels_last = False

    def forward(self, images: Tensor) -> Tensor:
        x = images
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.perm is not None:
            # swap while the tensor is still narrow (uint8): 4x less memory traffic than after the cast
            x = x.index_select(1, self.perm)
        x = x.to(self.scale.dtype)
        return torch.addcmul(self.shift, x, self.scale)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}, swap_channels={self.swap_channels}"


def _triple(v: float | Sequence[float], what: str) -> list[float]:
    if isinstance(v, int | float):
        return [float(v)] * 3
    vals = [float(x) for x in v]
    if len(vals) == 1:
        return vals * 3
    if len(vals) != 3:
        raise ConfigError(f"{what} must be one number or 3 numbers (one per input channel), got {list(v)}")
    return vals


class SeparablePredictor(nn.Module):
    """SSDLite predictor: 3x3 depthwise conv + BN + ReLU6, then a 1x1 conv to ``out_channels``.

    ``pred`` is the conv whose output channels follow the ``box * K + k`` layout.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bn_eps: float = 1e-3,
                 bn_momentum: float = 0.03) -> None:
        super().__init__()
        self.dw = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, kernel_size, padding=kernel_size // 2, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels, eps=bn_eps, momentum=bn_momentum),
            nn.ReLU6(inplace=True),
        )
        self.pred = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pred(self.dw(x))


def final_conv(predictor: nn.Module) -> nn.Conv2d:
    """The conv of a predictor whose output channels are laid out ``box * K + k``."""
    if isinstance(predictor, nn.Conv2d):
        return predictor
    pred = getattr(predictor, "pred", None)
    if isinstance(pred, nn.Conv2d):
        return pred
    raise TypeError(f"a predictor must be an nn.Conv2d or have a .pred Conv2d, got {type(predictor).__name__}")


class SSDHead(nn.Module):
    """Class and box predictors for each feature map, flattened and concatenated.

    Args:
        in_channels: channels of each feature map.
        boxes_per_layer: anchors per cell ``A_k`` for each feature map.
        n_outputs: class scores per box, ``n_classes + 1`` (background at 0).
        kind: ``'conv'`` (plain ``kernel_size`` conv, SSD/Keras) or ``'separable'`` (SSDLite).
        kernel_size: predictor kernel (3 in SSD; 1 gives the ``head_kernel=1`` variant).

    ``forward(features) -> (cls_logits [B, N, n_outputs], box_deltas [B, N, 4])``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        boxes_per_layer: Sequence[int],
        n_outputs: int,
        kind: str = "conv",
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(boxes_per_layer):
            raise ConfigError(
                f"the backbone gives {len(in_channels)} feature maps but the anchors are configured for "
                f"{len(boxes_per_layer)} predictor layers"
            )
        if kind not in ("conv", "separable"):
            raise ConfigError(f"head kind must be 'conv' or 'separable', got {kind!r}")
        if kernel_size not in (1, 3, 5):
            raise ConfigError(f"head_kernel must be 1, 3 or 5, got {kernel_size!r}")
        self.n_outputs = int(n_outputs)
        self.kind = kind
        self.kernel_size = int(kernel_size)

        def make(cin: int, cout: int) -> nn.Module:
            if kind == "separable":
                return SeparablePredictor(cin, cout, kernel_size)
            return nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2)

        self.cls = nn.ModuleList(make(c, a * self.n_outputs) for c, a in zip(in_channels, boxes_per_layer))
        self.box = nn.ModuleList(make(c, a * 4) for c, a in zip(in_channels, boxes_per_layer))

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        cls_out: list[Tensor] = []
        box_out: list[Tensor] = []
        for f, cls_pred, box_pred in zip(features, self.cls, self.box):
            b = f.shape[0]
            # NCHW -> NHWC -> [B, H*W*A, K]: order (row, column, box), channel = box * K + k.
            # On channels_last outputs the permute is already contiguous and reshape is free.
            cls_out.append(cls_pred(f).permute(0, 2, 3, 1).reshape(b, -1, self.n_outputs))
            box_out.append(box_pred(f).permute(0, 2, 3, 1).reshape(b, -1, 4))
        return torch.cat(cls_out, dim=1), torch.cat(box_out, dim=1)


# ---------------------------------------------------------------------------------------------- analysis
class _EvalMode:
    """Context manager: every submodule in eval mode (BN with batch 1 and 1x1 maps would refuse training
    mode), restoring each module's own flag afterwards (frozen parts stay as they were)."""

    def __init__(self, module: nn.Module) -> None:
        self.flags = [(m, m.training) for m in module.modules()]

    def __enter__(self) -> None:
        for m, _ in self.flags:
            m.training = False

    def __exit__(self, *exc: object) -> None:
        for m, flag in self.flags:
            m.training = flag


class _ShapeOnlyConvs:
    """Context manager: every ``nn.Conv2d`` of a module returns zeros of its exact output shape
    instead of convolving, and counts the multiply-accumulates it would have done.

    Shapes then propagate through the real network at full resolution while the expensive part
    (convolutions: >99% of an SSD's arithmetic) is skipped; pooling, normalisation, activations and
    residual adds run for real on the zero tensors, which costs milliseconds. (Why not the ``meta``
    device: in this torch version the first meta elementwise op imports ``torch._dynamo``, 2-4 s.)
    """

    def __init__(self, module: nn.Module) -> None:
        self.convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        self.macs = 0

    def __enter__(self) -> Self:
        for m in self.convs:
            m.forward = partial(self._conv, m)  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        for m in self.convs:
            m.__dict__.pop("forward", None)

    def _conv(self, m: nn.Conv2d, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != m.in_channels:
            raise ConfigError(f"{m} got an input of shape {tuple(x.shape)}")
        out_hw = []
        for d, size in enumerate(x.shape[2:]):
            k, s, dil = m.kernel_size[d], m.stride[d], m.dilation[d]
            if m.padding == "same":
                out = int(size)
            else:
                p = 0 if m.padding == "valid" else m.padding[d]  # type: ignore[index]
                out = (int(size) + 2 * p - dil * (k - 1) - 1) // s + 1
            if out < 1:
                raise ValueError(f"{m} would get an empty output from a {tuple(x.shape[2:])} input")
            out_hw.append(out)
        shape = (x.shape[0], m.out_channels, *out_hw)
        self.macs += math.prod(shape) * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        return x.new_zeros(shape)


def _device_of(module: nn.Module) -> torch.device:
    for t in [*module.parameters(), *module.buffers()]:
        return t.device
    return torch.device("cpu")


def feature_map_shapes(backbone: nn.Module, image_size: SizeLike, in_channels: int = 3) -> list[tuple[int, int, int]]:
    """``(C, H, W)`` of each feature map ``backbone`` returns for a ``[1, in_channels, H, W]`` input.

    A dry run of the real network at ``image_size`` with convolutions reduced to their output shapes
    (exact for any architecture built from ``nn.Conv2d`` and other layers; milliseconds).
    Raises ``ValueError`` when the input is too small for the network (some layer's output would be empty).
    """
    h, w = _pair(image_size, "image_size")
    x = torch.zeros(1, in_channels, h, w, device=_device_of(backbone))
    try:
        with torch.no_grad(), _EvalMode(backbone), _ShapeOnlyConvs(backbone):
            out = backbone(x)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"input {h}x{w} is too small for this network: {str(exc).splitlines()[0]}") from None
    if isinstance(out, Tensor) or not isinstance(out, list | tuple) or not out:
        raise ConfigError(
            f"a backbone must return a non-empty list of feature maps [B, C, H, W], got {type(out).__name__}"
        )
    shapes = []
    for k, f in enumerate(out):
        if not isinstance(f, Tensor) or f.dim() != 4:
            raise ConfigError(f"backbone output {k} must be a [B, C, H, W] tensor, got {getattr(f, 'shape', f)!r}")
        if min(f.shape[2:]) < 1:
            raise ValueError(f"input {h}x{w} is too small for this network: feature map {k} is {tuple(f.shape[2:])}")
        shapes.append((int(f.shape[1]), int(f.shape[2]), int(f.shape[3])))
    return shapes


def module_output_shapes(module: nn.Module, image_size: SizeLike,
                         in_channels: int = 3) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, output shape)`` of every submodule returning a tensor, in the order the modules finish,
    for one ``[1, in_channels, H, W]`` input.

    The same dry run as :func:`feature_map_shapes` (convolutions reduced to their output shapes,
    every module in eval mode, each module's own mode restored after), so it takes milliseconds even
    for an SSD512. A module called twice is listed twice.
    """
    h, w = _pair(image_size, "image_size")
    out: list[tuple[str, tuple[int, ...]]] = []

    def record(name: str, _m: nn.Module, _i: object, y: object) -> None:
        if isinstance(y, Tensor):
            out.append((name, tuple(int(d) for d in y.shape)))

    hooks = [m.register_forward_hook(partial(record, name)) for name, m in module.named_modules() if name]
    try:
        with torch.no_grad(), _EvalMode(module), _ShapeOnlyConvs(module):
            module(torch.zeros(1, in_channels, h, w, device=_device_of(module)))
    finally:
        for hk in hooks:
            hk.remove()
    return out


def count_macs(model: nn.Module, image_size: SizeLike, batch: int = 1) -> int:
    """Multiply-accumulates of the convolutions of one forward pass at ``image_size``.

    Measured on the real ``forward`` (every ``nn.Conv2d`` call is counted with its actual input and
    output shapes: ``out_elements * in_channels / groups * kh * kw``), not estimated from a table.
    Element-wise work (ReLU, BN, normalisation) is not counted, as in the usual GMAC tables; the
    figures equal :class:`torch.utils.flop_counter.FlopCounterMode` FLOPs / 2 for conv networks.
    """
    h, w = _pair(image_size, "image_size")
    x = torch.zeros(batch, 3, h, w, device=_device_of(model))
    with torch.no_grad(), _EvalMode(model), _ShapeOnlyConvs(model) as counter:
        model(x)
    return counter.macs


# ---------------------------------------------------------------------------------------------- SSD
class SSD(nn.Module):
    """Single Shot MultiBox Detector: normalisation + backbone + heads + anchors.

    Build one with :func:`ssdkit.models.build_model` or :meth:`from_backbone`; the constructor takes
    already built parts.

    Args:
        backbone: module returning a list of feature maps ``[B, C_k, H_k, W_k]``.
        heads: :class:`SSDHead` (or any module mapping that list to ``(cls [B, N, C+1], box [B, N, 4])``).
        anchor_generator: anchors for ``image_size`` and the backbone's feature-map sizes.
        n_classes: positive classes (labels ``1..n_classes``; 0 is background).
        class_names: ``n_classes`` names, background excluded (default ``class_1``...).
        variances: box-offset variances used by decoding and target encoding.
        mean, std, swap_channels: input normalisation (see :class:`InputNormalization`).
        config: plain-Python ``build_model`` arguments that rebuild this architecture
            (``build_model(**model.config)``); stored in checkpoints.
        keras_names: Keras layer name -> this model's module path, for ``.h5`` import.

    Attributes:
        image_size: ``(H, W)`` network input size; ``forward`` requires it (the anchors depend on it).
        anchors: buffer ``[N, 4]`` float32 ``(cx, cy, w, h)``, normalised if ``normalize_coords``.
    """

    anchors: Tensor

    def __init__(
        self,
        backbone: nn.Module,
        heads: nn.Module,
        anchor_generator: AnchorGenerator,
        n_classes: int,
        class_names: Sequence[str] | None = None,
        variances: Sequence[float] = DEFAULT_VARIANCES,
        mean: Sequence[float] | float = (0.0, 0.0, 0.0),
        std: Sequence[float] | float = (1.0, 1.0, 1.0),
        swap_channels: Sequence[int] | None = None,
        config: dict[str, Any] | None = None,
        keras_names: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.n_classes = int(n_classes)
        self.class_names = _class_names(class_names, self.n_classes)
        v = [float(x) for x in variances]
        if len(v) != 4 or any(not math.isfinite(x) or x <= 0 for x in v):
            raise ConfigError(f"variances must be 4 positive numbers, got {list(variances)}")
        self.variances: tuple[float, float, float, float] = (v[0], v[1], v[2], v[3])
        self.input_norm = InputNormalization(mean, std, swap_channels)
        self.backbone = backbone
        self.heads = heads
        self.anchor_generator = anchor_generator
        self.image_size: tuple[int, int] = anchor_generator.image_size
        self.register_buffer("anchors", anchor_generator.anchors(dtype=torch.float32).clone(), persistent=False)
        self.config: dict[str, Any] = dict(config or {})
        self.keras_names: dict[str, str] = dict(keras_names or {})
        #: True for the inference copy made by :meth:`fuse` (BatchNorm folded away: not trainable/savable)
        self.fused = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(
        cls,
        backbone: nn.Module,
        n_classes: int,
        image_size: SizeLike,
        *,
        head: str = "conv",
        head_kernel: int = 3,
        class_names: Sequence[str] | None = None,
        variances: Sequence[float] = DEFAULT_VARIANCES,
        mean: Sequence[float] | float = (0.0, 0.0, 0.0),
        std: Sequence[float] | float = (1.0, 1.0, 1.0),
        swap_channels: Sequence[int] | None = None,
        name: str = "custom",
        **anchor_kw: Any,
    ) -> SSD:
        """An SSD on any backbone that returns a list of feature maps.

        Feature-map channels and sizes come from a dry run at ``image_size``; ``anchor_kw`` are the
        :class:`~ssdkit.anchors.AnchorGenerator` parameters (``scales`` or ``min_scale``/``max_scale``,
        ``aspect_ratios``, ``two_boxes_for_ar1``, ``steps``, ``offsets``, ``clip_boxes``,
        ``normalize_coords``). The model's ``config['name']`` is ``name``: to reload its checkpoints
        with :func:`ssdkit.load`, register a builder under that name with
        :func:`ssdkit.models.register_model`.
        """
        unknown = sorted(set(anchor_kw) - set(ANCHOR_KEYS))
        if unknown:
            raise ConfigError(
                f"unknown argument(s) {unknown} for SSD.from_backbone; anchor options are {list(ANCHOR_KEYS)}"
            )
        size = _pair(image_size, "image_size")
        try:
            shapes = feature_map_shapes(backbone, size)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        try:
            gen = AnchorGenerator(size, [s[1:] for s in shapes], **anchor_kw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"anchor configuration: {exc}") from None
        heads = SSDHead([s[0] for s in shapes], gen.boxes_per_layer, int(n_classes) + 1, head, head_kernel)
        config = {
            "name": name,
            "n_classes": int(n_classes),
            "image_size": list(size),
            "class_names": list(_class_names(class_names, int(n_classes))),
            "variances": [float(x) for x in variances],
            "mean": _triple(mean, "mean"),
            "std": _triple(std, "std"),
            "swap_channels": None if swap_channels is None else [int(c) for c in swap_channels],
            **anchor_config(gen),
            "head": head,
            "head_kernel": head_kernel,
        }
        return cls(backbone, heads, gen, n_classes, class_names, variances, mean, std, swap_channels, config)

    # ------------------------------------------------------------------ properties
    @property
    def num_anchors(self) -> int:
        return int(self.anchors.shape[0])

    @property
    def mean(self) -> list[float]:
        return list(self.input_norm.mean)

    @property
    def std(self) -> list[float]:
        return list(self.input_norm.std)

    @property
    def swap_channels(self) -> list[int] | None:
        return None if self.input_norm.swap_channels is None else list(self.input_norm.swap_channels)

    @property
    def feature_map_sizes(self) -> list[tuple[int, int]]:
        return list(self.anchor_generator.feature_map_sizes)

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Raw outputs for a batch.

        Args:
            images: ``[B, 3, H, W]`` RGB, values ``0..255``, uint8 or float; ``(H, W) == image_size``.

        Returns:
            ``cls_logits [B, N, C+1]`` (raw scores, background at 0) and ``box_deltas [B, N, 4]``
            (centroid offsets relative to :attr:`anchors`, scaled by the variances).
        """
        # shape checks are static (no data-dependent control flow); skipped while jit-tracing, where
        # the shapes are fixed by the example input anyway and comparisons only produce warnings
        if not torch.jit.is_tracing():
            self._check_input(images)
        features = self.backbone(self.input_norm(images))
        return self.heads(features)

    def _check_input(self, images: Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] RGB, got shape {tuple(images.shape)}")
        if (images.shape[2], images.shape[3]) != self.image_size:
            raise ValueError(
                f"images are {images.shape[2]}x{images.shape[3]} but this model's anchors were built for "
                f"{self.image_size[0]}x{self.image_size[1]} (H x W); resize the input (ssdkit.data transforms do "
                "it) or build the model with image_size=(H, W)"
            )

    @torch.no_grad()
    def predict(
        self,
        images: Tensor,
        confidence_thresh: float = 0.01,
        iou_threshold: float | None = 0.45,
        top_k: int | str | None = 200,
        nms: str = "per_class",
        inverse: Tensor | None = None,
        orig_size: Tensor | Sequence[Sequence[int]] | None = None,
        nms_max_output_size: int | None = None,
    ) -> list[Tensor]:
        """Detections per image (the Keras ``'inference'`` mode), in eval mode and without gradients.

        Args:
            images: ``[B, 3, H, W]`` (or one ``[3, H, W]``) RGB ``0..255`` at :attr:`image_size`.
            confidence_thresh, iou_threshold, top_k, nms, nms_max_output_size: see
                :func:`ssdkit.postprocess.decode_detections`.
            inverse: optional ``[B, 4]`` (or ``[4]``) ``(sx, sy, ox, oy)`` of the preprocessing; boxes
                are mapped back with ``orig = (net - (ox, oy)) / (sx, sy)`` and clipped.
            orig_size: optional ``[B, 2]`` ``(H, W)`` of the original images, the clipping range with
                ``inverse``; without it boxes are clipped to the network frame mapped back.

        Returns:
            ``B`` tensors ``[K, 6]`` float32 ``[class_id, score, xmin, ymin, xmax, ymax]`` sorted by
            descending score, in network-input pixels (or original-image pixels with ``inverse``).
        """
        from ..postprocess import decode_detections

        if images.dim() == 3:
            images = images.unsqueeze(0)
        was_training = self.training
        self.eval()
        try:
            cls_logits, box_deltas = self(images)
        finally:
            self.train(was_training)
        dets = decode_detections(
            cls_logits,
            box_deltas,
            self.anchors,
            self.image_size,
            confidence_thresh=confidence_thresh,
            iou_threshold=iou_threshold,
            top_k=top_k,
            nms=nms,
            variances=self.variances,
            nms_max_output_size=nms_max_output_size,
            normalize_coords=self.anchor_generator.normalize_coords,
        )
        if inverse is not None:
            dets = self._to_original(dets, inverse, orig_size)
        return dets

    def _to_original(
        self, dets: list[Tensor], inverse: Tensor, orig_size: Tensor | Sequence[Sequence[int]] | None
    ) -> list[Tensor]:
        b = len(dets)
        inv = torch.as_tensor(inverse, dtype=torch.float64).reshape(-1, 4)
        if inv.shape[0] == 1 and b > 1:
            inv = inv.expand(b, 4)
        if inv.shape[0] != b:
            raise ValueError(f"inverse must be [B, 4] with B = {b} images, got {tuple(torch.as_tensor(inverse).shape)}")
        if bool((inv[:, :2] <= 0).any()):
            raise ValueError(f"inverse scales (sx, sy) must be positive, got {inv[:, :2].tolist()}")
        net_h, net_w = self.image_size
        if orig_size is not None:
            osz = torch.as_tensor(orig_size, dtype=torch.float64).reshape(-1, 2)
            if osz.shape[0] == 1 and b > 1:
                osz = osz.expand(b, 2)
            if osz.shape[0] != b:
                raise ValueError(f"orig_size must be [B, 2] with B = {b}, got {tuple(osz.shape)}")
            max_xy = torch.stack((osz[:, 1], osz[:, 0]), dim=1)
        else:
            max_xy = (torch.tensor([net_w, net_h], dtype=torch.float64) - inv[:, 2:]) / inv[:, :2]
        out = []
        for d, (sx, sy, ox, oy), (mx, my) in zip(dets, inv.tolist(), max_xy.tolist()):
            boxes = d[:, 2:].double()
            boxes = (boxes - boxes.new_tensor([ox, oy, ox, oy])) / boxes.new_tensor([sx, sy, sx, sy])
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, mx)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, my)
            out.append(torch.cat((d[:, :2], boxes.to(d.dtype)), dim=1))
        return out

    def fuse(self, channels_last: bool = False) -> SSD:
        """An inference copy of this model: eval mode, every BatchNorm folded into the conv before it.

        Folding (``w' = w * gamma / sqrt(var + eps)``, ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``)
        removes the BN passes (about 15% of SSDLite's CPU time) with the same outputs up to float
        rounding. ``channels_last=True`` also stores weights NHWC and converts the input batch while
        it is still uint8: oneDNN's NHWC depthwise kernels are faster (SSDLite-MobileNetV3, one CPU
        thread, batch 8: 0.62x the time of the training-form model with both changes). The copy
        cannot be trained (its BN layers are gone) nor saved as a checkpoint: keep and save ``self``.
        """
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        model = copy.deepcopy(self).eval()

        def fold(module: nn.Module) -> None:
            for child in module.children():
                fold(child)
            names = list(module._modules)
            for a, b in pairwise(names):
                conv, bn = module._modules[a], module._modules[b]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                    module._modules[a] = fuse_conv_bn_eval(conv, bn)
                    module._modules[b] = nn.Identity()

        with torch.no_grad():
            fold(model)
        model.fused = True
        if channels_last:
            model.to(memory_format=torch.channels_last)
            model.input_norm.channels_last = True
        model.requires_grad_(False)
        return model

    # ------------------------------------------------------------------ training helpers
    def make_encoder(self, **kw: Any) -> Any:
        """An :class:`~ssdkit.matching.SSDTargetEncoder` for this model's anchors, image size,
        class count and variances; ``kw`` are the encoder's other options (``matching``,
        ``pos_iou_threshold``, ``neg_iou_limit``, ``degenerate``...)."""
        from ..matching import SSDTargetEncoder

        for fixed in ("anchors", "image_size", "n_classes", "variances", "normalize_coords"):
            if fixed in kw:
                raise TypeError(f"make_encoder: {fixed!r} comes from the model and cannot be overridden")
        return SSDTargetEncoder(self.anchor_generator, self.image_size, self.n_classes, variances=self.variances, **kw)

    def extra_repr(self) -> str:
        return (
            f"name={self.config.get('name')!r}, n_classes={self.n_classes}, image_size={self.image_size}, "
            f"anchors={self.num_anchors}"
        )


# ---------------------------------------------------------------------------------------------- helpers
def _class_names(names: Sequence[str] | None, n_classes: int) -> list[str]:
    if n_classes < 1:
        raise ConfigError(f"n_classes must be >= 1 (background is added automatically), got {n_classes}")
    if names is None:
        return [f"class_{k}" for k in range(1, n_classes + 1)]
    if isinstance(names, str):
        raise ConfigError(f"class_names must be a list of names, got the string {names!r}")
    out = [str(n) for n in names]
    if len(out) != n_classes:
        raise ConfigError(
            f"class_names has {len(out)} names but n_classes is {n_classes} (class_names excludes background)"
        )
    if any(n.lower() == "background" for n in out):
        raise ConfigError("class_names must not contain 'background': label 0 is background implicitly")
    dup = sorted({n for n in out if out.count(n) > 1})
    if dup:
        raise ConfigError(f"class_names has duplicates: {dup}")
    return out


def anchor_config(gen: AnchorGenerator) -> dict[str, Any]:
    """The anchor parameters of ``gen`` as ``build_model`` keywords (no image or feature-map sizes:
    those come from the model)."""
    cfg = gen.config()
    cfg.pop("image_size")
    cfg.pop("feature_map_sizes")
    return cfg


def iter_predictors(heads: nn.Module) -> Iterable[tuple[int, nn.Conv2d, nn.Conv2d]]:
    """``(layer index, class conv, box conv)`` of an :class:`SSDHead`."""
    for k, (c, b) in enumerate(zip(heads.cls, heads.box)):  # type: ignore[arg-type]
        yield k, final_conv(c), final_conv(b)


def init_conv_(module: nn.Module, kind: str = "he") -> None:
    """Initialise every conv of ``module``: ``'he'`` (Keras ``he_normal`` as in the Keras SSD code,
    fan-in, ReLU gain), ``'xavier'`` or ``'normal'`` (std 0.03, torchvision SSDLite); zero biases.
    Every other module with ``reset_parameters`` (BatchNorm incl. running stats, L2Norm, Linear) is
    reset too, so this fully initialises a module materialised with ``to_empty``."""
    if kind not in ("he", "xavier", "normal"):
        raise ValueError(f"unknown init {kind!r}")
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            if kind == "he":
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif kind == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.normal_(m.weight, 0.0, 0.03)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()


def keras_head_names(layer_names: Sequence[str], cls_fmt: str, box_fmt: str) -> OrderedDict[str, str]:
    """Keras predictor layer names -> ``heads.cls.k`` / ``heads.box.k`` module paths."""
    out: OrderedDict[str, str] = OrderedDict()
    for k, name in enumerate(layer_names):
        out[cls_fmt.format(name)] = f"heads.cls.{k}"
        out[box_fmt.format(name)] = f"heads.box.{k}"
    return out
