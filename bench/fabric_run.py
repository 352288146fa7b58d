"""Running a bench script's fabric in a scratch directory that Ctrl-C or SIGTERM cleans up.

Import it as ``bench.fabric_run`` with the repository root on ``sys.path`` (the bench
scripts put it there).
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["run_in_scratch_dir"]


def run_in_scratch_dir(prefix: str, run: Callable[[Path], int]) -> None:
    """`run(workdir)` in a temporary directory (in /dev/shm when there is one), then exit
    with its status; SIGTERM ends it the way Ctrl-C does, through the run's `finally`
    (which stops its processes), with status 130."""

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where the shell ignored it (`cmd &`)
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix=prefix, dir=base) as workdir:
        try:
            status = run(Path(workdir))
        except KeyboardInterrupt:
            print("interrupted; the fabric's processes were stopped", file=sys.stderr)
            raise SystemExit(130) from None
    raise SystemExit(status)
