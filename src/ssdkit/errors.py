"""User-facing error types.

Anything a user can cause (a wrong path, a bad config value, a broken annotation) raises a subclass
of :class:`SSDKitError` (or ``ValueError``/``FileNotFoundError`` from validation) with a message that
names the file and line/object and says what to do. The CLI prints these as one line, no traceback.
"""

from __future__ import annotations

__all__ = ["SSDKitError", "ConfigError", "DataError", "CheckpointError", "ExportError"]


class SSDKitError(Exception):
    """Base class of errors caused by user input; the CLI prints them as one line."""


class ConfigError(SSDKitError, ValueError):
    """A configuration file or override is invalid (unknown key, wrong type, impossible value)."""


class DataError(SSDKitError, ValueError):
    """A dataset, annotation or image cannot be used as given."""


class CheckpointError(SSDKitError, ValueError):
    """A checkpoint file is missing, corrupt, or not an ssdkit checkpoint."""


class ExportError(SSDKitError, RuntimeError):
    """Exporting or verifying an exported model failed."""
