"""`meshserve status NAME`: a model's state, its copies and where they are, its last failure.

The state comes from `mmesh.ModelMesh.getModelStatus`; instance addresses from
`MeshAdmin.fabricStatus` when the server has it (without it, only instance ids).
Exit 1 if the model is not registered.
"""

from __future__ import annotations

import argparse

import grpc
from google.protobuf import json_format

from mesh.cli.common import CliError, Connection, add_common_flags, run_command
from mesh.cli.render import model_status_text
from protos import mesh_admin_pb2 as admin
from protos import model_mesh_pb2 as mm

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshserve status", description="Show a model's status.")
    parser.add_argument("name", help="model id")
    parser.add_argument("--json", action="store_true", help="print the ModelStatusInfo as JSON")
    add_common_flags(parser)
    return parser


def _addresses(connection: Connection) -> dict[str, str]:
    try:
        status = connection.admin.fabricStatus(admin.FabricStatusRequest(), timeout=connection.timeout)
    except grpc.RpcError:
        return {}  # a server without MeshAdmin: ids are still right
    return {i.id: i.address for i in status.instances}


def status(connection: Connection, args: argparse.Namespace) -> int:
    info = connection.call(connection.mesh.getModelStatus, mm.GetStatusRequest(modelId=args.name),
                           what="mmesh.ModelMesh.getModelStatus")
    if info.status == mm.ModelStatusInfo.NOT_FOUND:
        raise CliError(f"model '{args.name}' is not registered")
    if args.json:
        print(json_format.MessageToJson(info, always_print_fields_with_no_presence=True))
    else:
        print(model_status_text(args.name, info, _addresses(connection) if info.modelCopyInfos else {}))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command("status", build_parser(), status, argv)
