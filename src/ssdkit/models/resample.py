"""Fine-tuning to another class set: "weight sampling" of the class heads (reference section 5).

A class predictor with ``A`` boxes per cell and ``K = C + 1`` scores has ``A * K`` output channels
laid out ``box * K + class``. Resampling keeps, for every box slot, the background row and the rows
of the chosen classes in the order given, then appends rows for new classes -- exactly the Keras
``weight_sampling_tutorial`` indices (``[0, 3, 8, 1, ...] + i * K`` for every slot ``i``). New rows:
kernel ``N(0, 0.005)`` (``init='normal'``) or zeros, bias zeros (the tutorial's
``init=['gaussian', 'zeros']``). Box heads and everything else are untouched. Deliberate change:
new classes are appended after the kept ones (the Keras helper scattered them at random positions).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .ssd import SSD, iter_predictors

__all__ = ["class_indices", "resample_classes"]

_STD = 0.005


def class_indices(keep: Sequence[int | str] | None, class_names: Sequence[str] | None, n_classes: int) -> list[int]:
    """Source labels (``1..n_classes``) of ``keep`` (labels or names), in the given order."""
    if keep is None:
        return list(range(1, n_classes + 1))
    if isinstance(keep, str | int):
        raise ConfigError(f"keep must be a list of class ids or names, got {keep!r}")
    out: list[int] = []
    for k in keep:
        if isinstance(k, str):
            if class_names is None:
                raise ConfigError(f"keep names a class ({k!r}) but the source has no class names; use label ids")
            if k not in class_names:
                raise ConfigError(f"class {k!r} is not in the source classes {list(class_names)}")
            out.append(list(class_names).index(k) + 1)
        elif isinstance(k, int) and not isinstance(k, bool):
            if k == 0:
                raise ConfigError("keep must not contain 0: background is always kept (first)")
            if not 1 <= k <= n_classes:
                raise ConfigError(f"class id {k} is out of range 1..{n_classes}")
            out.append(k)
        else:
            raise ConfigError(f"keep entries must be class ids or names, got {k!r}")
    if len(set(out)) != len(out):
        raise ConfigError(f"keep has duplicates: {list(keep)}")
    return out


def _resample_pair(
    weight: Tensor, bias: Tensor | None, k_old: int, idx: list[int], n_add: int, init: str,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor | None]:
    """``[A*K, ...]`` kernel (+ bias) -> ``[A*K', ...]`` with rows ``[0] + idx`` per slot, then ``n_add`` new rows."""
    if weight.shape[0] % k_old:
        raise ConfigError(f"class head has {weight.shape[0]} outputs, not a multiple of {k_old} classes")
    a = weight.shape[0] // k_old
    rows = torch.tensor([0, *idx], dtype=torch.long, device=weight.device)
    w = weight.detach().reshape(a, k_old, *weight.shape[1:]).index_select(1, rows)
    new_w = torch.zeros((a, n_add, *weight.shape[1:]), dtype=weight.dtype, device=weight.device)
    if init == "normal" and n_add:
        new_w.normal_(0.0, _STD, generator=generator)
    w = torch.cat((w, new_w), dim=1).reshape(-1, *weight.shape[1:]).contiguous()
    b = None
    if bias is not None:
        b = bias.detach().reshape(a, k_old).index_select(1, rows)
        b = torch.cat((b, torch.zeros((a, n_add), dtype=bias.dtype, device=bias.device)), dim=1).reshape(-1)
    return w, b


def _new_names(old_names: Sequence[str] | None, idx: list[int], add: int | Sequence[str], k_new: int) -> list[str]:
    kept = [old_names[i - 1] for i in idx] if old_names is not None else [f"class_{i}" for i in idx]
    if isinstance(add, int):
        added = [f"class_{k}" for k in range(len(kept) + 1, k_new)]
    else:
        added = [str(n) for n in add]
    names = kept + added
    if len(set(names)) != len(names):
        raise ConfigError(f"the new class names are not unique: {names}")
    return names


def resample_classes(
    model_or_state: SSD | Mapping[str, Any],
    keep: Sequence[int | str] | None = None,
    add: int | Sequence[str] = 0,
    init: str = "normal",
    generator: torch.Generator | None = None,
) -> Any:
    """Resample the class heads to a new class set.

    Args:
        model_or_state: an :class:`SSD` (a resampled copy is returned, the input is unchanged), an
            ssdkit checkpoint dict (``{'format': 'ssdkit', 'model': config, 'state_dict': ...}``; a new
            checkpoint dict is returned with ``config``/``class_names`` updated), or a plain state dict
            of an SSD (a new state dict; boxes per cell are read from the box heads).
        keep: source classes to keep, as labels ``1..C`` or names, in the new order; ``None`` keeps all.
            Background is always kept as label 0.
        add: number of new classes, or their names, appended after the kept ones.
        init: ``'normal'`` (new kernel rows ~ N(0, 0.005)) or ``'zeros'``; new biases are zero.
        generator: optional RNG for the new rows.

    Returns:
        same kind as the input, with ``n_classes = len(keep) + add``.
    """
    if init not in ("normal", "zeros"):
        raise ConfigError(f"init must be 'normal' or 'zeros', got {init!r}")
    if isinstance(add, bool) or (isinstance(add, int) and add < 0):
        raise ConfigError(f"add must be a non-negative int or a list of names, got {add!r}")
    n_add = add if isinstance(add, int) else len(add)

    if isinstance(model_or_state, SSD):
        model = model_or_state
        idx = class_indices(keep, model.class_names, model.n_classes)
        k_old, k_new = model.n_classes + 1, len(idx) + n_add + 1
        if k_new < 2:
            raise ConfigError("the new class set is empty: keep or add at least one class")
        names = _new_names(model.class_names, idx, add, k_new)
        new = copy.deepcopy(model)
        for k, cls_conv, _ in iter_predictors(new.heads):
            w, b = _resample_pair(cls_conv.weight, cls_conv.bias, k_old, idx, n_add, init, generator)
            conv = nn.Conv2d(
                cls_conv.in_channels, w.shape[0], cls_conv.kernel_size, cls_conv.stride, cls_conv.padding,
                cls_conv.dilation, cls_conv.groups, cls_conv.bias is not None,
            ).to(device=w.device, dtype=w.dtype)
            with torch.no_grad():
                conv.weight.copy_(w)
                if b is not None:
                    conv.bias.copy_(b)
            _replace_final_conv(new.heads.cls[k], conv, new.heads.cls, k)
        new.heads.n_outputs = k_new
        new.n_classes = k_new - 1
        new.class_names = names
        new.config = {**new.config, "n_classes": k_new - 1, "class_names": names}
        return new

    state = dict(model_or_state)
    if state.get("format") == "ssdkit":
        cfg = dict(state["model"])
        idx = class_indices(keep, cfg.get("class_names"), int(cfg["n_classes"]))
        k_new = len(idx) + n_add + 1
        new_sd = _resample_state(state["state_dict"], int(cfg["n_classes"]) + 1, idx, n_add, init, generator)
        names = _new_names(cfg.get("class_names"), idx, add, k_new)
        cfg.update(n_classes=k_new - 1, class_names=names)
        return {**state, "model": cfg, "state_dict": new_sd, "class_names": names}
    k_old = _classes_from_state(state)
    idx = class_indices(keep, None, k_old - 1)
    return _resample_state(state, k_old, idx, n_add, init, generator)


def _replace_final_conv(predictor: nn.Module, conv: nn.Conv2d, parent: nn.ModuleList, k: int) -> None:
    if isinstance(predictor, nn.Conv2d):
        parent[k] = conv
    else:
        predictor.pred = conv


def _cls_keys(state: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """``(weight key, bias key)`` of each class head's final conv in an SSD state dict."""
    out = []
    k = 0
    while True:
        for stem in (f"heads.cls.{k}.", f"heads.cls.{k}.pred."):
            if f"{stem}weight" in state and state[f"{stem}weight"].dim() == 4:
                out.append((f"{stem}weight", f"{stem}bias" if f"{stem}bias" in state else None))
                break
        else:
            return out
        k += 1


def _classes_from_state(state: Mapping[str, Any]) -> int:
    """``C + 1`` from a plain state dict: class outputs / boxes per cell (= box outputs / 4)."""
    keys = _cls_keys(state)
    if not keys:
        raise ConfigError("not an SSD state dict: no 'heads.cls.0.weight' (or 'heads.cls.0.pred.weight')")
    w = state[keys[0][0]]
    box = state.get("heads.box.0.weight", state.get("heads.box.0.pred.weight"))
    if box is None:
        raise ConfigError("not an SSD state dict: no 'heads.box.0.weight' to read the boxes per cell from")
    return w.shape[0] // (box.shape[0] // 4)


def _resample_state(
    state: Mapping[str, Tensor], k_old: int, idx: list[int], n_add: int, init: str, generator: torch.Generator | None
) -> dict[str, Tensor]:
    if len(idx) + n_add < 1:
        raise ConfigError("the new class set is empty: keep or add at least one class")
    out = dict(state)
    for wk, bk in _cls_keys(state):
        w, b = _resample_pair(state[wk], state[bk] if bk else None, k_old, idx, n_add, init, generator)
        out[wk] = w
        if bk:
            out[bk] = b  # type: ignore[assignment]
    return out
