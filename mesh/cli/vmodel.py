"""`meshserve vmodel set|delete|status`: vmodels (aliases) through `mmesh.ModelMesh`.

- `set VNAME TARGET [--type T --uri U [--storage-key K]] [--load-now] [--wait]`: point the
  alias at TARGET (registering TARGET first when --type/--uri are given). The old target
  keeps serving until TARGET is loaded; `--wait` waits (up to `--timeout`) for that.
- `delete VNAME [--ignore-missing]`: delete the alias; exit 1 if there is none.
- `status VNAME`: state, active and target models; exit 1 if there is none.
"""

from __future__ import annotations

import argparse

from mesh.cli.common import CliError, Connection, add_common_flags, run_command
from mesh.cli.register import add_model_flags, model_info
from mesh.cli.render import vmodel_status_text
from protos import model_mesh_pb2 as mm

__all__ = ["build_parser", "main"]

_V = mm.VModelStatusInfo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshserve vmodel", description="Manage vmodels (model aliases).")
    commands = parser.add_subparsers(dest="action", required=True, metavar="{set,delete,status}")
    set_ = commands.add_parser("set", help="point a vmodel at a model (creating the vmodel if needed)")
    set_.add_argument("vmodel", help="vmodel id")
    set_.add_argument("target", help="model id the vmodel should serve")
    add_model_flags(set_, required=False)
    set_.add_argument("--load-now", action="store_true", help="load the target now")
    set_.add_argument("--wait", action="store_true", help="wait until the target is loaded and serving")
    set_.add_argument("--owner", default="", help="owner recorded on the vmodel (ModelMesh's owner)")
    add_common_flags(set_)
    delete = commands.add_parser("delete", help="delete a vmodel")
    delete.add_argument("vmodel", help="vmodel id")
    delete.add_argument("--owner", default="", help="owner the vmodel must have")
    delete.add_argument("--ignore-missing", action="store_true", help="exit 0 when there is no such vmodel")
    add_common_flags(delete)
    status = commands.add_parser("status", help="show a vmodel's state")
    status.add_argument("vmodel", help="vmodel id")
    status.add_argument("--owner", default="", help="owner the vmodel must have")
    add_common_flags(status)
    return parser


def _status(connection: Connection, vmodel_id: str, owner: str) -> mm.VModelStatusInfo:
    return connection.call(connection.mesh.getVModelStatus, mm.GetVModelStatusRequest(vModelId=vmodel_id, owner=owner),
                           what="mmesh.ModelMesh.getVModelStatus")


def vmodel(connection: Connection, args: argparse.Namespace) -> int:
    if args.action == "set":
        if (args.model_type is None) != (args.uri is None):
            raise CliError("--type and --uri go together (they register the target model)")
        request = mm.SetVModelRequest(vModelId=args.vmodel, targetModelId=args.target, loadNow=args.load_now,
                                      sync=args.wait, owner=args.owner)
        if args.uri is not None:
            request.modelInfo.CopyFrom(model_info(args))
        info = connection.call(connection.mesh.setVModel, request, what="mmesh.ModelMesh.setVModel")
        print(vmodel_status_text(args.vmodel, info))
        if args.wait and info.status != _V.DEFINED:
            raise CliError(f"vmodel '{args.vmodel}' did not switch to '{args.target}' "
                           f"({_V.VModelStatus.Name(info.status)})")
        return 0
    if args.action == "delete":
        if _status(connection, args.vmodel, args.owner).status == _V.NOT_FOUND:
            if args.ignore_missing:
                return 0
            raise CliError(f"vmodel '{args.vmodel}' does not exist")
        connection.call(connection.mesh.deleteVModel, mm.DeleteVModelRequest(vModelId=args.vmodel, owner=args.owner),
                        what="mmesh.ModelMesh.deleteVModel")
        print(f"vmodel '{args.vmodel}' deleted")
        return 0
    info = _status(connection, args.vmodel, args.owner)
    if info.status == _V.NOT_FOUND:
        raise CliError(f"vmodel '{args.vmodel}' does not exist")
    print(vmodel_status_text(args.vmodel, info))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command("vmodel", build_parser(), vmodel, argv)
