"""Unpacking ``.tar``, ``.tar.gz``/``.tgz`` and ``.zip`` archives without ever writing outside
the target directory (blocking; run in a worker thread).

Members are written by this module, not by ``tarfile``/``zipfile`` extraction, so each
rule is explicit:

* names are checked with :func:`puller.spec.safe_join` (no absolute paths, no ``..``);
* regular files are created with ``O_EXCL | O_NOFOLLOW`` in a first pass where no link
  exists yet, so no write can pass through a link;
* symbolic links are created afterwards, only with relative targets, and every link must
  resolve (``realpath``) inside the target, or the whole archive is refused;
* hard links become copies of a file already unpacked from the same archive;
* devices, FIFOs and other special members are refused;
* the unpacked size is capped (the cache's disk budget), so an archive bomb stops early.

Any violation raises :class:`~puller.errors.UnsafePath`; a corrupt archive raises
:class:`~puller.errors.IntegrityError`. The caller deletes the partial target.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from puller.errors import DiskBudgetExceeded, IntegrityError, UnsafePath
from puller.spec import check_relative_key, safe_join
from puller.transfer import Cancelled

__all__ = ["UnpackedFile", "unpack"]

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class UnpackedFile:
    relative: str
    size: int
    sha256: str


def unpack(archive: Path, target: Path, *, name: str, where: str, max_bytes: int | None,
           cancel: threading.Event | None = None) -> list[UnpackedFile]:
    """Unpack ``archive`` (its kind from ``name``) into the existing empty dir ``target``."""
    lower = name.lower()
    try:
        if lower.endswith(".zip"):
            return _Unpacker(target, where, max_bytes, cancel).zip(archive)
        mode = "r|gz" if lower.endswith((".tar.gz", ".tgz")) else "r|*"
        return _Unpacker(target, where, max_bytes, cancel).tar(archive, mode)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        if isinstance(exc, (FileExistsError, IsADirectoryError, NotADirectoryError)):
            raise UnsafePath(f"{where}: archive member collides with another one ({type(exc).__name__})",
                             location=where) from exc
        raise IntegrityError(f"{where}: corrupt or unreadable archive ({type(exc).__name__})",
                             location=where) from exc


class _Unpacker:
    def __init__(self, target: Path, where: str, max_bytes: int | None, cancel: threading.Event | None):
        self.target = target
        self.where = where
        self.max_bytes = max_bytes
        self.cancel = cancel
        self.total = 0
        self.files: dict[str, UnpackedFile] = {}
        self.links: list[tuple[str, str]] = []  # (member, target)
        self.hardlinks: list[tuple[str, str]] = []

    # -- formats ------------------------------------------------------------------------

    def tar(self, archive: Path, mode: str) -> list[UnpackedFile]:
        with tarfile.open(archive, mode) as tar:  # stream mode: one pass, no seeking
            for member in tar:
                rel = self._name(member.name)
                if rel is None:
                    continue
                if member.isdir():
                    self._mkdir(rel)
                elif member.isreg():
                    src = tar.extractfile(member)
                    assert src is not None
                    self._write(rel, src, member.size)
                elif member.issym():
                    self.links.append((rel, member.linkname))
                elif member.islnk():
                    self.hardlinks.append((rel, member.linkname))
                else:
                    raise UnsafePath(f"{self.where}: refusing special archive member {member.name!r}",
                                     location=self.where)
        return self._finish()

    def zip(self, archive: Path) -> list[UnpackedFile]:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                rel = self._name(info.filename)
                if rel is None:
                    continue
                kind = stat.S_IFMT(info.external_attr >> 16)
                if info.is_dir():
                    self._mkdir(rel)
                elif kind == stat.S_IFLNK:
                    self.links.append((rel, zf.read(info).decode("utf-8", "surrogateescape")))
                elif kind in (0, stat.S_IFREG):
                    with zf.open(info) as src:
                        self._write(rel, src, info.file_size)
                else:
                    raise UnsafePath(f"{self.where}: refusing special archive member {info.filename!r}",
                                     location=self.where)
        return self._finish()

    # -- members ------------------------------------------------------------------------

    def _name(self, name: str) -> str | None:
        if name in ("", ".", "./"):
            return None
        while name.startswith("./"):
            name = name[2:]
        if not name or name == ".":
            return None
        return check_relative_key(name, where=f"{self.where} (member {name!r})")

    def _path(self, rel: str) -> Path:
        return safe_join(self.target, rel, where=f"{self.where} (member {rel!r})")

    def _mkdir(self, rel: str) -> None:
        path = self._path(rel)
        path.mkdir(parents=True, exist_ok=True)

    def _write(self, rel: str, src: IO[bytes], declared: int) -> None:
        path = self._path(rel)
        if self.max_bytes is not None and self.total + declared > self.max_bytes:
            raise DiskBudgetExceeded(f"{self.where}: unpacked archive exceeds the cache's disk budget",
                                     location=self.where)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        sha = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(_CHUNK):
                if self.cancel is not None and self.cancel.is_set():
                    raise Cancelled()
                size += len(chunk)
                if size > declared or (self.max_bytes is not None and self.total + size > self.max_bytes):
                    raise DiskBudgetExceeded(f"{self.where}: unpacked archive exceeds its declared size or "
                                             "the cache's disk budget", location=self.where)
                out.write(chunk)
                sha.update(chunk)
        self.total += size
        self.files[rel] = UnpackedFile(rel, size, sha.hexdigest())

    def _finish(self) -> list[UnpackedFile]:
        root = os.path.realpath(self.target)
        for rel, source in self.hardlinks:
            source_rel = self._name(source)
            if source_rel is None or source_rel not in self.files:
                raise UnsafePath(f"{self.where}: hard link {rel!r} points outside the archive's files",
                                 location=self.where)
            dest = self._path(rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(self._path(source_rel), "rb") as src, \
                    os.fdopen(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), "wb") as out:
                shutil.copyfileobj(src, out)
            self.total += self.files[source_rel].size
            if self.max_bytes is not None and self.total > self.max_bytes:
                raise DiskBudgetExceeded(f"{self.where}: unpacked archive exceeds the cache's disk budget",
                                         location=self.where)
            self.files[rel] = UnpackedFile(rel, self.files[source_rel].size, self.files[source_rel].sha256)
        for rel, link_target in self.links:
            where = f"{self.where} (link {rel!r} -> {link_target!r})"
            if not link_target or link_target.startswith("/") or "\x00" in link_target:
                raise UnsafePath(f"{where}: refusing absolute or empty link target", location=self.where)
            lexical = posixpath.normpath(posixpath.join(posixpath.dirname(rel), link_target))
            if lexical == ".." or lexical.startswith("../"):
                raise UnsafePath(f"{where}: link points outside the model", location=self.where)
            path = self._path(rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            if not _inside(os.path.realpath(path.parent), root):
                raise UnsafePath(f"{where}: link is placed through a link outside the model", location=self.where)
            os.symlink(link_target, path)
        # Links may chain; only the final resolution of each matters.
        for rel, link_target in self.links:
            if not _inside(os.path.realpath(self._path(rel)), root):
                raise UnsafePath(f"{self.where} (link {rel!r} -> {link_target!r}): link resolves outside the model",
                                 location=self.where)
        return sorted(self.files.values(), key=lambda f: f.relative)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)
