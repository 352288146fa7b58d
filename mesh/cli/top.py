"""`meshserve top [--once] [--interval S]`: a live view of the fabric's instances.

Each frame (from `MeshAdmin.fabricStatus`) shows every instance with a used/capacity bar,
models held, loads in progress, request rate and LRU age, and the fabric's global LRU
age and model counts. It redraws every `--interval` seconds until Ctrl-C (exit 0); a
failed refresh is shown in place of the frame and retried, so a router restart does not
end it. `--once` prints one frame and exits (1, with one line on stderr, if it fails).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

from mesh.cli.common import CliError, Connection, add_common_flags, run_command
from mesh.cli.render import top_frame
from protos import mesh_admin_pb2 as admin

__all__ = ["build_parser", "main"]

_CLEAR = "\x1b[H\x1b[2J"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshserve top", description="Live view of the fabric's instances.")
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="refresh period (default 1)")
    add_common_flags(parser)
    return parser


def _frame(connection: Connection) -> str:
    status = connection.call(connection.admin.fabricStatus, admin.FabricStatusRequest(),
                             what="meshserve.admin.MeshAdmin.fabricStatus")
    columns = shutil.get_terminal_size((120, 40)).columns
    return top_frame(status, connection.address, bar_width=max(10, min(40, columns - 90)))


def top(connection: Connection, args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise CliError(f"--interval must be positive, got {args.interval}")
    if args.once:
        print(_frame(connection))
        return 0
    tty = sys.stdout.isatty()
    try:
        while True:
            try:
                frame = _frame(connection)
            except CliError as error:
                frame = f"meshserve top  {connection.address}\n{error}\n(retrying every {args.interval:g}s; Ctrl-C quits)"
            sys.stdout.write((_CLEAR if tty else "") + frame + ("\n" if tty else "\n\n"))
            sys.stdout.flush()
            time.sleep(args.interval)  # the refresh period of a terminal view
    except KeyboardInterrupt:
        return 0


def main(argv: list[str] | None = None) -> int:
    return run_command("top", build_parser(), top, argv)
