"""Plain HTTP(S) downloads (urllib, run in worker threads).

Config fields (storage-config entry of type ``http``, optional): ``headers`` (sent with
every request, e.g. ``Authorization``; treated as secrets), ``certificate``/``ca_bundle``
(a CA bundle path), ``verify_ssl``. A URL's user info becomes basic auth; its query string
(presigned URLs) is sent but never shown.

A model at an URL is one object (an archive is unpacked by the puller). A probe
``GET`` with ``Range: bytes=0-0`` finds the size and whether ranges are served; large
objects are then fetched in parallel ranges guarded by ``If-Range``. Integrity: size, plus
``Repr-Digest``/``Digest`` sha-256 or ``x-goog-hash`` md5 when the server sends them.
"""

from __future__ import annotations

import base64
import http.client
import re
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit, urlunsplit

from puller.errors import (
    IntegrityError,
    PullError,
    StorageAccessDenied,
    StorageNotFound,
    StorageUnavailable,
)
from puller.providers.base import Listing, RemoteObject
from puller.spec import Checksum, HttpLocation, Location
from puller.storage_config import StorageEntry
from puller.transfer import FetchedFile, TransferConfig, download_to_file

__all__ = ["HttpConfig", "HttpProvider"]

_CONTENT_RANGE = re.compile(r"^bytes\s+0-0/(\d+)$")
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class HttpConfig:
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    ca_bundle: str | None = None
    verify: bool = True
    timeout_s: float = 30.0


class HttpProvider:
    scheme: ClassVar[str] = "http"

    def config_from_entry(self, entry: StorageEntry) -> HttpConfig:
        headers = entry.get("headers") or {}
        verify = str(entry.get("verify_ssl") or "true").lower() not in ("false", "0", "no")
        return HttpConfig(headers=tuple((str(k), str(v)) for k, v in dict(headers).items()),
                          ca_bundle=entry.get("certificate", "ca_bundle"), verify=verify)

    def config_from_env(self, env: Mapping[str, str]) -> HttpConfig:
        return HttpConfig()

    def entry_match(self, location: Location) -> Mapping[str, str | None]:
        assert isinstance(location, HttpLocation)
        return {"host": urlsplit(location.url).hostname}

    def list(self, config: HttpConfig, location: Location, params: Mapping[str, Any]) -> Listing:
        assert isinstance(location, HttpLocation)
        where = location.display
        size: int | None = None
        ranges = False
        checksums: list[Checksum] = []
        try:
            with self._open(config, location.url, {"Range": "bytes=0-0"}) as resp:
                if resp.status == 206:
                    match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                    if match:
                        size, ranges = int(match.group(1)), True
                elif resp.headers.get("Content-Length") is not None:
                    size = int(resp.headers["Content-Length"])
                checksums = _advertised_checksums(resp.headers)
                etag = resp.headers.get("ETag") if ranges else None
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # an empty object cannot serve byte 0
                size, etag = 0, None
            else:
                raise _translate(exc, where) from exc
        except PullError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _translate(exc, where) from exc
        # The ref carries what download needs: whether ranges work, and the validator.
        ref = f"{'ranges' if ranges else 'stream'}|{etag or ''}"
        obj = RemoteObject(ref=ref, relative="", size=size, checksums=tuple(checksums), display=where)
        return Listing(single=True, objects=(obj,), name=location.filename)

    def download(self, config: HttpConfig, location: Location, obj: RemoteObject, dest: Path, *,
                 transfer: TransferConfig, cancel: threading.Event, want_md5: bool = False) -> FetchedFile:
        assert isinstance(location, HttpLocation)
        mode, _, etag = obj.ref.partition("|")
        where = obj.display

        def read_range(start: int, end: int | None) -> Iterator[bytes]:
            headers: dict[str, str] = {}
            if end is not None:
                headers["Range"] = f"bytes={start}-{end - 1}"
                if etag:
                    headers["If-Range"] = etag
            try:
                with self._open(config, location.url, headers) as resp:
                    if end is not None and resp.status != 206:
                        raise StorageUnavailable(f"{where}: server ignored the range (object changed?)",
                                                 location=where)
                    while chunk := resp.read(_CHUNK):
                        yield chunk
            except PullError:
                raise
            except GeneratorExit:
                raise
            except Exception as exc:  # noqa: BLE001
                raise _translate(exc, where) from exc

        if mode != "ranges":
            transfer = TransferConfig(concurrency=1, part_attempts=transfer.part_attempts,
                                      part_backoff_s=transfer.part_backoff_s)
        return download_to_file(dest, obj.size, read_range, where=where, config=transfer, cancel=cancel,
                                want_md5=want_md5)

    def _open(self, config: HttpConfig, url: str, extra: Mapping[str, str]) -> Any:
        parts = urlsplit(url)
        headers = dict(config.headers)
        headers.update(extra)
        headers.setdefault("User-Agent", "meshserve-puller")
        headers.setdefault("Accept-Encoding", "identity")
        if parts.username is not None:
            userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode()
            host = parts.hostname or ""
            if parts.port:
                host = f"{host}:{parts.port}"
            url = urlunsplit((parts.scheme, host, parts.path, parts.query, ""))
        request = urllib.request.Request(url, headers=headers, method="GET")
        context = None
        if parts.scheme == "https":
            context = ssl.create_default_context(cafile=config.ca_bundle)
            if not config.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        return urllib.request.urlopen(request, timeout=config.timeout_s, context=context)  # noqa: S310


def _advertised_checksums(headers: Any) -> list[Checksum]:
    out: list[Checksum] = []
    for header in ("Repr-Digest", "Digest"):
        value = headers.get(header) or ""
        for item in value.split(","):
            name, _, encoded = item.strip().partition("=")
            if name.lower() == "sha-256" and encoded:
                try:
                    out.append(Checksum("sha256", base64.b64decode(encoded.strip(":")).hex()))
                except ValueError:
                    pass
    for item in (headers.get("x-goog-hash") or "").split(","):
        name, _, encoded = item.strip().partition("=")
        if name == "md5" and encoded:
            try:
                out.append(Checksum("md5", base64.b64decode(encoded).hex()))
            except ValueError:
                pass
    return out[:2]


def _translate(exc: BaseException, where: str) -> PullError:
    if isinstance(exc, urllib.error.HTTPError):
        code = exc.code
        if code in (404, 410):
            return StorageNotFound(f"{where}: not found (HTTP {code})", location=where)
        if code in (401, 403):
            return StorageAccessDenied(f"{where}: access denied (HTTP {code})", location=where)
        if code in (408, 425, 429) or code >= 500:
            return StorageUnavailable(f"{where}: server unavailable (HTTP {code})", location=where)
        return PullError(f"{where}: request refused (HTTP {code})", location=where)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return StorageAccessDenied(f"{where}: TLS certificate verification failed", location=where)
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, ssl.SSLCertVerificationError):
        return StorageAccessDenied(f"{where}: TLS certificate verification failed", location=where)
    if isinstance(exc, ValueError) and not isinstance(exc, (http.client.HTTPException,)):
        return IntegrityError(f"{where}: malformed response ({type(exc).__name__})", location=where)
    if isinstance(exc, (urllib.error.URLError, http.client.HTTPException, OSError)):
        return StorageUnavailable(f"{where}: connection failed: {type(exc).__name__}", location=where)
    return StorageUnavailable(f"{where}: unexpected failure: {type(exc).__name__}", location=where)
