"""The one exception family of sparsetel: every error a user can cause is a SparsetelError."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "ModelMismatchError",
    "SparsetelError",
    "WireError",
]


class SparsetelError(Exception):
    """Base of every error sparsetel raises on purpose."""


class ConfigError(SparsetelError):
    """A configuration value is missing, unknown or of the wrong type.

    `key` is the dotted path of the offending key (e.g. ``"broker.port"``), or ``""``.
    """

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


class DataError(SparsetelError):
    """Input data (a CSV, a measurement) cannot be used as it is."""


class WireError(SparsetelError):
    """A frame cannot be encoded or decoded: truncated, oversized or inconsistent.

    `reason` is a short machine-friendly tag (``"truncated"``, ``"nnz_gt_L"``, ...) used to
    count rejects; the message says what was wrong in words.
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class ModelMismatchError(SparsetelError):
    """A model does not fit what it is used with (KPI schema, L, K, unknown model ref)."""
