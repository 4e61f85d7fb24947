"""ssdkit checkpoints: one file format for models and training state.

A checkpoint is a ``torch.save`` of a plain dict::

    {"format": "ssdkit", "version": 1,
     "model": {...},            # model.config: build_model(**config) rebuilds the architecture,
                                # anchors, normalisation and class names
     "state_dict": {...},       # model weights
     "class_names": [...],      # without background
     ...extra}                  # from the trainer: optimizer/scheduler/scaler state, epoch, metrics,
                                # rng states, resolved training config

Everything in it is loadable with ``torch.load(weights_only=True)``: tensors, numbers, strings,
``None``, lists, tuples and dicts. :func:`save` checks ``extra`` and converts the harmless cases
(numpy arrays and scalars, paths, sets) or refuses anything else with the key path, so a file that
saved can always be loaded. Writes are atomic (temporary file in the same directory, fsync,
``os.replace``): a crash never leaves a half-written checkpoint under the final name.

:func:`load` rebuilds the model with no parameter from the user; :func:`load_checkpoint` returns the
dict for the trainer (resume). Both refuse files that need unpickling of arbitrary objects (e.g. a
whole model saved with ``torch.save(model)``) and report missing, truncated or foreign files as
:class:`~ssdkit.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import CheckpointError, ConfigError
from .fileio import atomic_open

__all__ = ["FORMAT", "VERSION", "load", "load_checkpoint", "load_weights", "save"]

FORMAT = "ssdkit"
VERSION = 1

_RESERVED = ("format", "version", "model", "state_dict", "class_names")


def _plain(value: Any, where: str) -> Any:
    """``value`` made ``weights_only``-safe, or ``CheckpointError`` naming ``where``."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, torch.dtype | torch.device | torch.Size):
        return value
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    import numpy as np

    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise CheckpointError(f"checkpoint entry {where}: numpy object arrays cannot be saved safely")
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):  # before the float check: np.float64 subclasses float
        return value.item()
    for plain in (bool, int, float, str):  # subclasses (IntEnum, str enums...) become the plain type
        if isinstance(value, plain):
            return plain(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str | int | float | bool) and k is not None:
                raise CheckpointError(
                    f"checkpoint entry {where}: dict key {k!r} ({type(k).__name__}) is not a plain type"
                )
            out[k] = _plain(v, f"{where}.{k}")
        return out
    if isinstance(value, tuple):
        return tuple(_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, list):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, set | frozenset):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(sorted(value, key=repr))]
    raise CheckpointError(
        f"checkpoint entry {where} is a {type(value).__module__}.{type(value).__name__}, which "
        "torch.load(weights_only=True) cannot read back; store its state_dict() or plain values instead"
    )


def save(path: str | os.PathLike[str], model: torch.nn.Module, **extra: Any) -> Path:
    """Write ``model`` (config, weights, class names) and ``extra`` to ``path`` atomically.

    Args:
        path: destination file (parent directories are created).
        model: an :class:`~ssdkit.models.SSD` (anything with ``config``, ``class_names`` and
            ``state_dict()``).
        **extra: training state (``optimizer=opt.state_dict()``, ``epoch=3``, ``metrics={...}``...);
            must be plain data (see module docstring). Keys ``format``, ``version``, ``model``,
            ``state_dict``, ``class_names`` are reserved.

    Returns:
        the path written.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, Mapping) or "name" not in config:
        raise CheckpointError(
            f"cannot save {type(model).__name__}: not an ssdkit model (no .config with a 'name'); "
            "build it with ssdkit.models.build_model or SSD.from_backbone"
        )
    if getattr(model, "fused", False):
        raise CheckpointError(
            "cannot save a fused inference copy (SSD.fuse() folded its BatchNorm layers away); save the "
            "original model instead"
        )
    clash = [k for k in extra if k in _RESERVED]
    if clash:
        raise CheckpointError(f"checkpoint extra keys {clash} are reserved ({list(_RESERVED)})")
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model": _plain(dict(config), "model"),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "class_names": list(getattr(model, "class_names", [])),
    }
    for k, v in extra.items():
        payload[k] = _plain(v, k)

    dest = Path(path)
    with atomic_open(dest, "wb") as f:  # temp file in the same folder, fsync, os.replace, fsync folder
        torch.save(payload, f)
    return dest


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint dict (``format``, ``version``, ``model``, ``state_dict``, ``class_names``, extras).

    Raises:
        CheckpointError: missing, truncated/corrupt, pickled-object or non-ssdkit file (message names it).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, not a file: {p}")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        # "Unsupported global": the pickle names a class or function (a pickled nn.Module, optimizer...);
        # any other unpickling failure means the bytes are not a PyTorch file at all (text, HDF5...)
        if "Unsupported global" in msg:
            raise CheckpointError(
                f"{p} contains pickled Python objects (e.g. a whole model saved with torch.save(model)), "
                "which ssdkit does not unpickle because loading them can run arbitrary code; re-save "
                "from trusted code with ssdkit.checkpoint.save(path, model) or torch.save(model.state_dict())"
            ) from None
        raise CheckpointError(f"{p} is corrupt or not a PyTorch file (it cannot be unpickled as one)") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as exc:
        # torch raises RuntimeError (zip damaged), EOFError (empty), KeyError (not a torch file at all)...
        first = (str(exc).splitlines() or [""])[0]
        raise CheckpointError(
            f"{p} is truncated or corrupt: cannot read it as a PyTorch file ({type(exc).__name__}: {first[:200]})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
            raise CheckpointError(
                f"{p} is a plain state dict, not an ssdkit checkpoint: build the model with "
                "ssdkit.models.build_model(...) and load it with ssdkit.models.load_weights(model, state)"
            )
        raise CheckpointError(f"{p} is not an ssdkit checkpoint (no format='ssdkit' entry)")
    version = obj.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{p} has checkpoint version {version!r}; this ssdkit reads versions <= {VERSION}")
    for key in ("model", "state_dict"):
        if not isinstance(obj.get(key), dict):
            raise CheckpointError(f"{p} is missing its {key!r} entry")
    return obj


def load(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Any:
    """Rebuild the model saved in ``path`` (architecture, anchors, normalisation, class names,
    weights), on ``device``, in eval mode. No argument has to be repeated by the user."""
    from .models.registry import build_uninitialized

    ckpt = load_checkpoint(path)
    config = dict(ckpt["model"])
    try:
        # every parameter and buffer is overwritten by the strict load below: skip the weight init
        model = build_uninitialized(**config)
    except ConfigError as exc:
        raise CheckpointError(
            f"{path}: cannot rebuild model {config.get('name')!r}: {exc}"
            + (" (register its builder with ssdkit.models.register_model before loading)"
               if "unknown model" in str(exc) else "")
        ) from None
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the saved architecture: {first}") from None
    return model.to(device).eval()


def load_weights(model: torch.nn.Module, source: str | os.PathLike[str] | Mapping[str, Tensor], strict: bool = False,
                 verbose: bool = True) -> Any:
    """Load matching weights from a checkpoint file or a state dict into ``model`` (e.g. fine-tuning to
    another class count); see :func:`ssdkit.models.load_weights`. Returns its ``LoadReport``."""
    from .models.loading import load_weights as _load_weights

    state = load_checkpoint(source)["state_dict"] if isinstance(source, str | os.PathLike) else source
    return _load_weights(model, state, strict=strict, verbose=verbose)
