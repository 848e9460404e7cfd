"""The config's error type and the names every config module shares."""

from __future__ import annotations

BASE_METHOD = "base"  # the untrained model's evaluation row: results/{model}/base/none/…
BASE_DATASET = "none"


class ConfigError(ValueError):
    """A config that cannot run, with the key to fix in the message."""
