"""The on-disk layout of the cache, and digests of what is in it (blocking helpers).

::

    <cache_dir>/
      .staging/<entry>.<random>/      a pull in progress (removed at start-up and on failure)
        model/...                     the files, as they will be served
      .trash/                         entries being deleted
      <entry>/                        a complete, verified pull
        model/...
        pull.json                     what was pulled: source fingerprint, path, size, digest

``<entry>`` is derived from the model id (a readable part plus a hash), so any model id is
a safe single path segment. A staged pull becomes visible with one ``rename``; nothing
half-written is ever found under ``<entry>``.

Digest: for a single file, ``sha256:`` of its bytes; for a directory, ``sha256:`` of the
manifest of ``"<file sha256>  <relative path>\\n"`` lines (``"link:<target>  <path>"`` for
symbolic links), sorted by path (the shape of ``sha256sum`` output).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from puller.transfer import hash_file

__all__ = ["CacheLayout", "EntryMeta", "tree_digest"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
META = "pull.json"
MODEL_DIR = "model"


@dataclass(frozen=True)
class EntryMeta:
    model_id: str
    fingerprint: str
    relative_path: str  # local_path relative to the entry dir ("model" or "model/<file>")
    size_bytes: int
    digest: str

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "EntryMeta":
        raw = json.loads(text)
        return cls(**{k: raw[k] for k in ("model_id", "fingerprint", "relative_path", "size_bytes", "digest")})


class CacheLayout:
    def __init__(self, root: Path):
        self.root = root
        self.staging = root / ".staging"
        self.trash = root / ".trash"

    def prepare(self) -> dict[str, EntryMeta]:
        """Create the layout, clear leftovers of a previous process, return complete entries."""
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in (self.staging, self.trash):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
            leftover.mkdir()
        found: dict[str, EntryMeta] = {}
        for child in self.root.iterdir():
            if child.name.startswith(".") or not child.is_dir() or child.is_symlink():
                continue
            try:
                meta = EntryMeta.from_json((child / META).read_text(encoding="utf-8"))
            except (OSError, ValueError, KeyError, TypeError):
                self.remove(child)  # incomplete or foreign: not ours to trust
                continue
            if self.entry_name(meta.model_id) == child.name:
                found[meta.model_id] = meta
            else:
                self.remove(child)
        return found

    @staticmethod
    def entry_name(model_id: str) -> str:
        readable = _UNSAFE.sub("_", model_id).strip("._")[:80] or "model"
        return f"{readable}-{hashlib.sha256(model_id.encode()).hexdigest()[:16]}"

    def entry_dir(self, model_id: str) -> Path:
        return self.root / self.entry_name(model_id)

    def new_staging(self, model_id: str) -> Path:
        path = self.staging / f"{self.entry_name(model_id)}.{uuid.uuid4().hex[:12]}"
        (path / MODEL_DIR).mkdir(parents=True)
        return path

    def commit(self, staged: Path, model_id: str, meta: EntryMeta) -> Path:
        """Write the meta and move the staged entry into place, replacing any older one."""
        (staged / META).write_text(meta.to_json(), encoding="utf-8")
        final = self.entry_dir(model_id)
        if final.exists():
            self.remove(final)
        os.rename(staged, final)
        return final

    def remove(self, path: Path) -> None:
        """Delete an entry: first out of sight (rename), then from disk."""
        if not path.exists() and not path.is_symlink():
            return
        self.trash.mkdir(exist_ok=True)
        doomed = self.trash / f"{path.name}.{uuid.uuid4().hex[:12]}"
        try:
            os.rename(path, doomed)
        except OSError:
            doomed = path
        if doomed.is_dir() and not doomed.is_symlink():
            shutil.rmtree(doomed, ignore_errors=True)
        else:
            doomed.unlink(missing_ok=True)


def tree_digest(path: Path, known: Mapping[str, str] | None = None) -> tuple[int, str]:
    """(size in bytes, digest) of a file or a directory tree; ``known`` maps relative paths
    to sha256 hex already computed while downloading, so those files are not read again."""
    known = known or {}
    if path.is_file():
        sha = known.get("") or hash_file(path).sha256
        return path.stat().st_size, f"sha256:{sha}"
    lines: list[str] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        base = Path(dirpath)
        for name in dirnames:
            if (base / name).is_symlink():
                rel = (base / name).relative_to(path).as_posix()
                lines.append(f"link:{os.readlink(base / name)}  {rel}")
        for name in filenames:
            full = base / name
            rel = full.relative_to(path).as_posix()
            if full.is_symlink():
                lines.append(f"link:{os.readlink(full)}  {rel}")
                continue
            total += full.stat().st_size
            lines.append(f"{known.get(rel) or hash_file(full).sha256}  {rel}")
    lines.sort(key=lambda line: line.split("  ", 1)[1])
    manifest = "".join(f"{line}\n" for line in lines)
    return total, "sha256:" + hashlib.sha256(manifest.encode("utf-8", "surrogateescape")).hexdigest()
