"""Manual OpenAI-compatible URLs: their file (``<config dir>/manual_targets.json``) and their rows.

An API key is stored only as the name of the environment variable that holds it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backends.config import CONFIG_DIR_ENV
from backends.errors import ConfigError
from backends.target_registry.core import RegistryCore
from backends.target_registry.rows import DeploymentRow, TargetSource, endpoint_row
from backends.target_types import Target, TargetKind

MANUAL_TARGETS_FILE = "manual_targets.json"
MANUAL_TARGETS_VERSION = 1
NAME_MAX = 80
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ManualTarget(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=NAME_MAX)
    base_url: str
    model: str
    api_key_env: str | None = None
    kind: TargetKind = TargetKind.OPENAI

    def as_target(self) -> Target:
        return Target(
            name=self.name,
            base_url=self.base_url,
            model=self.model,
            kind=self.kind,
            api_key_env=self.api_key_env,
        )


class _ManualTargetFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = MANUAL_TARGETS_VERSION
    targets: list[ManualTarget] = Field(default_factory=list)


def validate_api_key_env(name: str | None) -> str | None:
    """The environment variable's name, stripped; ConfigError when it is not a variable name.

    A pasted key (``sk-...``) is refused without being echoed, so it never lands in a file or a log.
    """
    if name is None or not name.strip():
        return None
    text = name.strip()
    if not _ENV_NAME.fullmatch(text):
        raise ConfigError(
            "the API key field takes the NAME of an environment variable that holds the key "
            "(like OPENAI_API_KEY), not the key itself; export the key and give the variable's name"
        )
    return text


class ManualTargetStore:
    """The manual URLs file; a corrupt file is reported and never overwritten."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / MANUAL_TARGETS_FILE

    def load(self) -> list[ManualTarget]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ConfigError(
                f"cannot read {self.path}: {exc.strerror or exc}; fix its permissions or set {CONFIG_DIR_ENV}"
            ) from None
        try:
            data = _ManualTargetFile.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ())) or "the file"
            raise ConfigError(
                f"{self.path} is not a valid manual targets file ({where}: {first.get('msg', 'invalid')}); "
                "fix it or move it away (ServeDeck will not overwrite it)"
            ) from None
        if data.version != MANUAL_TARGETS_VERSION:
            raise ConfigError(
                f"{self.path} has version {data.version}, this ServeDeck reads version "
                f"{MANUAL_TARGETS_VERSION}; upgrade ServeDeck or move the file away"
            )
        return data.targets

    def save(self, targets: Sequence[ManualTarget]) -> None:
        payload = _ManualTargetFile(targets=list(targets)).model_dump_json(indent=2)
        temporary = self.path.with_suffix(".json.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(payload + "\n", encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as exc:
            raise ConfigError(
                f"cannot write {self.path}: {exc.strerror or exc}; set {CONFIG_DIR_ENV} to a writable folder"
            ) from None


class ManualTargets(RegistryCore):
    """The manual URLs of ``TargetRegistry``."""

    _manual_store: ManualTargetStore
    _manual: list[ManualTarget]
    _manual_health: dict[str, str | None]
    load_error: str | None

    def load_manual(self) -> None:
        """Read the manual URLs file (blocking). A bad file is kept aside as ``load_error``, not raised."""
        try:
            entries = self._manual_store.load()
        except ConfigError as err:
            with self._lock:
                self.load_error = str(err)
            self._changed()
            return
        with self._lock:
            self._manual = entries
            self.load_error = None
        self._changed()

    def _manual_row(self, entry: ManualTarget) -> DeploymentRow:
        health = self._manual_health.get(entry.name, "")
        return endpoint_row(f"manual:{entry.name}", TargetSource.MANUAL, entry.as_target(), health)

    async def add_manual_url(
        self,
        base_url: str,
        *,
        name: str | None = None,
        api_key_env: str | None = None,
        model: str | None = None,
    ) -> DeploymentRow:
        """Ask ``base_url`` what it serves, then save it. Raises one clear ServeDeckError when it cannot."""
        from backends.targets import discover_target, normalize_base_url

        if not base_url.strip():
            raise ConfigError("give the server's URL, like http://127.0.0.1:8000")
        url = normalize_base_url(base_url)
        env_name = validate_api_key_env(api_key_env)
        wanted_name = name.strip() if name and name.strip() else None
        if wanted_name is not None and len(wanted_name) > NAME_MAX:
            raise ConfigError(f"the name is longer than {NAME_MAX} characters; choose a shorter one")
        with self._lock:
            if self.load_error is not None:
                raise ConfigError(self.load_error)
            if any(entry.base_url == url for entry in self._manual):
                raise ConfigError(f"{url} is already in the list; delete that row first to add it again")
            if wanted_name is not None and self._name_taken(wanted_name):
                raise ConfigError(f"a target named {wanted_name!r} already exists; choose another name")
        target = await discover_target(url, model=model or None, api_key_env=env_name, name=wanted_name)
        entry = ManualTarget(
            name=target.name,
            base_url=target.base_url,
            model=target.model,
            api_key_env=env_name,
            kind=target.kind,
        )
        with self._lock:
            if self._name_taken(entry.name):
                raise ConfigError(f"a target named {entry.name!r} already exists; give this one a name")
            updated = [*self._manual, entry]
            self._manual_store.save(updated)
            self._manual = updated
            self._manual_health[entry.name] = None
        self._changed()
        return self._manual_row(entry)

    def remove_manual(self, name: str) -> None:
        with self._lock:
            remaining = [entry for entry in self._manual if entry.name != name]
            if len(remaining) == len(self._manual):
                raise ConfigError(f"there is no manual target named {name!r}")
            self._manual_store.save(remaining)
            self._manual = remaining
            self._manual_health.pop(name, None)
        self._changed()

    def _name_taken(self, name: str) -> bool:
        return any(row.name == name for row in self.rows())
