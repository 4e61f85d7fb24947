"""Freezing leading layers for fine-tuning (``train.freeze``).

A frozen module keeps its weights (``requires_grad=False``, so the optimizer never sees them) and
its BatchNorm statistics (it stays in eval mode while the rest of the model trains). Nothing
upstream of the first trainable layer then needs a backward pass, which is where most of a
MobileNet's training time goes on CPU: the stride-2 and stride-4 blocks carry the largest
activations (e.g. 16x96x150x150 floats for one MobileNetV2 expansion at 300 px), and their
BatchNorm and ReLU6 backward passes are memory-bound. Freezing the stem and the first three blocks
of an ImageNet MobileNetV2 (``backbone.stage1.0`` ... ``backbone.stage1.3``) halves the step time
of SSDLite at 300 px here (``python bench/train.py``); on BCCD it reached 0.9196 VOC10 in 17
minutes against 0.9216 in 21 training every layer (``docs/results.md``). It is the same idea as
torchvision's ``trainable_backbone_layers``, named by module or found by stride instead of
counted, so it works for any model and says what is frozen.

Two ways to say what is frozen:

- ``train.freeze_stride: 4``: the backbone's leading layers whose outputs are at stride 4 or finer
  (for MobileNetV2: the stem and the blocks before the first stride-8 block). The layers are found
  by running the model once on an input of its size, so it means the same thing whatever the
  architecture or its options (``stride8`` renumbers the blocks, the stride does not change).
- ``train.freeze: [name, ...]``: any modules by name as in ``model.named_modules()``
  (``ssdkit models NAME --modules 3`` lists them with their output sizes).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from torch import nn

from ..errors import ConfigError

__all__ = ["freeze_modules", "keep_frozen_in_eval", "module_names", "modules_up_to_stride"]


def module_names(model: nn.Module, depth: int | None = None) -> list[str]:
    """Names of ``model``'s submodules (``depth`` dotted parts at most), in registration order."""
    names = [n for n, _ in model.named_modules() if n]
    if depth is not None:
        names = [n for n in names if n.count(".") < depth]
    return names


def _resolve(model: nn.Module, names: Sequence[str], key: str) -> list[nn.Module]:
    modules = dict(model.named_modules())
    out: list[nn.Module] = []
    for name in names:
        if not isinstance(name, str) or not name or name not in modules:
            close = difflib.get_close_matches(str(name), [n for n in modules if n], n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}?" if close else (
                f"top-level modules: {', '.join(module_names(model, 1))}")
            raise ConfigError(f"{key}: no module named {name!r} in the model; {hint} "
                              "(`ssdkit models --modules MODEL` lists every name)")
        out.append(modules[name])
    return out


def freeze_modules(model: nn.Module, names: Sequence[str], key: str = "train.freeze") -> int:
    """Freeze the named submodules of ``model`` in place; returns how many parameters were frozen.

    Each named module gets ``requires_grad_(False)`` on all its parameters and is put in eval mode
    (BatchNorm uses and keeps its running statistics). Call :func:`keep_frozen_in_eval` after every
    ``model.train()``. Unknown names raise :class:`~ssdkit.errors.ConfigError` naming ``key`` and
    the closest module names.
    """
    frozen = 0
    seen: set[int] = set()
    for module in _resolve(model, names, key):
        for p in module.parameters():
            if id(p) not in seen and p.requires_grad:
                seen.add(id(p))
                frozen += p.numel()
            p.requires_grad_(False)
        module.eval()
    return frozen


def keep_frozen_in_eval(model: nn.Module, names: Sequence[str]) -> None:
    """Put the named (frozen) submodules back in eval mode after ``model.train()``.

    Names are looked up again each time, so this also holds after the module tree was rebuilt
    (``SyncBatchNorm.convert_sync_batchnorm``).
    """
    if names:
        for module in _resolve(model, names, "train.freeze"):
            module.eval()


def modules_up_to_stride(model: nn.Module, stride: int, image_size: Sequence[int] | None = None) -> list[str]:
    """Names of the backbone's leading modules whose outputs are all at ``stride`` or finer.

    Dry-runs ``model.backbone`` (or ``model``) at ``image_size`` (default ``model.image_size``) with
    :func:`~ssdkit.models.ssd.module_output_shapes`: in completion order, every module that finished
    before the first module with an output coarser than ``stride`` is listed (outermost names only,
    so a block is listed, not its convolutions). An output is at stride ``s`` or finer when
    ``out_h * s >= H`` and ``out_w * s >= W`` (odd sizes round up, as convolutions do).

    Returns ``[]`` for ``stride < 2`` or when the very first layer is already coarser.
    """
    from ..models.ssd import module_output_shapes

    if stride < 2:
        return []
    backbone = getattr(model, "backbone", model)
    prefix = "backbone." if backbone is not model else ""
    size = image_size if image_size is not None else getattr(model, "image_size", None)
    if size is None:
        raise ValueError("modules_up_to_stride: give image_size (the model has no image_size)")
    h, w = int(size[0]), int(size[-1])
    done: list[str] = []
    for name, shape in module_output_shapes(backbone, (h, w)):
        if len(shape) != 4:
            continue
        if shape[-2] * stride < h or shape[-1] * stride < w:
            break
        done.append(name)
    # outermost only: drop names inside another listed module
    listed = set(done)
    outer = [n for n in done if not any(p in listed for p in _parents(n))]
    return [prefix + n for n in dict.fromkeys(outer)]


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]
