"""Import of Keras ``.h5`` weight files (``model.save_weights`` / ``model.save`` layout) by layer name.

The Keras 2 HDF5 layout: the root group (or ``model_weights`` in a full-model file) has the attribute
``layer_names`` (possibly chunked as ``layer_names0``, ``layer_names1``...); each layer is a group
with the attribute ``weight_names`` (e.g. ``[b'conv1_1/kernel:0', b'conv1_1/bias:0']``) and the
datasets at those paths inside the group (``conv1_1/conv1_1/kernel:0``). Layers without weights
(input, pooling, reshape...) have empty ``weight_names``.

Conversions (TensorFlow -> PyTorch):

- ``Conv2D`` kernel ``[kh, kw, in, out]`` (HWIO) -> ``[out, in, kh, kw]`` (OIHW); bias unchanged.
  Both frameworks compute cross-correlation, so kernels are not flipped.
- ``DepthwiseConv2D`` kernel ``[kh, kw, in, mult]`` -> ``[in * mult, 1, kh, kw]`` (output ``c * mult + m``).
- ``BatchNormalization`` ``gamma, beta, moving_mean, moving_variance`` -> ``weight, bias,
  running_mean, running_var`` (the Keras epsilon, 1e-3, is what ssdkit's BN layers use).
- ``L2Normalization`` ``gamma`` (``conv4_3_norm_gamma:0``) -> ``L2Norm.weight``.

SSD predictor outputs need **no** permutation: a Keras ``Reshape((-1, n_classes))`` on the NHWC
output orders ``(row, column, box, class)`` with channel ``box * n_classes + class``, which is
ssdkit's layout. Caffe-converted weights (``VGG_ILSVRC_16_layers_fc_reduced.h5``, the trained
SSD300/SSD512 files) expect BGR input; ssdkit's VGG models keep that through ``swap_channels=[2, 1, 0]``
with mean ``[123, 117, 104]`` given in RGB order, like the Keras model.

Keras 1 names (``conv1_1_W:0``, ``conv1_1_b:0``) are accepted as kernel/bias; Theano-ordered kernels
are not supported.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from .loading import LoadReport
from .ssd import L2Norm
from .weights import WeightsNotFoundError

__all__ = ["load_keras_h5", "load_keras_h5_into", "read_keras_h5"]

# Keras weight short names -> canonical role; checked in order (depthwise_kernel before kernel)
_ROLES = [
    ("depthwise_kernel", "depthwise_kernel"),
    ("kernel", "kernel"),
    ("bias", "bias"),
    ("gamma", "gamma"),
    ("beta", "beta"),
    ("moving_mean", "moving_mean"),
    ("moving_variance", "moving_variance"),
    ("W", "kernel"),  # Keras 1
    ("b", "bias"),
]


def _role(weight_name: str) -> str:
    base = weight_name.split("/")[-1].split(":")[0]
    for suffix, role in _ROLES:
        if base == suffix or base.endswith("_" + suffix):
            return role
    raise ConfigError(f"unrecognised Keras weight {weight_name!r} (expected kernel, bias, gamma, beta, moving_*)")


def _attr_list(group: Any, name: str) -> list[str]:
    """A string-list attribute, including Keras' chunked form (``name0``, ``name1``...)."""
    if name in group.attrs:
        raw = list(group.attrs[name])
    else:
        raw, k = [], 0
        while f"{name}{k}" in group.attrs:
            raw.extend(group.attrs[f"{name}{k}"])
            k += 1
    return [r.decode("utf8") if isinstance(r, bytes | np.bytes_) else str(r) for r in raw]


