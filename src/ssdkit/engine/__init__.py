"""Training and evaluation engine: config loading, the Trainer, schedules, logging, evaluation.

``import ssdkit.engine`` is cheap: the trainer and evaluator (torch, data, plots) load on first use.

- :mod:`.config`: :func:`load_config`, :func:`validate_config`, :func:`apply_overrides`, ``SCHEMA``.
- :mod:`.trainer`: :class:`Trainer`, :func:`train`, :class:`TrainResult`, :class:`NonFiniteLossError`.
- :mod:`.evaluator`: :func:`evaluate` (used by training and ``ssdkit evaluate``).
- :mod:`.schedule`, :mod:`.logging`, :mod:`.plots`, :mod:`.sampler`, :mod:`.seed`, :mod:`.distributed`.
"""

from __future__ import annotations

from typing import Any

from .config import apply_overrides, default_config, dump_config, load_config, validate_config

_LAZY = {
    "Trainer": ("ssdkit.engine.trainer", "Trainer"),
    "TrainResult": ("ssdkit.engine.trainer", "TrainResult"),
    "NonFiniteLossError": ("ssdkit.engine.trainer", "NonFiniteLossError"),
    "train": ("ssdkit.engine.trainer", "train"),
    "evaluate": ("ssdkit.engine.evaluator", "evaluate"),
    "EvalOutput": ("ssdkit.engine.evaluator", "EvalOutput"),
}

__all__ = ["load_config", "validate_config", "apply_overrides", "default_config", "dump_config", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'ssdkit.engine' has no attribute {name!r}")
