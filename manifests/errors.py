"""Errors raised by ``manifests``: each carries one clear line that says what to do.

``manifests`` imports no other package of ours, so these do not derive from
``backends.errors.ServeDeckError``; callers in ``backends``/``tui`` catch ``ManifestError`` and re-raise
it as their ``ConfigError`` (the message is already user-facing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from manifests.fit import FitResult


class ManifestError(ValueError):
    """Base class: ``str(err)`` is one line for the user."""


class SpecError(ManifestError):
    """A DeploymentSpec (or a flag that builds one) is invalid."""


class CatalogError(ManifestError):
    """Unknown machine type, no price for it, or a GPU count no machine offers."""


class PriceFileError(ManifestError):
    """A user price file cannot be read or does not have the expected shape."""


class SecretSourceError(ManifestError):
    """The HF token cannot be read from the env var or file the spec names (the value is never shown)."""


class ModelConfigError(ManifestError):
    """A model config.json cannot be read, misses fields servedeck needs, or names an unknown model."""


class DoesNotFitError(ManifestError):
    """The model does not fit the hardware; ``result`` has the numbers."""

    def __init__(self, result: FitResult) -> None:
        super().__init__(result.message)
        self.result = result