def read_keras_h5(path: str | os.PathLike[str]) -> OrderedDict[str, OrderedDict[str, np.ndarray]]:
    """``{layer name: {role: array}}`` for the layers with weights, in file order.

    Roles: ``kernel``, ``depthwise_kernel``, ``bias``, ``gamma``, ``beta``, ``moving_mean``,
    ``moving_variance``. Raises ``WeightsNotFoundError``/``ConfigError`` naming the file.
    """
    import h5py

    p = Path(path)
    if not p.is_file():
        raise WeightsNotFoundError(f"Keras weights file not found: {p}")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise ConfigError(f"{p} is not a readable HDF5 file: {exc}") from None
    with f:
        root = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
        names = _attr_list(root, "layer_names")
        if not names:
            raise ConfigError(f"{p} is not a Keras weights file (no 'layer_names' attribute)")
        out: OrderedDict[str, OrderedDict[str, np.ndarray]] = OrderedDict()
        for layer in names:
            if layer not in root:
                raise ConfigError(f"{p}: layer {layer!r} is listed in layer_names but has no group")
            g = root[layer]
            weights: OrderedDict[str, np.ndarray] = OrderedDict()
            for wn in _attr_list(g, "weight_names"):
                if wn not in g:
                    raise ConfigError(f"{p}: weight {layer}/{wn} is listed in weight_names but missing")
                role = _role(wn)
                if role in weights:
                    raise ConfigError(f"{p}: layer {layer!r} has two {role} weights")
                weights[role] = np.asarray(g[wn][()])
            if weights:
                out[layer] = weights
    return out


