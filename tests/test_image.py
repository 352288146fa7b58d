"""The container images, read rather than built: CI has no Docker engine and reaches no image
registry, so `Dockerfile` (CPU) and `Dockerfile.gpu` are parsed (dockerfile-parse) and checked
for what the image promises: python:3.11 bases, the meshserve wheel built from this repository
in a builder stage, a final stage that runs `meshserve` as uid 1000 with no build tools, and a
.dockerignore that keeps the venv and git out of the build context."""

from __future__ import annotations

import fnmatch
import io
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = ["Dockerfile", "Dockerfile.gpu"]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
#: The packages the wheel is made of, as pyproject.toml lists them (`protos*` -> `protos`).
PACKAGES = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|make|build-essential|cmake|python3-dev|libc6?-dev)\b")


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [value for kind, value in self.instructions if kind == instruction]

    def copies(self) -> list[list[str]]:
        """Each COPY/ADD as its words (flags such as --from=... included)."""
        return [shlex.split(v) for kind, v in self.instructions if kind in ("COPY", "ADD")]

    def context_sources(self) -> set[str]:
        """What this stage copies from the build context (not --from another stage)."""
        sources: set[str] = set()
        for words in self.copies():
            if any(w.startswith("--from") for w in words):
                continue
            paths = [w for w in words if not w.startswith("--")]
            sources.update(p.rstrip("/") for p in paths[:-1])
        return sources

    def run_text(self) -> str:
        return "\n".join(self.values("RUN"))


def parse(name: str) -> tuple[DockerfileParser, list[Stage]]:
    # fileobj: given a path, dockerfile-parse takes any name not ending in "Dockerfile" for a folder.
    parser = DockerfileParser(fileobj=io.BytesIO((REPO / name).read_bytes()), env_replace=True)
    stages: list[Stage] = []
    bases = iter(parser.parent_images)  # FROM images with ARG defaults substituted
    for item in parser.structure:
        kind, value = item["instruction"], item["value"]
        if kind == "FROM":
            words = value.split()
            stage_name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(base=next(bases), name=stage_name))
        elif kind != "COMMENT" and stages:
            stages[-1].instructions.append((kind, value))
    return parser, stages


@pytest.fixture(params=DOCKERFILES)
def image(request) -> tuple[str, list[Stage]]:
    _, stages = parse(request.param)
    return request.param, stages


def test_every_stage_is_python_3_11_slim(image):
    name, stages = image
    assert len(stages) >= 2, f"{name}: a builder stage and a runtime stage"
    for stage in stages:
        assert stage.base == "python:3.11-slim", (name, stage.name, stage.base)


def test_the_final_stage_runs_meshserve_as_uid_1000(image):
    name, stages = image
    final = stages[-1]
    users = final.values("USER")
    assert users, f"{name}: the final stage sets no USER (it would run as root)"
    user, _, group = users[-1].partition(":")
    assert user == "1000" and group in ("", "1000"), (name, users[-1])  # numeric: runAsNonRoot can check it
    assert re.search(r"useradd\b[^\n]*--uid 1000\b", final.run_text()), f"{name}: no user with uid 1000"
    entrypoints = final.values("ENTRYPOINT")
    assert entrypoints and json.loads(entrypoints[-1]) == ["meshserve"], (name, entrypoints)
    assert any(re.match(r"PATH=/opt/meshserve/bin:", env) for env in final.values("ENV")), name


def test_the_wheel_is_built_from_this_repository(image):
    name, stages = image
    builder = stages[0]
    assert builder.name == "builder"
    sources = builder.context_sources()
    assert PACKAGES == {"protos", "runtimes", "puller", "mesh", "router"}
    assert {"pyproject.toml", "requirements/constraints.txt", *PACKAGES} <= sources, (name, sources)
    for package in PACKAGES:
        assert (REPO / package / "__init__.py").is_file(), package
    run = builder.run_text()
    assert re.search(r"pip wheel\b[^\n]*-c requirements/constraints\.txt[^\n]* \.(\s|$)", run), (name, run)
    extras = re.search(r"meshserve-\*\.whl\)\[([a-z,]+)\]", run)
    assert extras and "torch" in extras.group(1).split(","), (name, run)


def test_the_final_stage_has_no_build_tools_or_sources(image):
    name, stages = image
    final = stages[-1]
    assert final.context_sources() == set(), f"{name}: the final stage copies from the context"
    assert all(any(w == "--from=builder" for w in words) for words in final.copies()), name
    run = final.run_text()
    assert "pip wheel" not in run and "pip install" not in run, (name, run)
    assert not BUILD_TOOLS.search(run), (name, run)
    assert "pip uninstall --yes pip" in stages[0].run_text(), f"{name}: the venv keeps pip"


def test_the_cpu_image_takes_the_cpu_build_of_the_pinned_torch():
    _, stages = parse("Dockerfile")
    (pin,) = PYPROJECT["project"]["optional-dependencies"]["torch"]
    version = pin.removeprefix("torch==")
    run = stages[0].run_text()
    assert f'"torch=={version}+cpu"' in run and "--no-deps" in run
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in stages[0].values("ARG") if "=" in a}
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert "onnxruntime-gpu" not in run


def test_the_gpu_image_takes_cuda_torch_and_only_the_gpu_onnxruntime():
    _, stages = parse("Dockerfile.gpu")
    run = stages[0].run_text()
    assert "+cpu" not in run and "/whl/cpu" not in run  # torch from PyPI: its Linux wheel is the CUDA build
    assert re.search(r"meshserve-\*\.whl\)\[gpu,torch,classic\]", run), run
    assert "pip uninstall --yes onnxruntime onnxruntime-gpu" in run
    assert "pip install --no-deps -c requirements/constraints.txt onnxruntime-gpu" in run
    assert "CUDAExecutionProvider" in run
    assert PYPROJECT["project"]["optional-dependencies"]["gpu"] == ["onnxruntime-gpu>=1.18", "nvidia-ml-py>=12"]
    constraints = (REPO / "requirements" / "constraints.txt").read_text().splitlines()
    assert any(line.startswith("onnxruntime-gpu==") for line in constraints)


def _dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_dockerignore_keeps_the_venv_git_and_local_state_out():
    patterns = _dockerignore()
    for required in (".venv", ".git", ".work", ".meshserve", "node_modules", "**/__pycache__"):
        assert required in patterns, required
    assert not any(p.startswith("!") for p in patterns)


def test_dockerignore_excludes_nothing_the_images_copy():
    patterns = _dockerignore()
    for name in DOCKERFILES:
        for source in parse(name)[1][0].context_sources():
            hit = [p for p in patterns if fnmatch.fnmatch(source, p) or source.startswith(p.rstrip("/") + "/")]
            assert not hit, (name, source, hit)
