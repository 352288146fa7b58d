"""Resolving a model's storage (pure: no I/O, no SDKs).

Turns ModelMesh's ``modelPath`` + ``modelKey`` JSON, or a KServe-style URI, into a typed
:class:`Location`, and holds the path-safety rules that keep every write inside the cache.

Resolution rules (in order):

1. ``model_path`` with a scheme decides the store: ``s3://bucket/key``; ``https://<account>
   .blob.core.windows.net/<container>/<path>`` (Azure Blob); other ``http(s)://`` URLs;
   ``pvc://<claim>/<path>`` (a local path under ``pvc_root/<claim>``); ``file:///abs/path``.
   Any other scheme is :class:`InvalidStorageUri`.
2. Without a scheme, the model key decides: ``storage_params.type`` (``s3``, ``azure``,
   ``pvc``), else the type of the storage-config entry named by ``storage_key``. The path is
   then the object key (or the path inside the claim).
3. Without either, an absolute path is a local path; a relative one goes to the storage
   config's ``default`` entry if there is one, and is otherwise refused.

Object keys and paths containing ``..`` segments, empty segments, NUL, or (for keys) a
leading ``/`` are refused with :class:`UnsafePath`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from puller.errors import IntegrityError, InvalidStorageUri, UnsafePath

__all__ = [
    "AzureLocation",
    "Checksum",
    "HttpLocation",
    "LocalLocation",
    "Location",
    "ModelKey",
    "ResolvedSource",
    "S3Location",
    "check_relative_key",
    "parse_checksum",
    "parse_model_key",
    "resolve",
    "safe_join",
]

_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_AZURE_HOST = re.compile(r"^(?P<account>[a-z0-9]{3,24})\.blob\.core\.windows\.net$")
_AZURE_CONTAINER = re.compile(r"^(\$root|[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9])$")
_CLAIM = re.compile(r"^[a-z0-9]([a-z0-9.\-]{0,251}[a-z0-9])?$")
_HEX = re.compile(r"^[0-9a-f]+$")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
#: The URI schemes `resolve` understands (Azure Blob is an https://<account>.blob.core.windows.net URL).
URI_SCHEMES = ("s3", "http", "https", "pvc", "file")


# --------------------------------------------------------------------------- locations


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str  # object key or prefix, no leading "/", may be "" (whole bucket)

    @property
    def display(self) -> str:
        return f"s3://{self.bucket or '<default bucket>'}/{self.key}"


@dataclass(frozen=True)
class AzureLocation:
    account: str | None  # None: taken from the storage config
    container: str
    path: str

    @property
    def display(self) -> str:
        host = f"{self.account}.blob.core.windows.net" if self.account else "azure-blob"
        return f"https://{host}/{self.container}/{self.path}"


@dataclass(frozen=True)
class HttpLocation:
    url: str  # the full URL to request (may carry a query string, e.g. a presigned URL)

    @property
    def display(self) -> str:
        return redact_url(self.url)

    @property
    def filename(self) -> str:
        name = PurePosixPath(unquote(urlsplit(self.url).path)).name
        return name or "model"


@dataclass(frozen=True)
class LocalLocation:
    path: Path

    @property
    def display(self) -> str:
        return str(self.path)


Location = S3Location | AzureLocation | HttpLocation | LocalLocation


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # "sha256" or "md5"
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


@dataclass(frozen=True)
class ModelKey:
    """The parts of ModelMesh's model key JSON the puller uses."""

    storage_key: str | None = None
    storage_type: str | None = None
    params: Mapping[str, Any] | None = None
    checksum: Checksum | None = None


@dataclass(frozen=True)
class ResolvedSource:
    """Where a model lives and how to fetch it; no credentials here."""

    location: Location
    storage_key: str | None  # the storage-config entry named explicitly, if any
    checksum: Checksum | None = None
    params: Mapping[str, Any] | None = None

    @property
    def display(self) -> str:
        return self.location.display

    @property
    def is_local(self) -> bool:
        return isinstance(self.location, LocalLocation)


# --------------------------------------------------------------------------- parsing


def parse_checksum(value: Any, *, where: str) -> Checksum:
    """``"sha256:<hex>"`` or ``"md5:<hex>"`` -> :class:`Checksum`."""
    if not isinstance(value, str) or ":" not in value:
        raise InvalidStorageUri(f"{where}: checksum must look like 'sha256:<hex>'")
    algorithm, _, digest = value.partition(":")
    algorithm, digest = algorithm.strip().lower(), digest.strip().lower()
    lengths = {"sha256": 64, "md5": 32}
    if algorithm not in lengths or len(digest) != lengths[algorithm] or not _HEX.match(digest):
        raise InvalidStorageUri(f"{where}: checksum must be sha256:<64 hex> or md5:<32 hex>")
    return Checksum(algorithm, digest)


