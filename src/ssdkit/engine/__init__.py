"""Training and evaluation engine: config loading, the Trainer, schedules, logging."""

from __future__ import annotations

from .config import apply_overrides, default_config, dump_config, load_config, validate_config

__all__ = ["load_config", "validate_config", "apply_overrides", "default_config", "dump_config"]
