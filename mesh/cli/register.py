"""`meshserve register NAME --type TYPE --uri URI [--storage-key K] [--load-now]`.

Registers a model through `mmesh.ModelMesh.registerModel`. The URI's form is checked here
first (`check_storage_uri`). With `--load-now` the call waits (up to `--timeout`) for a
copy to load and exits 1 if the load failed, printing the status with the reason.
"""

from __future__ import annotations

import argparse
import json

from mesh.cli.common import CliError, Connection, add_common_flags, check_storage_uri, run_command
from mesh.cli.render import model_status_text, state_name
from mesh.domain.records import parse_model_key
from protos import model_mesh_pb2 as mm

__all__ = ["build_parser", "main", "model_info"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshserve register", description="Register a model in the fabric.")
    parser.add_argument("name", help="model id")
    add_model_flags(parser, required=True)
    parser.add_argument("--load-now", action="store_true", help="load a copy now and wait for it (up to --timeout)")
    add_common_flags(parser)
    return parser


def add_model_flags(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--type", dest="model_type", required=required, help="model type, e.g. onnx, pytorch")
    parser.add_argument("--uri", required=required,
                        help="where the model is: s3://, http(s)://, pvc://, file:// or an absolute path")
    parser.add_argument("--storage-key", help="storage-config entry that holds the credentials (and the bucket)")
    parser.add_argument("--model-key", help="ModelMesh's modelKey JSON, passed to the runtime (advanced)")


def model_info(args: argparse.Namespace) -> mm.ModelInfo:
    """The ModelInfo from --type/--uri/--storage-key/--model-key; CliError if they are unusable."""
    uri = check_storage_uri(args.uri, args.storage_key)
    key: dict = {}
    if args.model_key:
        try:
            key = parse_model_key(args.model_key)
        except ValueError as error:
            raise CliError(f"--model-key must be a JSON object: {error}") from None
    if args.storage_key:
        key["storage_key"] = args.storage_key
    if not args.model_type.strip():
        raise CliError("--type is empty")
    return mm.ModelInfo(type=args.model_type.strip(), path=uri, key=json.dumps(key) if key else "")


def register(connection: Connection, args: argparse.Namespace) -> int:
    request = mm.RegisterModelRequest(modelId=args.name, modelInfo=model_info(args), loadNow=args.load_now,
                                      sync=args.load_now)
    info = connection.call(connection.mesh.registerModel, request, what="mmesh.ModelMesh.registerModel")
    print(model_status_text(args.name, info))
    if args.load_now and info.status != mm.ModelStatusInfo.LOADED:
        reason = f": {info.errors[0]}" if info.errors else ""
        raise CliError(f"model '{args.name}' is registered but not loaded ({state_name(info.status)}){reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command("register", build_parser(), register, argv)
