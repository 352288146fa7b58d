"""Downloading one object into one file: sequential, or in parallel byte ranges.

Blocking code, meant to run in a worker thread. Providers hand in a ``read_range``
callable that yields the bytes of ``[start, end)`` (``end=None``: to the end of the object)
and translates their SDK's failures into :mod:`puller.errors`. This module owns what is the
same for every store: writing ranges into place with ``pwrite``, hashing (sha256 and md5) in
object order while later ranges are still arriving, retrying a failed range, detecting
truncation, and stopping when asked to.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ALL_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from puller.errors import IntegrityError, PullError, StorageUnavailable

__all__ = ["Cancelled", "FetchedFile", "TransferConfig", "download_to_file", "hash_file"]

ReadRange = Callable[[int, int | None], Iterable[bytes]]

_READBACK = 4 * 1024 * 1024


class Cancelled(Exception):
    """The transfer was stopped through its cancel event."""


@dataclass(frozen=True)
class TransferConfig:
    """How one object is fetched. Objects of at least ``parallel_threshold`` bytes (and of
    known size) are fetched as ``part_size`` ranges, ``concurrency`` at a time."""

    part_size: int = 16 * 1024 * 1024
    parallel_threshold: int = 32 * 1024 * 1024
    concurrency: int = 8
    part_attempts: int = 3
    part_backoff_s: float = 0.2


@dataclass(frozen=True)
class FetchedFile:
    size: int
    sha256: str
    md5: str | None  # None when not asked for (it costs CPU on large objects)


def hash_file(path: Path, *, want_md5: bool = False) -> FetchedFile:
    sha, md5 = hashlib.sha256(), (hashlib.md5(usedforsecurity=False) if want_md5 else None)
    size = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(_READBACK):
            sha.update(chunk)
            if md5 is not None:
                md5.update(chunk)
            size += len(chunk)
    return FetchedFile(size, sha.hexdigest(), md5.hexdigest() if md5 is not None else None)


def download_to_file(
    dest: Path,
    size: int | None,
    read_range: ReadRange,
    *,
    where: str,
    config: TransferConfig,
    cancel: threading.Event,
    want_md5: bool = False,
) -> FetchedFile:
    """Write the object to ``dest`` (created, must not exist) and return its size and hashes.

    Raises :class:`StorageUnavailable` on a truncated transfer, :class:`IntegrityError` when
    the store sends more bytes than announced, :class:`Cancelled` when ``cancel`` is set,
    and whatever :class:`PullError` ``read_range`` raises.
    """
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        if size is None or size < config.parallel_threshold or config.concurrency <= 1:
            return _sequential(fd, size, read_range, where=where, cancel=cancel, want_md5=want_md5)
        return _parallel(fd, dest, size, read_range, where=where, config=config, cancel=cancel, want_md5=want_md5)
    finally:
        os.close(fd)


def _sequential(fd: int, size: int | None, read_range: ReadRange, *, where: str,
                cancel: threading.Event, want_md5: bool) -> FetchedFile:
    sha, md5 = hashlib.sha256(), (hashlib.md5(usedforsecurity=False) if want_md5 else None)
    written = 0
    for chunk in read_range(0, None):
        if cancel.is_set():
            raise Cancelled()
        if size is not None and written + len(chunk) > size:
            raise IntegrityError(f"{where}: store sent more than the announced {size} bytes")
        _write_all(fd, chunk, written)
        sha.update(chunk)
        if md5 is not None:
            md5.update(chunk)
        written += len(chunk)
    if size is not None and written != size:
        raise StorageUnavailable(f"{where}: transfer ended after {written} of {size} bytes")
    return FetchedFile(written, sha.hexdigest(), md5.hexdigest() if md5 is not None else None)


def _parallel(fd: int, dest: Path, size: int, read_range: ReadRange, *, where: str,
              config: TransferConfig, cancel: threading.Event, want_md5: bool) -> FetchedFile:
    os.ftruncate(fd, size)
    bounds = [(start, min(start + config.part_size, size)) for start in range(0, size, config.part_size)]
    stop = threading.Event()  # set on the first failure so the other parts stop early

    def fetch_part(start: int, end: int) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                offset = start
                for chunk in read_range(start, end):
                    if cancel.is_set() or stop.is_set():
                        raise Cancelled()
                    if offset + len(chunk) > end:
                        raise IntegrityError(f"{where}: store sent more than asked for bytes {start}-{end - 1}")
                    _write_all(fd, chunk, offset)
                    offset += len(chunk)
                if offset != end:
                    raise StorageUnavailable(f"{where}: range {start}-{end - 1} ended after {offset - start} bytes")
                return
            except PullError as exc:
                if not exc.retryable or attempt >= config.part_attempts or cancel.is_set() or stop.is_set():
                    raise
                time.sleep(config.part_backoff_s * attempt)  # backoff before retrying this range

    sha, md5 = hashlib.sha256(), (hashlib.md5(usedforsecurity=False) if want_md5 else None)
    with ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="puller-range") as pool:
        futures: list[Future[None]] = [pool.submit(fetch_part, s, e) for s, e in bounds]
        try:
            # Hash in object order as soon as each range is in place; later ranges keep
            # arriving meanwhile, so hashing costs little extra wall time.
            with open(dest, "rb", buffering=0) as reader:
                for (start, end), future in zip(bounds, futures):
                    while True:
                        done, _ = wait([future], timeout=0.5)
                        if done:
                            break
                        if cancel.is_set():
                            raise Cancelled()
                        failed = [f for f in futures if f.done() and f.exception() is not None]
                        if failed:
                            failed[0].result()
                    future.result()
                    reader.seek(start)
                    remaining = end - start
                    while remaining:
                        chunk = reader.read(min(_READBACK, remaining))
                        if not chunk:
                            raise StorageUnavailable(f"{where}: file shorter than expected while hashing")
                        sha.update(chunk)
                        if md5 is not None:
                            md5.update(chunk)
                        remaining -= len(chunk)
        except BaseException:
            stop.set()
            for f in futures:
                f.cancel()
            wait(futures, return_when=ALL_COMPLETED)
            raise
    return FetchedFile(size, sha.hexdigest(), md5.hexdigest() if md5 is not None else None)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
