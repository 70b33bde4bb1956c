"""The one module that owns ServeDeck's paths and environment configuration.

Directories come from platformdirs and can be overridden, in order of precedence, by an
explicit argument, then the ``SERVEDECK_*_DIR`` environment variables (tests use these).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import platformdirs

from backends.errors import ConfigError

APP_NAME = "servedeck"

DATA_DIR_ENV = "SERVEDECK_DATA_DIR"
CACHE_DIR_ENV = "SERVEDECK_CACHE_DIR"
CONFIG_DIR_ENV = "SERVEDECK_CONFIG_DIR"


def _resolve(explicit: Path | str | None, env_name: str, default: str) -> Path:
    if explicit is not None:
        return Path(explicit).expanduser()
    from_env = os.environ.get(env_name)
    if from_env:
        return Path(from_env).expanduser()
    return Path(default)


def data_dir(explicit: Path | str | None = None) -> Path:
    """Where the sessions database and saved runs live."""
    return _resolve(explicit, DATA_DIR_ENV, platformdirs.user_data_dir(APP_NAME))


def cache_dir(explicit: Path | str | None = None) -> Path:
    """Where derived, re-creatable files live (the assembled .gguf, engine logs)."""
    return _resolve(explicit, CACHE_DIR_ENV, platformdirs.user_cache_dir(APP_NAME))


def config_dir(explicit: Path | str | None = None) -> Path:
    """Where user configuration (price overrides, manual targets) lives."""
    return _resolve(explicit, CONFIG_DIR_ENV, platformdirs.user_config_dir(APP_NAME))


def ensure_writable_dir(path: Path, purpose: str, env_name: str = DATA_DIR_ENV) -> Path:
    """Create ``path`` if needed and prove it is writable, or raise one clear ConfigError."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        # A unique name: several threads or processes may probe the same folder at once.
        with tempfile.NamedTemporaryFile(dir=path, prefix=".servedeck-write-probe-"):
            pass
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise ConfigError(
            f"cannot write the {purpose} directory {path}: {reason}; "
            f"set {env_name} (or pass --data-dir) to a writable folder"
        ) from None
    return path


def engine_log_dir(explicit: Path | str | None = None) -> Path:
    return cache_dir(explicit) / "logs"


def calibrations_dir(explicit: Path | str | None = None) -> Path:
    """Where named twin calibration profiles (``servedeck twin calibrate``) live, one JSON file each."""
    return config_dir(explicit) / "calibrations"
