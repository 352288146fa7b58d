"""`meshserve unregister NAME`: remove a model from the registry (its copies are unloaded)."""

from __future__ import annotations

import argparse

from mesh.cli.common import Connection, add_common_flags, run_command
from protos import model_mesh_pb2 as mm

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshserve unregister", description="Unregister a model.")
    parser.add_argument("name", help="model id")
    add_common_flags(parser)
    return parser


def unregister(connection: Connection, args: argparse.Namespace) -> int:
    connection.call(connection.mesh.unregisterModel, mm.UnregisterModelRequest(modelId=args.name),
                    what="mmesh.ModelMesh.unregisterModel")
    print(f"model '{args.name}' unregistered")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command("unregister", build_parser(), unregister, argv)
