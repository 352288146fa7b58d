"""The shell every `meshserve` process kind shares (runtime, controller, router, up).

- **Flags from settings.** `add_settings_flags` turns the fields of a pydantic-settings class
  into `--field-name` flags (help from the field's description, its default and its
  variable), so a setting is written once: its name, description and default.
- **Precedence.** `read_settings`: flags given > `<PREFIX><FIELD>` variables > defaults. Each
  process kind has its own prefix (`MESHSERVE_RUNTIME_`, `MESHSERVE_CONTROLLER_`,
  `MESHSERVE_ROUTER_`; `MESHSERVE_` for what every fabric process shares), because one name
  used to mean different things (`MESHSERVE_PORT` was 8085, 8034 or 8033). The old
  `MESHSERVE_<FIELD>` names still work for one release, with a warning.
- **Start-up failures.** `run_server` runs a server's `start` under an `AsyncExitStack`: a
  taken port or any other failure before it serves is ONE line on stderr,
  `meshserve <kind>: cannot start: ...`, and exit status 1; whatever had started is closed.
- **Shutdown.** SIGTERM/SIGINT end the wait; everything `start` entered on the stack is
  closed in reverse order of start-up, each awaited.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import types
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from protos.metrics_exposition import MetricsServer, serve_metrics
from protos.tls import ServerTls, add_port

__all__ = ["LEGACY_ENV_PREFIX", "StartupError", "add_settings_flags", "bind_grpc", "parse_settings", "settings_parser", "configure_logging", "read_settings",
           "run_server", "setting_error", "start_metrics"]

log = logging.getLogger(__name__)

S = TypeVar("S", bound=BaseSettings)

#: The prefix every setting had before each process kind got its own (kept for one release).
LEGACY_ENV_PREFIX = "MESHSERVE_"


class StartupError(Exception):
    """A process cannot start (bad setting, taken port, ...): the message is the one line shown."""


def env_name(cls: type[BaseSettings], field: str) -> str:
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def _flag_type(annotation: Any, parsed_by_the_class: bool) -> Callable[[str], Any] | None:
    """argparse's converter: exact ints and floats are checked by argparse (a clear usage
    error); anything else goes to pydantic as text (paths, optionals, and fields the class
    parses itself, such as sizes like 256MiB for an int field)."""
    if parsed_by_the_class:
        return str
    return {int: int, float: float}.get(annotation, str)


def _fields_parsed_before_validation(cls: type[BaseSettings]) -> set[str]:
    """Fields with a `mode="before"` validator: they take text the plain type would refuse."""
    found: set[str] = set()
    for decorator in cls.__pydantic_decorators__.field_validators.values():
        if decorator.info.mode == "before":
            found.update(decorator.info.fields)
    return found


def _is_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return bool in typing.get_args(annotation)
    return False


def add_settings_flags(parser: argparse.ArgumentParser, cls: type[BaseSettings], *,
                       skip: Iterable[str] = ()) -> None:
    """One `--field-name` flag per field of `cls` (but `skip` and the class's own
    `FLAGS_SKIP`: settings read from the environment only), all defaulting to None so that a
    flag not given leaves the variable or the default in charge."""
    skipped = set(skip) | set(getattr(cls, "FLAGS_SKIP", ()))
    parsed_by_the_class = _fields_parsed_before_validation(cls)
    for name, field in cls.model_fields.items():
        if name in skipped:
            continue
        default = field.get_default(call_default_factory=False) if field.default_factory is None else "computed"
        shown = "unset" if default is None else default
        help_text = f"{field.description or name} (default {shown}; env {env_name(cls, name)})".replace("%", "%%")
        flag = "--" + name.replace("_", "-")
        if _is_bool(field.annotation):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else None
        parser.add_argument(flag, dest=name, type=_flag_type(field.annotation, name in parsed_by_the_class),
                            choices=choices, default=None, help=help_text)


def settings_parser(prog: str, description: str, *classes: type[BaseSettings]) -> argparse.ArgumentParser:
    """A process's parser: the flags of each of its settings classes, in order."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for cls in classes:
        add_settings_flags(parser, cls)
    return parser


