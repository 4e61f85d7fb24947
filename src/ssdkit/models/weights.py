"""Pretrained backbone weights, offline only.

``backbone_weights='imagenet'`` goes through torchvision's weights API (``MobileNet_V2_Weights.
IMAGENET1K_V1``...), which reads ``$TORCH_HOME/hub/checkpoints/<file>`` when it is there. ssdkit checks
that file exists **before** asking torchvision, so it never starts a download (no network, no hang)
and a missing file is a clear error naming the path to put it at. ``backbone_weights`` may also be a
local file: a ``.pth``/``.pt`` state dict (loaded with ``weights_only=True``) or a Keras ``.h5``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor

from ..errors import ConfigError, SSDKitError

__all__ = ["WeightsNotFoundError", "hub_checkpoint_path", "read_state_file", "torchvision_state"]


class WeightsNotFoundError(SSDKitError, FileNotFoundError):
    """Pretrained weights are not available locally (ssdkit never downloads)."""


def hub_checkpoint_path(url: str) -> Path:
    """Where torchvision's weights API looks for ``url``: ``torch.hub.get_dir()/checkpoints/<file name>``
    (``$TORCH_HOME/hub/checkpoints`` when ``TORCH_HOME`` is set)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def torchvision_state(weights: Any, what: str = "backbone_weights='imagenet'") -> dict[str, Tensor]:
    """State dict of a torchvision ``WeightsEnum`` member, from the local hub cache only.

    Raises:
        WeightsNotFoundError: the cache file is absent; the message names the expected path and URL.
    """
    path = hub_checkpoint_path(weights.url)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"{what}: torchvision weights {weights} are not in the local cache: expected {path} "
            f"(ssdkit never downloads; fetch {weights.url} to that path, set TORCH_HOME to a directory "
            "whose hub/checkpoints holds it, or pass backbone_weights=<local .pth file>)"
        )
    try:
        return weights.get_state_dict(progress=False, check_hash=False, weights_only=True, map_location="cpu")
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        # a truncated or foreign file in the cache (the URL's hash prefix is not checked offline)
        raise ConfigError(f"{what}: cannot read {path}: {exc}") from None


def read_state_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """A local ``.pth``/``.pt`` weights file as a flat ``{name: tensor}`` dict (``weights_only=True``).

    Accepts a plain state dict, an ssdkit checkpoint (its ``state_dict``) or a dict with a
    ``state_dict``/``model`` entry holding one.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsNotFoundError(f"backbone_weights file not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        raise ConfigError(f"cannot read weights file {p} (weights-only load): {str(exc).splitlines()[0]}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ConfigError(f"{p} is not a state dict (a mapping of parameter names to tensors)")
    return obj


def load_local_weights(
    backbone: torch.nn.Module, path: str | os.PathLike[str], model_name: str, require: list[str] | None = None
) -> None:
    """Load a local weights file into ``backbone``: a Keras ``.h5``/``.hdf5`` by layer name, else a
    state dict of the backbone (keys may carry the ``backbone.`` prefix of a whole-model state dict).

    Raises ``ConfigError`` when no tensor of the file fits the backbone or a shape differs.
    """
    if str(path).lower().endswith((".h5", ".hdf5")):
        from .keras_h5 import load_keras_h5_into

        load_keras_h5_into(backbone, path, require=require)
        return
    state = {k.removeprefix("backbone."): v for k, v in read_state_file(path).items()}
    own = backbone.state_dict()
    matched = [k for k in state if k in own]
    bad = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in matched if state[k].shape != own[k].shape]
    if not matched or bad:
        raise ConfigError(
            f"{path}: not weights for the {model_name} backbone "
            + (f"(shape mismatches: {bad[:3]})" if bad else f"(none of its keys fit, e.g. {list(state)[:3]})")
        )
    backbone.load_state_dict({k: state[k] for k in matched}, strict=False)
