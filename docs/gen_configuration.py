"""Generate docs/configuration.md from the pydantic settings classes of every process.

    python docs/gen_configuration.py          # rewrite docs/configuration.md
    python docs/gen_configuration.py --check  # exit 1 if it is stale (tests/test_configuration_docs.py does this)

It lives outside the packages on purpose: it imports `mesh` AND `router`, which no module
inside `mesh` may do (import-linter contract). Flags are read from each process's own
argparse parser, environment variables from each class's `env_prefix`, defaults and
descriptions from the fields, so the page cannot drift from the code.
"""

from __future__ import annotations

import argparse
import enum
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "configuration.md"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pydantic_core import PydanticUndefined  # noqa: E402


@dataclass
class Process:
    title: str
    summary: str
    parser: Callable[[], argparse.ArgumentParser]
    classes: list[type]


def _processes() -> list[Process]:
    from mesh.cli import agent as agent_cli
    from mesh.cli import controller as controller_cli
    from mesh.cli import operator as operator_cli
    from mesh.cli import runtime as runtime_cli
    from mesh.cli import up
    from mesh.cli import common as cli_common
    from mesh.api.auth.settings import AuthSettings
    from mesh.operator.settings import OperatorSettings
    from mesh.settings import FabricSettings
    from router import server as router_server
    from router.settings import RouterSettings

    def cli_parser() -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog="meshserve <command>")
        cli_common.add_common_flags(parser)
        return parser

    return [
        Process("meshserve runtime", "A runtime process; with `--etcd` it joins a fabric as an instance "
                "(the fabric and instance settings apply only then).",
                runtime_cli.build_parser, [runtime_cli.ProcessRuntimeSettings, FabricSettings, runtime_cli.InstanceSettings]),
        Process("meshserve agent", "The instance agent beside a runtime of another kind (one that speaks the "
                "model-runtime SPI and V2 inference): it waits for the runtime, serves the SPI to the fabric on its "
                "own port and seats the runtime as an instance.", agent_cli.build_parser,
                [agent_cli.AgentSettings, FabricSettings]),
        Process("meshserve controller", "One controller replica: the management API, and the background work "
                "while it is the leader.", controller_cli.build_parser, [controller_cli.ControllerSettings, FabricSettings, AuthSettings]),
        Process("meshserve operator", "The Kubernetes operator (see kubernetes.md): Predictors, "
                "InferenceServices and ServingRuntimes into the fabric; without `--etcd` it reads the "
                "`model-serving-etcd` secret.", operator_cli.build_parser, [OperatorSettings, FabricSettings]),
        Process("meshserve router", "The V2 gRPC/REST front door.", router_server.build_parser, [RouterSettings, FabricSettings, AuthSettings]),
        Process("meshserve up", "The local fabric (etcd, controller, runtimes, router, example models). Its "
                "variables use the prefix `MESHSERVE_UP_` so that they cannot collide with the variables of "
                "the processes it starts.", up.build_parser, [up.UpSettings]),
        Process("meshserve register / unregister / list / status / vmodel / infer / top",
                "The fabric commands: how they reach a router.", cli_parser, [cli_common.CliSettings]),
    ]


def _flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    flags: dict[str, str] = {}
    for action in parser._actions:  # argparse has no public listing of its actions
        if action.option_strings and action.dest not in ("help",):
            flags.setdefault(action.dest, " / ".join(f"`{o}`" for o in action.option_strings))
    return flags


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(str(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "none"
    return getattr(annotation, "__name__", str(annotation))


def _is_bytes(name: str, description: str) -> bool:
    return "bytes" in name or "bytes" in description.lower()


def _size(value: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= factor and value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


def _default(name: str, info: Any) -> str:
    if info.default_factory is not None:
        return "computed at start (see description)"
    value = info.default
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, int) and _is_bytes(name, info.description or "") and value >= 1024:
        return f"`{value}` ({_size(value)})"
    if isinstance(value, float):
        return f"`{value:g}`"
    if value == "":
        return '`""` (empty)'
    return f"`{value}`"


def _cell(text: str) -> str:
    """Markdown-table safe: no pipes or newlines, and `<name>` kept visible (not taken for HTML)."""
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def _table(cls: type, flags: dict[str, str]) -> list[str]:
    prefix = cls.model_config.get("env_prefix", "")
    rows = ["| setting | flag | environment variable | type | default | what it does |",
            "|---|---|---|---|---|---|"]
    for name, info in cls.model_fields.items():
        rows.append(f"| `{name}` | {flags.get(name, '(variable only)')} | `{(prefix + name).upper()}` | "
                    f"{_type_name(info.annotation)} | {_default(name, info)} | {_cell(info.description or '')} |")
    return rows


def render() -> str:
    lines = [
        "<!-- GENERATED by `python docs/gen_configuration.py` (`make config-docs`) from the settings classes.",
        "     Do not edit by hand: change the Field descriptions and defaults in the code and regenerate.",
        "     tests/test_configuration_docs.py fails when this file is stale. -->",
        "",
        "# Configuration",
        "",
        "Every process takes its settings from, in this order of precedence: command-line flags,",
        "environment variables, and the defaults below, each written once in a pydantic settings class",
        "(the flags are built from the same fields, by `mesh.cli.process`). Each process kind has its own",
        "variable prefix (`MESHSERVE_RUNTIME_`, `MESHSERVE_AGENT_`, `MESHSERVE_CONTROLLER_`, `MESHSERVE_ROUTER_`,",
        "`MESHSERVE_UP_`); what every fabric process shares (`FabricSettings`) is `MESHSERVE_*`. The old",
        "unprefixed names (`MESHSERVE_PORT`, ...) still work for one release, with a warning (not for",
        "the agent, which never had them). Settings marked *(variable only)* have no flag. Sizes accept",
        "`2GiB`, `512MiB`, `1.5G` or a number of bytes; durations are in the unit their name ends with",
        "(`_s` seconds, `_ms` milliseconds).",
        "",
        "See also [architecture.md](architecture.md) for what each process does and",
        "[benchmarks.md](benchmarks.md) for the figures.",
        "",
    ]
    for process in _processes():
        flags = _flags(process.parser())
        lines += [f"## `{process.title}`", "", process.summary, ""]
        for cls in process.classes:
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            lines += [f"### {cls.__name__} (`{cls.__module__}`)", "", doc, ""] if doc else \
                     [f"### {cls.__name__} (`{cls.__module__}`)", ""]
            lines += _table(cls, flags)
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/configuration.md is stale")
    args = parser.parse_args(argv)
    text = render()
    current = OUTPUT.read_text() if OUTPUT.exists() else ""
    if args.check:
        if current != text:
            print(f"{OUTPUT.relative_to(REPO)} is stale: run `python docs/gen_configuration.py`", file=sys.stderr)
            return 1
        return 0
    if current != text:
        OUTPUT.write_text(text)
        print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