def parse_model_key(model_key: str | None, *, where: str) -> ModelKey:
    """Parse ModelMesh's model key JSON ("" and None mean no key)."""
    if model_key is None or not model_key.strip():
        return ModelKey()
    try:
        raw = json.loads(model_key)
    except json.JSONDecodeError as exc:
        raise InvalidStorageUri(f"{where}: model key is not valid JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise InvalidStorageUri(f"{where}: model key must be a JSON object")
    params = raw.get("storage_params") or {}
    if not isinstance(params, dict):
        raise InvalidStorageUri(f"{where}: storage_params must be a JSON object")
    params = dict(params)
    if "bucket" in raw and "bucket" not in params:  # older ModelMesh keys put it at the top
        params["bucket"] = raw["bucket"]
    storage_key = raw.get("storage_key")
    if storage_key is not None and (not isinstance(storage_key, str) or not storage_key):
        raise InvalidStorageUri(f"{where}: storage_key must be a non-empty string")
    storage_type = params.get("type")
    if storage_type is not None and not isinstance(storage_type, str):
        raise InvalidStorageUri(f"{where}: storage_params.type must be a string")
    raw_checksum = raw.get("checksum", params.get("checksum"))
    if raw_checksum is None and raw.get("sha256"):
        raw_checksum = f"sha256:{raw['sha256']}"
    checksum = parse_checksum(raw_checksum, where=where) if raw_checksum is not None else None
    return ModelKey(
        storage_key=storage_key,
        storage_type=storage_type.lower() if storage_type else None,
        params=params,
        checksum=checksum,
    )


def redact_url(url: str) -> str:
    """The URL without user info, query string or fragment (presigned URLs and SAS tokens
    carry secrets there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def check_relative_key(key: str, *, where: str, allow_empty: bool = False) -> str:
    """Validate a key or path that will be placed under a local root; return it without a
    trailing ``/``. Refuses absolute paths, ``..``, ``.``, empty segments and NUL."""
    if "\x00" in key:
        raise UnsafePath(f"{where}: refusing key with a NUL byte")
    if key.startswith("/") or key.startswith("\\"):
        raise UnsafePath(f"{where}: refusing absolute path {key!r}")
    stripped = key[:-1] if key.endswith("/") else key
    if not stripped:
        if allow_empty:
            return ""
        raise UnsafePath(f"{where}: refusing empty key")
    for segment in stripped.split("/"):
        if segment in ("", ".", ".."):
            raise UnsafePath(f"{where}: refusing key {key!r} ('..', '.' or empty segment)")
    return stripped


def safe_join(root: Path, relative: str, *, where: str) -> Path:
    """``root / relative`` after :func:`check_relative_key`, and provably below ``root``."""
    rel = check_relative_key(relative, where=where)
    target = root.joinpath(*rel.split("/"))
    # Lexical check (no filesystem access): the join of checked segments stays below root.
    if root not in target.parents:
        raise UnsafePath(f"{where}: {relative!r} escapes the target directory")
    return target


def is_archive(name: str) -> bool:
    return name.lower().endswith(_ARCHIVE_SUFFIXES)


def verify_checksum_shape(checksum: Checksum | None, *, single_object: bool, where: str) -> None:
    if checksum is not None and not single_object:
        raise IntegrityError(f"{where}: a checksum was given but the model is a prefix of many objects")


# --------------------------------------------------------------------------- resolution


def resolve(
    model_path: str,
    model_key: str | None,
    *,
    pvc_root: Path,
    storage_types: Mapping[str, str],
) -> ResolvedSource:
    """Resolve a model's storage. ``storage_types`` maps each storage-config entry name to
    its ``type`` (used when the path has no scheme)."""
    if not isinstance(model_path, str) or not model_path.strip():
        raise InvalidStorageUri("model path is empty")
    model_path = model_path.strip()
    where = redact_url(model_path) if "://" in model_path else model_path
    key = parse_model_key(model_key, where=where)
    params = key.params or {}

    if "://" in model_path:
        location = _resolve_uri(model_path, where=where, pvc_root=pvc_root)
        return ResolvedSource(location, key.storage_key, key.checksum, params)

    storage_type = key.storage_type
    storage_key = key.storage_key
    if storage_type is None and storage_key is not None:
        if storage_key not in storage_types:
            raise InvalidStorageUri(f"{where}: storage key {storage_key!r} is not in the storage config")
        storage_type = storage_types[storage_key]
    if storage_type is None:
        if model_path.startswith("/"):
            return ResolvedSource(LocalLocation(_local_path(model_path, where=where)), None, key.checksum)
        if "default" not in storage_types:
            raise InvalidStorageUri(
                f"{where}: relative model path with no storage (no storage key, no storage type, "
                "no 'default' storage config)"
            )
        storage_type = storage_types["default"]
    storage_type = storage_type.lower()

    if storage_type == "s3":
        bucket = params.get("bucket")
        if bucket is not None:
            _check_bucket(bucket, where=where)
        object_key = check_relative_key(model_path, where=where)
        # The bucket may come from the storage config later; "" marks "not given".
        return ResolvedSource(S3Location(bucket or "", object_key), storage_key, key.checksum, params)
    if storage_type in ("azure", "azure_blob", "azureblob"):
        container = params.get("container") or ""
        if container:
            _check_container(container, where=where)
        path = check_relative_key(model_path, where=where)
        return ResolvedSource(AzureLocation(params.get("account_name"), container, path), storage_key,
                              key.checksum, params)
    if storage_type == "pvc":
        claim = params.get("name") or params.get("claim")
        if not isinstance(claim, str):
            raise InvalidStorageUri(f"{where}: pvc storage needs storage_params.name (the claim)")
        return ResolvedSource(LocalLocation(_pvc_path(pvc_root, claim, model_path, where=where)), None,
                              key.checksum)
    raise InvalidStorageUri(f"{where}: unsupported storage type {storage_type!r}")


def _resolve_uri(uri: str, *, where: str, pvc_root: Path) -> Location:
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise InvalidStorageUri(f"{where}: malformed URI ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme == "s3":
        bucket = parts.netloc
        _check_bucket(bucket, where=where)
        key = unquote(parts.path.lstrip("/")) if parts.path.startswith("/") else unquote(parts.path)
        return S3Location(bucket, check_relative_key(key, where=where, allow_empty=True))
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise InvalidStorageUri(f"{where}: URL has no host")
        match = _AZURE_HOST.match(parts.hostname.lower())
        if match and scheme == "https":
            segments = unquote(parts.path).lstrip("/").split("/", 1)
            container = segments[0]
            _check_container(container, where=where)
            path = check_relative_key(segments[1] if len(segments) > 1 else "", where=where, allow_empty=True)
            return AzureLocation(match["account"], container, path)
        if any(segment in (".", "..") for segment in unquote(parts.path).split("/")):
            raise UnsafePath(f"{where}: refusing URL with '.' or '..' path segments")
        return HttpLocation(uri)
    if scheme == "pvc":
        return LocalLocation(_pvc_path(pvc_root, parts.netloc, unquote(parts.path).lstrip("/"), where=where))
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidStorageUri(f"{where}: file URIs must be local (file:///path)")
        return LocalLocation(_local_path(unquote(parts.path), where=where))
    raise InvalidStorageUri(f"{where}: unsupported scheme {scheme!r} ({', '.join(URI_SCHEMES)})")


def _local_path(path: str, *, where: str) -> Path:
    if not path.startswith("/"):
        raise InvalidStorageUri(f"{where}: local paths must be absolute")
    check_relative_key(path.lstrip("/"), where=where, allow_empty=True)
    return Path(path)


def _pvc_path(pvc_root: Path, claim: str, path: str, *, where: str) -> Path:
    if not _CLAIM.match(claim or ""):
        raise InvalidStorageUri(f"{where}: invalid persistent volume claim name {claim!r}")
    rel = check_relative_key(path.lstrip("/"), where=where, allow_empty=True)
    root = pvc_root / claim
    return root.joinpath(*rel.split("/")) if rel else root


def _check_bucket(bucket: Any, *, where: str) -> None:
    if not isinstance(bucket, str) or not _S3_BUCKET.match(bucket) or ".." in bucket:
        raise InvalidStorageUri(f"{where}: invalid S3 bucket name {bucket!r}")


def _check_container(container: Any, *, where: str) -> None:
    if not isinstance(container, str) or not _AZURE_CONTAINER.match(container):
        raise InvalidStorageUri(f"{where}: invalid Azure container name {container!r}")
