"""The router's native front binary for tests (`make native`'s): built here when missing.

CI installs gRPC C++ and must have it (a failure there is a failure); elsewhere a machine
without g++ or Debian's libgrpc++-dev skips the tests that need it, saying why.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from router.native_front.supervisor import BINARY

__all__ = ["require_native_front"]


def require_native_front() -> Path:
    if not BINARY.exists():
        built = subprocess.run(["make", "-s", "-C", str(BINARY.parent)], capture_output=True, text=True)
        if built.returncode != 0:
            if os.environ.get("CI"):
                pytest.fail(f"cannot build the router's native front: {built.stderr[-2000:]}")
            pytest.skip("the router's native front cannot be built here (needs g++ and Debian's libgrpc++-dev)")
    return BINARY
