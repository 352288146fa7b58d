"""Bearer tokens read from a file, one per line, re-read when the file changes.

Several tokens may be valid at once (a rotation adds the new one, then drops the old
one); blank lines and `#` comments are ignored. The file is looked at (one stat) at most
once per `recheck_s`, so a rotated Kubernetes Secret takes effect within a second without
costing a syscall per call. A file that becomes unreadable or empty keeps the tokens it had
(logged): a half-written rotation must not lock every caller out.

Comparison is in constant time: a candidate's SHA-256 digest is compared with
`hmac.compare_digest` against every known token's digest (no early exit), so the time a
refusal takes says nothing about how close a guess was.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["TokenFile", "TokenFileError", "bearer_token"]

log = logging.getLogger(__name__)

_BEARER = "bearer "


class TokenFileError(ValueError):
    """A token file that cannot serve (missing, unreadable, holding no token) at start-up."""


def bearer_token(header: str | None) -> str | None:
    """The token of an `authorization: Bearer <token>` value; None for no or another scheme."""
    if header is None or len(header) <= len(_BEARER) or header[:len(_BEARER)].lower() != _BEARER:
        return None
    return header[len(_BEARER):].strip() or None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _read(path: Path) -> tuple[bytes, ...]:
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return tuple(_digest(line) for line in lines if line and not line.startswith("#"))


def _signature(path: Path) -> tuple[int, int, int]:
    stat = os.stat(path)  # follows the symlink a Kubernetes Secret volume swaps on update
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


class TokenFile:
    """The tokens of one file; `matches(candidate)` says whether it is one of them."""

    def __init__(self, path: str | Path, *, recheck_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self._recheck_s = recheck_s
        self._clock = clock
        try:
            self._seen = _signature(self.path)
            self._digests = _read(self.path)
        except OSError as error:
            raise TokenFileError(f"cannot read token file {self.path}: {error.strerror or error}") from None
        if not self._digests:
            raise TokenFileError(f"token file {self.path} holds no token (one per line)")
        self._next_check = clock() + recheck_s

    def matches(self, candidate: str) -> bool:
        if self._clock() >= self._next_check:
            self._refresh()
        wanted = _digest(candidate)
        found = False
        for known in self._digests:
            found |= hmac.compare_digest(wanted, known)
        return found

    def _refresh(self) -> None:
        self._next_check = self._clock() + self._recheck_s
        try:
            signature = _signature(self.path)
            if signature == self._seen:
                return
            digests = _read(self.path)
        except OSError as error:
            log.warning("token file %s unreadable (%s); keeping its %d previous token(s)",
                        self.path, error.strerror or error, len(self._digests))
            return
        if not digests:
            log.warning("token file %s is empty; keeping its %d previous token(s)", self.path, len(self._digests))
            return
        self._seen, self._digests = signature, digests
        log.info("token file %s re-read: %d token(s)", self.path, len(digests))
