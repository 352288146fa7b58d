"""What every fabric command shares: `--router`, the gRPC connection, and error reporting.

`run_command(name, parser, action, argv)` parses the flags, opens a `Connection` to the
router and calls `action(connection, args)`. Every failure a user can cause or meet ends
as ONE line on stderr, `meshserve <name>: <what went wrong>`, and exit status 1:

- `CliError` raised by a command (bad flag values, an unknown model, a failed load);
- a gRPC error, explained by `describe_rpc_error` (unreachable router, NOT_FOUND, ...);
- anything unexpected (a bug), named with its type; Ctrl-C exits 130 quietly.
Usage errors are argparse's (status 2).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import grpc
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from protos import grpc_service_pb2_grpc as pb_grpc
from protos import mesh_admin_pb2_grpc as admin_grpc
from protos import model_mesh_pb2_grpc as mm_grpc
from protos.tls import ClientTls, TlsFiles, sync_channel
from puller.errors import PullError
from puller.spec import URI_SCHEMES, resolve

__all__ = ["CliError", "CliSettings", "Connection", "SUPPORTED_SCHEMES", "add_common_flags", "check_storage_uri",
           "describe_rpc_error", "run_command"]

DEFAULT_ROUTER = "127.0.0.1:8033"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024

# The storage URI schemes the puller resolves, checked here so a typo fails at once
# instead of as a load failure on some instance.
SUPPORTED_SCHEMES = URI_SCHEMES

# gRPC core's words for "no connection could be made", as opposed to an UNAVAILABLE
# answered by a server (e.g. the controller's "the fabric's etcd is unreachable").
_CONNECT_FAILURE = re.compile(r"failed to connect|connection refused|dns resolution failed|name resolution|"
                              r"connections to all backends failing|socket closed|connection reset|"
                              r"no route to host|network is unreachable|unavailable addresses", re.IGNORECASE)


class CliError(Exception):
    """A failure to report as one line (the message) and exit status `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class CliSettings(BaseSettings):
    """How the commands reach the fabric (flags override MESHSERVE_* override these defaults)."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_", extra="ignore")

    #: Read from the environment only: a token on a command line shows in `ps`.
    FLAGS_SKIP: ClassVar[tuple[str, ...]] = ("token",)

    router: str = Field(DEFAULT_ROUTER, description="HOST:PORT of a router (or controller) serving "
                        "mmesh.ModelMesh, meshserve.admin.MeshAdmin and V2 inference.")
    cli_timeout_s: float = Field(30.0, description="Deadline of one call (seconds); loads wait up to this long.")
    token_file: str = Field("", description="File whose first line is the bearer token sent with every call (a "
                            "router or controller with auth on needs one: its management or inference token).")
    token: str = Field("", description="The bearer token itself (environment only); token_file wins when both are set.")

    def bearer_token(self) -> str:
        """The token to send ('' for none); CliError when the token file cannot be read."""
        if not self.token_file:
            return self.token.strip()
        try:
            lines = [line.strip() for line in Path(self.token_file).read_text(encoding="utf-8").splitlines()]
        except OSError as error:
            raise CliError(f"cannot read --token-file {self.token_file}: {error.strerror or error}") from None
        token = next((line for line in lines if line and not line.startswith("#")), "")
        if not token:
            raise CliError(f"--token-file {self.token_file} holds no token")
        return token
    tls_ca_file: str = Field("", description="PEM CA the router's certificate must chain to: calls go over TLS.")
    tls_cert_file: str = Field("", description="PEM client certificate, for a router that asks for one (mutual TLS).")
    tls_key_file: str = Field("", description="PEM private key of tls_cert_file.")
    tls_server_name: str = Field("", description="Name expected in the router's certificate when it is not the host.")

    def tls(self) -> ClientTls | None:
        """TLS to the router when a CA or a client certificate is given; ValueError for a file that does not load."""
        return TlsFiles(self.tls_cert_file, self.tls_key_file, self.tls_ca_file,
                        server_name=self.tls_server_name).client()


def add_common_flags(parser: argparse.ArgumentParser, *, timeout_help: str = "deadline of a call in seconds "
                     "(default 30, env MESHSERVE_CLI_TIMEOUT_S)") -> None:
    parser.add_argument("--router", help=f"router address HOST:PORT (env MESHSERVE_ROUTER, default {DEFAULT_ROUTER})")
    parser.add_argument("--timeout", type=float, dest="cli_timeout_s", metavar="SECONDS", help=timeout_help)
    parser.add_argument("--token-file", metavar="FILE", help="file holding the bearer token to send (env "
                        "MESHSERVE_TOKEN_FILE; or the token itself in MESHSERVE_TOKEN)")
    for name, field in CliSettings.model_fields.items():
        if name.startswith("tls_"):
            parser.add_argument("--" + name.replace("_", "-"), dest=name, metavar="FILE" if name.endswith("file") else "NAME",
                                help=f"{field.description} (env MESHSERVE_{name.upper()})")


def _settings(args: argparse.Namespace) -> CliSettings:
    given = {k: getattr(args, k) for k in CliSettings.model_fields if getattr(args, k, None) is not None}
    try:
        settings = CliSettings(**given)
    except ValidationError as error:
        first = error.errors()[0]
        raise CliError(f"bad setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    _check_address(settings.router)
    if settings.cli_timeout_s <= 0:
        raise CliError(f"--timeout must be positive, got {settings.cli_timeout_s}")
    return settings


def _check_address(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CliError(f"--router must be HOST:PORT, got {address!r}")


def check_storage_uri(uri: str, storage_key: str | None) -> str:
    """`uri` stripped if the puller can resolve its form; CliError saying why not otherwise.

    Accepted: a URI of a supported scheme, an absolute local path (on the instances), or a
    relative path inside the storage-config entry named by `storage_key`.
    """
    uri = uri.strip()
    if not uri:
        raise CliError("--uri is empty")
    if "://" in uri:
        scheme = uri.split("://", 1)[0].lower()
        if scheme not in SUPPORTED_SCHEMES:
            supported = ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)
            raise CliError(f"unsupported storage URI scheme '{scheme}://' in {uri!r}; use {supported} "
                           "or an absolute path")
        rest = uri.split("://", 1)[1]
        if scheme != "file" and not rest.split("/", 1)[0]:
            raise CliError(f"storage URI {uri!r} names no {'bucket' if scheme == 's3' else 'host'}")
        try:  # the rest of the puller's own checks (bucket names, '..' segments, local file URIs)
            resolve(uri, None, pvc_root=Path("/"), storage_types={})
        except PullError as error:
            raise CliError(f"storage URI {uri!r} is not usable: {error}") from None
        return uri
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:[^0-9]", uri) and not uri.startswith("/"):
        raise CliError(f"storage URI {uri!r} is malformed: a scheme needs '://' (e.g. s3://bucket/path)")
    if not uri.startswith("/") and storage_key is None:
        raise CliError(f"relative path {uri!r}: give an absolute path, a URI (s3://, https://, pvc://, file://), "
                       "or --storage-key with the storage-config entry it is in")
    return uri


def describe_rpc_error(error: grpc.RpcError, address: str, method: str = "") -> str:
    """One line that says what a failed call means for the user."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else str(error)) or ""
    details = " ".join(details.split())  # one line, whatever the server sent
    if code == grpc.StatusCode.UNAVAILABLE and _CONNECT_FAILURE.search(details):
        return (f"cannot reach the router at {address} (is it running? set --router or MESHSERVE_ROUTER): "
                f"{_short(details)}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and details.lower() in ("deadline exceeded", ""):
        return f"no answer from {address} in time (raise --timeout, or check that the router is up)"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return (f"{address} refused the call: it needs a valid token (give --token-file, MESHSERVE_TOKEN_FILE "
                "or MESHSERVE_TOKEN)")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return f"{address} refused the call: the token does not allow {method or 'it'} (a management token does)"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return (f"the server at {address} does not serve {method or 'this call'}: is --router a meshserve router "
                "or controller?")
    if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS,
                grpc.StatusCode.FAILED_PRECONDITION) and details:
        return details
    return f"{code.name.lower().replace('_', ' ')}: {details}" if details else code.name.lower().replace("_", " ")


def _short(details: str) -> str:
    # gRPC's connect failures repeat the address and errno details; the last clause is the useful one.
    return details.rsplit(": ", 1)[-1] if len(details) > 120 else details


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call of the channel."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        return details._replace(metadata=[*(details.metadata or ()), self._header])

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)


class Connection:
    """One channel to the router and the stubs of the services the commands use."""

    def __init__(self, settings: CliSettings) -> None:
        self.address = settings.router
        self.timeout = settings.cli_timeout_s
        token = settings.bearer_token()
        try:
            tls = settings.tls()
        except ValueError as error:
            raise CliError(str(error)) from None
        self.channel = sync_channel(self.address, [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ], tls)
        if token:
            self.channel = grpc.intercept_channel(self.channel, _BearerToken(token))
        self.mesh = mm_grpc.ModelMeshStub(self.channel)
        self.admin = admin_grpc.MeshAdminStub(self.channel)
        self.inference = pb_grpc.GRPCInferenceServiceStub(self.channel)

    def call(self, method: Callable, request, *, what: str, timeout: float | None = None):
        """`method(request)` with the deadline; a gRPC failure becomes a CliError of one line."""
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as error:
            raise CliError(describe_rpc_error(error, self.address, what)) from None

    def close(self) -> None:
        self.channel.close()


Action = Callable[[Connection, argparse.Namespace], "int | None"]


def run_command(name: str, parser: argparse.ArgumentParser, action: Action, argv: list[str] | None) -> int:
    """Parse, connect, run `action`; every failure is one line on stderr and a non-zero status."""
    args = parser.parse_args(argv)
    connection = None
    try:
        connection = Connection(_settings(args))
        return action(connection, args) or 0
    except CliError as error:
        _fail(name, str(error))
        return error.code
    except grpc.RpcError as error:  # a call made without Connection.call
        _fail(name, describe_rpc_error(error, connection.address if connection else "?"))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `meshserve list | head`
        return 0
    except Exception as error:  # noqa: BLE001 - a bug still gets one line, not a traceback
        _fail(name, f"unexpected {type(error).__name__}: {error}")
        return 1
    finally:
        if connection is not None:
            connection.close()


def _fail(name: str, message: str) -> None:
    print(f"meshserve {name}: {' '.join(message.split())}", file=sys.stderr)