def _legacy_values(cls: type[BaseSettings], given: Mapping[str, Any], environ: Mapping[str, str],
                   kind: str) -> dict[str, str]:
    """Values from old `MESHSERVE_<FIELD>` names, for fields neither given nor set under the new name."""
    prefix = cls.model_config.get("env_prefix", "")
    if prefix.upper() == LEGACY_ENV_PREFIX:
        return {}
    upper_env = {k.upper(): v for k, v in environ.items()}
    values = {}
    for name in cls.model_fields:
        old, new = f"{LEGACY_ENV_PREFIX}{name}".upper(), env_name(cls, name)
        if name in given or new in upper_env or old not in upper_env:
            continue
        log.warning("%s is deprecated for meshserve %s: use %s (the old name stops working in the next release)",
                    old, kind, new)
        values[name] = upper_env[old]
    return values


def setting_error(error: ValidationError) -> str:
    """Pydantic's first complaint as one line: `<field>: <what is wrong>`."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or error.title
    return f"bad setting {where}: {first['msg']}"


def read_settings(cls: type[S], args: argparse.Namespace | Mapping[str, Any], *, kind: str,
                  environ: Mapping[str, str] | None = None, legacy: bool = True) -> S:
    """`cls` from the flags that were given (the fields of `cls` only), then its variables,
    old variable names (unless `legacy` is off: a prefix that was always the kind's own),
    and defaults. StartupError with one line on a bad value."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    given = {k: v for k, v in values.items() if k in cls.model_fields and v is not None}
    old = _legacy_values(cls, given, os.environ if environ is None else environ, kind) if legacy else {}
    try:
        return cls(**{**old, **given})
    except ValidationError as error:
        raise StartupError(setting_error(error)) from None
    except ValueError as error:
        raise StartupError(f"bad setting: {error}") from None


def bind_grpc(server: Any, host: str, port: int, tls: ServerTls | None = None) -> int:
    """Bind `server` to host:port (over TLS when `tls` is given) without serving yet;
    StartupError naming the address if it cannot."""
    bound = add_port(server, f"{host}:{port}", tls)
    if bound == 0:
        raise StartupError(f"cannot listen on {host}:{port}: the port is taken or the address is wrong")
    return bound


def start_metrics(registry: Any, host: str, port: int, *, tls_cert_file: str = "",
                  tls_key_file: str = "") -> MetricsServer:
    """`protos.metrics_exposition.serve_metrics` with its failures as StartupError naming the port."""
    try:
        return serve_metrics(registry, host, port, tls_cert_file=tls_cert_file, tls_key_file=tls_key_file)
    except OSError as error:
        raise StartupError(f"cannot serve metrics on {host}:{port}: {error.strerror or error}") from None
    except ValueError as error:
        raise StartupError(str(error)) from None


def parse_settings(parser: argparse.ArgumentParser, argv: list[str] | None, kind: str,
                   *classes: type[BaseSettings], legacy: bool = True) -> tuple[Any, ...]:
    """Parse `argv` and read each settings class from it (`legacy`: as `read_settings`, off for
    a kind that never had the old names); a bad value exits at once with one line,
    `meshserve <kind>: bad setting ...`, and status 1."""
    args = parser.parse_args(argv)
    try:
        return tuple(read_settings(cls, args, kind=kind, legacy=legacy) for cls in classes)
    except StartupError as error:
        raise SystemExit(f"meshserve {kind}: {error}") from None


def configure_logging(level: str, prefix: str = "") -> None:
    logging.basicConfig(level=level.upper(), format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")


def _report(kind: str, error: BaseException) -> None:
    print(f"meshserve {kind}: cannot start: {error}", file=sys.stderr, flush=True)


async def _serve(kind: str, start: Callable[[contextlib.AsyncExitStack], Awaitable[Any]],
                 stop: asyncio.Event | None) -> int:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with contextlib.AsyncExitStack() as stack:
            try:
                await start(stack)
            except (StartupError, OSError, ValueError) as error:
                _report(kind, error)
                return 1
            except Exception as error:  # a bug: say so in one line, keep the traceback in the log
                log.exception("meshserve %s failed to start", kind)
                _report(kind, f"{type(error).__name__}: {error}")
                return 1
            await stop.wait()
            log.info("meshserve %s: stopping", kind)
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run_server(kind: str, start: Callable[[contextlib.AsyncExitStack], Awaitable[Any]], *,
               stop: asyncio.Event | None = None) -> int:
    """Run `start(stack)` in a fresh event loop, then serve until SIGTERM/SIGINT (or `stop`).

    `start` binds ports and starts what the process runs, entering each part on `stack`
    (`enter_async_context`, `push_async_callback`) right after it starts; on the way out
    the stack closes them in reverse order. Returns the exit status: 0 after a clean stop,
    1 when start-up failed (reported as one line on stderr).
    """
    return asyncio.run(_serve(kind, start, stop))