def _convert(layer: str, module: nn.Module, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keras arrays of one layer -> ``{param/buffer name of module: array in PyTorch layout}``."""
    out: dict[str, np.ndarray] = {}
    if isinstance(module, nn.Conv2d):
        depthwise = module.groups > 1 and module.groups == module.in_channels
        if depthwise:
            k = weights.get("depthwise_kernel", weights.get("kernel"))
            if k is None or k.ndim != 4:
                raise ConfigError(f"Keras layer {layer!r}: expected a 4-d depthwise_kernel for {module}")
            kh, kw, cin, mult = k.shape
            out["weight"] = k.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)
        else:
            k = weights.get("kernel")
            if k is None or k.ndim != 4:
                raise ConfigError(f"Keras layer {layer!r}: expected a 4-d kernel (HWIO) for {module}")
            out["weight"] = k.transpose(3, 2, 0, 1)
        if "bias" in weights:
            out["bias"] = weights["bias"]
    elif isinstance(module, nn.BatchNorm2d):
        for role, name in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                           ("moving_variance", "running_var")):
            if role in weights:
                out[name] = weights[role]
    elif isinstance(module, L2Norm):
        out["weight"] = weights["gamma"]
    else:
        raise ConfigError(f"Keras layer {layer!r} maps to {type(module).__name__}, which has no Keras import rule")
    unused = set(weights) - {"kernel", "depthwise_kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance"}
    if unused:
        raise ConfigError(f"Keras layer {layer!r}: unexpected weights {sorted(unused)}")
    return out


def _unique_leaf_modules(root: nn.Module, prefix: str = "") -> dict[str, tuple[str, nn.Module]]:
    """Leaf-name -> (full path, module) for modules owning tensors, when the leaf name is unique."""
    seen: dict[str, list[tuple[str, nn.Module]]] = {}
    for path, m in root.named_modules():
        if not path or not (list(m.parameters(recurse=False)) or list(m.buffers(recurse=False))):
            continue
        seen.setdefault(path.rsplit(".", 1)[-1], []).append((prefix + path, m))
    return {leaf: hits[0] for leaf, hits in seen.items() if len(hits) == 1}


def load_keras_h5_into(
    module: nn.Module,
    path: str | os.PathLike[str],
    skip_mismatch: bool = False,
    require: Iterable[str] | None = None,
    names: Mapping[str, str] | None = None,
    prefix: str = "",
) -> LoadReport:
    """Load a Keras ``.h5`` into ``module`` by layer name (Keras ``load_weights(by_name=True)``).

    A Keras layer maps to ``names[layer]`` (a module path in ``module``) if given, else to the
    module of ``module`` whose own (leaf) name equals the layer name, when that name is unique.

    Args:
        skip_mismatch: record shape mismatches in ``report.reset`` instead of raising.
        require: Keras layer names that must be in the file (e.g. the VGG16 convs).
        prefix: prepended to module paths in the report.

    Raises:
        ConfigError: a shape mismatch (unless ``skip_mismatch``), a required layer absent, or a file
            with no layer of this model at all.
    """
    data = read_keras_h5(path)
    leaves = _unique_leaf_modules(module, prefix)
    modules = dict(module.named_modules())
    report = LoadReport()
    planned: list[tuple[str, nn.Module, dict[str, np.ndarray]]] = []
    for layer, weights in data.items():
        target: tuple[str, nn.Module] | None = None
        if names and layer in names:
            target = (prefix + names[layer], modules[names[layer]])
        elif layer in leaves:
            target = leaves[layer]
        if target is None:
            report.unexpected.append(layer)
            continue
        mpath, mod = target
        converted = _convert(layer, mod, weights)
        own = dict(mod.named_parameters(recurse=False)) | dict(mod.named_buffers(recurse=False))
        ok = True
        for pname, arr in converted.items():
            if pname not in own:
                raise ConfigError(f"{path}: Keras layer {layer!r} has {pname} but {mpath} has no such tensor")
            if tuple(own[pname].shape) != tuple(arr.shape):
                if not skip_mismatch:
                    raise ConfigError(
                        f"{path}: Keras layer {layer!r} {pname} has shape {tuple(arr.shape)} (after HWIO->OIHW) "
                        f"but {mpath}.{pname} is {tuple(own[pname].shape)}; wrong model/class count? "
                        "(skip_mismatch=True keeps the model's init for such layers)"
                    )
                report.reset.append((f"{mpath}.{pname}", tuple(arr.shape), tuple(own[pname].shape)))
                ok = False
        if ok:
            planned.append((mpath, mod, converted))
    if require is not None:
        absent = [r for r in require if r not in data]
        if absent:
            raise ConfigError(f"{path}: required Keras layers missing from the file: {absent}")
    if not planned and not report.reset:
        raise ConfigError(
            f"{path}: no layer of the file matches this model (file layers: {list(data)[:8]}...); "
            "is it the right weights file?"
        )
    with torch.no_grad():
        for mpath, mod, converted in planned:
            own = dict(mod.named_parameters(recurse=False)) | dict(mod.named_buffers(recurse=False))
            for pname, arr in converted.items():
                own[pname].copy_(torch.from_numpy(np.ascontiguousarray(arr)).to(own[pname].dtype))
            report.loaded.append(mpath)
    loaded_paths = {p for p, _, _ in planned}
    for p, m in module.named_modules():
        reset = any(r[0].startswith(prefix + p + ".") for r in report.reset)
        if p and list(m.parameters(recurse=False)) and prefix + p not in loaded_paths and not reset:
            report.missing.append(prefix + p)
    return report


def load_keras_h5(model: nn.Module, path: str | os.PathLike[str], skip_mismatch: bool = False) -> LoadReport:
    """Load a Keras SSD weights file (e.g. a trained ``VGG_VOC0712_SSD_300x300_iter_120000.h5``) into
    an :class:`~ssdkit.models.SSD`: backbone layers by their names, predictors by the model's
    ``keras_names`` (``conv4_3_norm_mbox_conf`` -> ``heads.cls.0``...).

    Returns a :class:`~ssdkit.models.loading.LoadReport` (module paths relative to the model).
    ``skip_mismatch=True`` keeps the model's own class heads when the class counts differ.
    """
    names = dict(getattr(model, "keras_names", {}) or {})
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return load_keras_h5_into(model, path, skip_mismatch, names=names)
    # backbone layers by unique leaf name, heads via keras_names (paths relative to the model)
    full = {leaf: path_ for leaf, (path_, _) in _unique_leaf_modules(backbone, "backbone.").items()} | names
    return load_keras_h5_into(model, path, skip_mismatch, names=full)
