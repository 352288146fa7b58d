"""Regenerate the committed Python modules from the .proto sources.

Run `python -m protos.generate` (or `make protos`) from the repository root.
`python -m protos.generate --check` exits non-zero when the committed modules
are stale; tests/protos runs it.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

PROTOS_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTOS_DIR.parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _generate_into(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc  # dev-only dependency, imported on use

    sources = sorted(PROTOS_DIR.glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{REPO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(s.relative_to(REPO_ROOT)) for s in sources),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = sorted((out_dir / "protos").iterdir())
    for path in generated:
        if path.name.endswith("_pb2.py"):
            path.write_text(_use_private_pool(path.read_text()))
    return generated


def _use_private_pool(source: str) -> str:
    """Register the messages in protos._pool.POOL instead of the default pool (see there why)."""
    default_pool = "_descriptor_pool.Default().AddSerializedFile("
    if default_pool not in source:
        raise SystemExit("protoc output changed shape: no default-pool registration found")
    source = source.replace(default_pool, "_meshserve_pool.AddSerializedFile(")
    return source.replace(
        "from google.protobuf.internal import builder as _builder\n",
        "from google.protobuf.internal import builder as _builder\nfrom protos._pool import POOL as _meshserve_pool\n",
        1,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed modules are stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        generated = _generate_into(Path(tmp))
        stale = []
        for path in generated:
            target = PROTOS_DIR / path.name
            if args.check:
                if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                    stale.append(path.name)
            else:
                target.write_bytes(path.read_bytes())
        expected = {p.name for p in generated}
        extra = [p.name for p in PROTOS_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES) and p.name not in expected]
    if args.check and (stale or extra):
        print(f"stale generated modules: {sorted(stale + extra)}; run `make protos`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
