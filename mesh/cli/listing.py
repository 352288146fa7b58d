"""`meshserve list`: every registered model, its state, copies, size and rate (MeshAdmin.listModels)."""

from __future__ import annotations

import argparse

from google.protobuf import json_format

from mesh.cli.common import Connection, add_common_flags, run_command
from mesh.cli.render import model_table
from protos import mesh_admin_pb2 as admin

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshserve list", description="List the fabric's models.")
    parser.add_argument("--json", action="store_true", help="print the ListModelsResponse as JSON")
    add_common_flags(parser)
    return parser


def list_models(connection: Connection, args: argparse.Namespace) -> int:
    response = connection.call(connection.admin.listModels, admin.ListModelsRequest(),
                               what="meshserve.admin.MeshAdmin.listModels")
    if args.json:
        print(json_format.MessageToJson(response, always_print_fields_with_no_presence=True))
    else:
        print(model_table(response))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command("list", build_parser(), list_models, argv)
