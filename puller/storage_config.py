"""ModelMesh-style storage config: which credentials a location is fetched with.

The config is a directory (a Kubernetes Secret mounted as files) holding one JSON document
per storage key, e.g. ``default``, ``my-s3``::

    {"type": "s3", "access_key_id": "...", "secret_access_key": "...",
     "endpoint_url": "http://minio:9000", "region": "us-east-1", "default_bucket": "models"}
    {"type": "azure", "account_name": "...", "account_key": "...", "container": "models"}
    {"type": "azure", "connection_string": "DefaultEndpointsProtocol=...;AccountKey=..."}

Names starting with ``.`` (the Secret mount's ``..data`` machinery) are ignored. Choosing an
entry: the model key's ``storage_key`` if given; else an entry of the right type whose
``bucket``/``default_bucket`` (S3) or ``account_name`` (Azure) matches the location; else
``default`` if its type matches; else none, and the provider falls back to environment
variables.

Secret values are held in :class:`StorageConfig` and :class:`Redactor` only; nothing here
has them in its ``repr``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from puller.errors import InvalidStorageUri

__all__ = ["Redactor", "StorageConfig", "StorageEntry", "load_storage_config"]

# Keys whose values are secrets wherever they appear (config files or the environment).
SECRET_FIELDS = frozenset({
    "access_key_id", "secret_access_key", "session_token", "account_key", "connection_string",
    "sas_token", "client_secret", "password", "token", "api_key", "authorization",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_KEY", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN",
})
_CONN_STRING_SECRET = re.compile(r"(?i)(AccountKey|SharedAccessSignature)=([^;]+)")


@dataclass(frozen=True)
class StorageEntry:
    """One storage-config entry. ``values`` is never shown in ``repr``."""

    name: str
    type: str
    values: Mapping[str, Any] = field(repr=False)

    def get(self, *names: str) -> Any:
        for name in names:
            value = self.values.get(name)
            if value not in (None, ""):
                return value
        return None


@dataclass(frozen=True)
class StorageConfig:
    entries: Mapping[str, StorageEntry] = field(default_factory=dict)

    @property
    def types(self) -> dict[str, str]:
        return {name: entry.type for name, entry in self.entries.items()}

    def select(self, storage_type: str, *, storage_key: str | None, match: Mapping[str, str | None],
               where: str) -> StorageEntry | None:
        """Pick the entry for a location (see the module docstring)."""
        if storage_key is not None:
            entry = self.entries.get(storage_key)
            if entry is None:
                raise InvalidStorageUri(f"{where}: storage key {storage_key!r} is not in the storage config")
            if entry.type != storage_type:
                raise InvalidStorageUri(
                    f"{where}: storage key {storage_key!r} is of type {entry.type!r}, not {storage_type!r}")
            return entry
        for name in sorted(self.entries):
            entry = self.entries[name]
            if entry.type != storage_type:
                continue
            for config_field, wanted in match.items():
                if wanted and entry.values.get(config_field) == wanted:
                    return entry
        default = self.entries.get("default")
        if default is not None and default.type == storage_type:
            return default
        return None

    def secret_values(self) -> set[str]:
        out: set[str] = set()
        for entry in self.entries.values():
            out |= secrets_in(entry.values)
        return out


def secrets_in(values: Mapping[str, Any]) -> set[str]:
    """The secret strings in a config entry or an environment mapping."""
    out: set[str] = set()
    for key, value in values.items():
        if key in SECRET_FIELDS and isinstance(value, str) and value:
            out.add(value)
            out |= {m.group(2) for m in _CONN_STRING_SECRET.finditer(value)}
        elif key == "headers" and isinstance(value, Mapping):
            out |= {v for v in value.values() if isinstance(v, str) and v}
    return out


class Redactor:
    """Replaces known secret values in text with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()):
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


def load_storage_config(directory: Path | None) -> StorageConfig:
    """Read the storage-config directory (blocking; call it in a thread). A missing
    directory is an empty config; an unreadable or malformed entry is an
    :class:`InvalidStorageUri` naming the entry, never its content."""
    if directory is None or not directory.is_dir():
        return StorageConfig()
    entries: dict[str, StorageEntry] = {}
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise InvalidStorageUri(f"storage config entry {path.name!r} is not a readable JSON document") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            raise InvalidStorageUri(f"storage config entry {path.name!r} must be a JSON object with a 'type'")
        storage_type = raw["type"].lower()
        if storage_type in ("azure_blob", "azureblob"):
            storage_type = "azure"
        entries[path.name] = StorageEntry(path.name, storage_type, raw)
    return StorageConfig(entries)
