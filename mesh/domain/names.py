"""What a registration may name (pure): model ids, vmodel ids, owners, model types, storage paths.

Ids become etcd keys (`.../models/<id>`), label values, log fields and, on the runtimes,
names of cache entries, so they are held to a plain alphabet: ASCII letters and digits
and `_ - . : @ + = ~`, starting with a letter, digit or `_` (so never `.`, `..` or an
option-like `-x`), at most 256 characters. Every Kubernetes object name passes, and so do
modelmesh-serving's concrete ids (`<isvc>__isvc-<10 hex digits>`) and Triton-style
`name:version` ids.

A storage path (`modelInfo.path`) is a URI of a scheme the puller resolves, an absolute
path, or a path relative to its storage-config entry; it may not hold control characters
or `..` segments (also percent-encoded), and is at most 4096 characters. The puller checks
again when it resolves the path; this check refuses a bad one before anything is written.

Calls that only name an existing record (status, unregister, a vmodel's existing target)
use `check_reference`, which refuses only what cannot be a key at all: a record registered
before these rules stays reachable, and removable.

Every failure is `InvalidRequest` naming the field and the problem.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

from mesh.domain.errors import InvalidRequest

__all__ = ["MAX_ID_LENGTH", "MAX_PATH_LENGTH", "check_id", "check_label", "check_reference", "check_storage_path"]

MAX_ID_LENGTH = 256
MAX_PATH_LENGTH = 4096
MAX_LABEL_LENGTH = 256
MAX_REFERENCE_LENGTH = 512  # the limit ids had before MAX_ID_LENGTH

_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@+=~-]*")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")


def _control_characters(value: str) -> bool:
    return any(ord(ch) < 0x20 or 0x7f <= ord(ch) < 0xa0 for ch in value)


def check_reference(field: str, value: str, max_length: int = MAX_REFERENCE_LENGTH) -> str:
    """`value` if it can be the key of a record (present, one key segment, no control characters)."""
    if not value:
        raise InvalidRequest(f"{field} is required")
    if len(value) > max_length:
        raise InvalidRequest(f"{field} is longer than {max_length} characters ({len(value)})")
    if _control_characters(value):
        raise InvalidRequest(f"{field} must not contain control characters: {value!r}")
    if "/" in value:
        raise InvalidRequest(f"{field} must not contain '/': {value!r}")
    return value


def check_id(field: str, value: str) -> str:
    """`value` if it may name a new model or vmodel; InvalidRequest naming `field` and the problem."""
    check_reference(field, value, MAX_ID_LENGTH)
    if "\\" in value:
        raise InvalidRequest(f"{field} must not contain '\\': {value!r}")
    if not _ID.fullmatch(value):
        raise InvalidRequest(f"{field} {value!r} has characters other than ASCII letters, digits and _-.:@+=~ "
                             "or does not start with a letter, digit or '_'")
    return value


def check_label(field: str, value: str) -> str:
    """A free-form short value (model type, vmodel owner): bounded, no control characters."""
    if len(value) > MAX_LABEL_LENGTH:
        raise InvalidRequest(f"{field} is longer than {MAX_LABEL_LENGTH} characters ({len(value)})")
    if _control_characters(value):
        raise InvalidRequest(f"{field} must not contain control characters: {value!r}")
    return value


def check_storage_path(field: str, value: str, schemes: Iterable[str]) -> str:
    """`value` if the puller could be asked for it; InvalidRequest naming `field` and the problem."""
    if not value:
        raise InvalidRequest(f"{field} is required (where the model's files are)")
    if len(value) > MAX_PATH_LENGTH:
        raise InvalidRequest(f"{field} is longer than {MAX_PATH_LENGTH} characters ({len(value)})")
    if _control_characters(value) or _control_characters(unquote(value)):
        raise InvalidRequest(f"{field} must not contain control characters: {value!r}")
    rest = value
    scheme = _SCHEME.match(value)
    if scheme:
        allowed = tuple(schemes)
        if scheme[1].lower() not in allowed:
            raise InvalidRequest(f"{field} has an unsupported scheme '{scheme[1]}://' (supported: "
                                 f"{', '.join(s + '://' for s in allowed)})")
        rest = value[scheme.end():].split("?", 1)[0].split("#", 1)[0]
    if any(segment == ".." for segment in unquote(rest).replace("\\", "/").split("/")):
        raise InvalidRequest(f"{field} must not contain '..' segments: {value!r}")
    return value
