"""Where the steering repository's shared/ folder is: beside this repository's root."""

from __future__ import annotations

from pathlib import Path

# tests/support/shared_data.py -> the repository root is three levels up.
_REPO = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    """The repository root's sibling `shared` folder (it may be absent in a bare checkout)."""
    return _REPO.parent / "shared"
