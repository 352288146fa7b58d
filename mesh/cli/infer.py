"""`meshserve infer NAME --input JSON-or-.npy [--input-name x] [--datatype FP32] [--output y]`.

Sends one V2 ModelInfer through the router (the protos' own stubs) and prints each output
as `name DATATYPE [shape]: values` (or one JSON object with `--json`). Without
--input-name the model's metadata names the input (it must have exactly one); without
--datatype a .npy file keeps its dtype, and JSON takes the input's datatype from the
metadata, else FP32. A model that is not loaded is loaded on the way (up to --timeout).
"""

from __future__ import annotations

import argparse
import json

import grpc

from mesh.cli.common import CliError, Connection, add_common_flags, describe_rpc_error, run_command
from mesh.cli.render import outputs_text
from mesh.cli.tensors import DATATYPES, decode_outputs, encode_input, read_input, to_jsonable
from protos import grpc_service_pb2 as pb

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshserve infer", description="Run one inference through the router.")
    parser.add_argument("name", help="model or vmodel id")
    parser.add_argument("--input", required=True, metavar="JSON|FILE.npy",
                        help="the input tensor: a JSON array (e.g. '[[1,2,3,4]]'), a .json file or a .npy file")
    parser.add_argument("--input-name", help="name of the model's input (default: from the model's metadata)")
    parser.add_argument("--datatype", type=str.upper, choices=list(DATATYPES), metavar="DATATYPE",
                        help="V2 datatype of the input (default: .npy dtype, else the model's, else FP32)")
    parser.add_argument("--output", action="append", default=[], metavar="NAME",
                        help="only this output (repeatable; default: all)")
    parser.add_argument("--json", action="store_true", help="print {name: {datatype, shape, data}} as JSON")
    add_common_flags(parser, timeout_help="deadline in seconds, including a load on the way (default 30)")
    return parser


def _metadata_input(connection: Connection, name: str) -> tuple[str | None, str | None, str]:
    """(input name, its datatype, why not) from the model's metadata."""
    try:
        metadata = connection.inference.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=connection.timeout)
    except grpc.RpcError as error:
        if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED,
                            grpc.StatusCode.DEADLINE_EXCEEDED):
            raise  # no model, no router, or no V2 server there: say so, not "pass --input-name"
        return None, None, f"its metadata could not be read ({error.code().name})"
    if len(metadata.inputs) != 1:
        names = ", ".join(i.name for i in metadata.inputs) or "none"
        return None, None, f"it has {len(metadata.inputs)} inputs ({names})"
    return metadata.inputs[0].name, metadata.inputs[0].datatype or None, ""


def infer(connection: Connection, args: argparse.Namespace) -> int:
    input_name, datatype = args.input_name, args.datatype
    if input_name is None or (datatype is None and not args.input.endswith(".npy")):
        try:
            found_name, found_type, why = _metadata_input(connection, args.name)
        except grpc.RpcError as error:
            raise CliError(describe_rpc_error(error, connection.address,
                                              "inference.GRPCInferenceService.ModelMetadata")) from None
        if input_name is None:
            if found_name is None:
                raise CliError(f"pass --input-name: model '{args.name}' does not name one input ({why})")
            input_name = found_name
        if datatype is None and found_type in DATATYPES and found_name == input_name:
            datatype = found_type
    array = read_input(args.input, datatype)
    request = pb.ModelInferRequest(model_name=args.name)
    encode_input(request, input_name, array)
    for output in args.output:
        request.outputs.add(name=output)
    response = connection.call(connection.inference.ModelInfer, request,
                               what="inference.GRPCInferenceService.ModelInfer")
    outputs = decode_outputs(response)
    if args.json:
        print(json.dumps({name: {"datatype": dt, "shape": list(a.shape), "data": to_jsonable(a)}
                          for name, (dt, a) in outputs.items()}))
    else:
        print(outputs_text(outputs))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command("infer", build_parser(), infer, argv)
