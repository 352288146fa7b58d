"""The `meshserve` command: one entry point, one subcommand per process kind.

Subcommands name their module by string and are imported only when chosen, so
`meshserve runtime` never imports the router (and the import contracts hold).
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "runtime": ("mesh.cli.runtime", "serve many models in one process (V2 gRPC + model-runtime SPI); joins a fabric with --etcd"),
    "agent": ("mesh.cli.agent", "seat a runtime that speaks the model-runtime SPI (Triton/MLServer adapters, ...) in a fabric"),
    "controller": ("mesh.cli.controller", "management API (mmesh.ModelMesh) and leader-elected background work"),
    "router": ("router.server", "route V2 inference calls (gRPC 8033, REST 8008) to loaded model copies"),
    "operator": ("mesh.cli.operator", "Kubernetes operator: Predictors, InferenceServices and ServingRuntimes into the fabric"),
    "up": ("mesh.cli.up", "a whole local fabric (etcd, controller, runtimes, router, example models); Ctrl-C stops it"),
    "register": ("mesh.cli.register", "register a model (--type, --uri; --load-now to load it and wait)"),
    "unregister": ("mesh.cli.unregister", "unregister a model (its copies are unloaded)"),
    "list": ("mesh.cli.listing", "list the registered models, their states and copies"),
    "status": ("mesh.cli.status", "a model's state, copies and where they are, last failure"),
    "vmodel": ("mesh.cli.vmodel", "set, delete or show a vmodel (alias)"),
    "infer": ("mesh.cli.infer", "run one V2 inference through the router and print the outputs"),
    "top": ("mesh.cli.top", "live view of instances: memory, models, loads, rates, LRU age"),
}


def usage() -> str:
    lines = ["usage: meshserve <command> [options]", "", "commands:"]
    lines += [f"  {name:<12} {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    lines += ["", "`meshserve <command> --help` shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(f"meshserve: unknown command '{command}'\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[command][0])
    return module.main(rest) or 0

