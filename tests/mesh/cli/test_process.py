"""The process shell: flags built from settings, each process kind's variable prefix (old
names honoured with a warning), and start-up failures as one line with exit status 1.

The failure tests start real `meshserve` processes against ports the test holds.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.cli import controller as controller_cli
from mesh.cli import runtime as runtime_cli
from mesh.cli import up as up_cli
from mesh.cli.process import StartupError, add_settings_flags, read_settings
from mesh.settings import FabricSettings
from router import server as router_server
from router.settings import RouterSettings
from tests.support.fabric import REPO
from tests.support.ports import free_port
from tests.support.tls import make_pki, self_signed


class Example(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_EXAMPLE_", extra="forbid")

    port: int = Field(8000, description="A port.")
    ratio: float = Field(0.5, description="A ratio.")
    enabled: bool = Field(True, description="On or off.")
    name: str = Field("", description="A name with 100% coverage.")


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_settings_flags(parser, Example)
    return parser.parse_args(argv)


def test_flags_come_from_the_fields_with_their_description_default_and_variable():
    parser = argparse.ArgumentParser()
    add_settings_flags(parser, Example, skip=("name",))
    helps = {a.dest: a.help for a in parser._actions if a.option_strings and a.dest != "help"}
    assert set(helps) == {"port", "ratio", "enabled"}
    assert helps["port"] == "A port. (default 8000; env MESHSERVE_EXAMPLE_PORT)"
    args = parser.parse_args(["--port", "9", "--ratio", "0.25", "--no-enabled"])
    assert (args.port, args.ratio, args.enabled) == (9, 0.25, False)
    with pytest.raises(SystemExit):
        parser.parse_args(["--port", "nine"])  # argparse's usage error, exit 2


def test_flags_override_variables_override_defaults(monkeypatch):
    monkeypatch.setenv("MESHSERVE_EXAMPLE_PORT", "7000")
    monkeypatch.setenv("MESHSERVE_EXAMPLE_RATIO", "0.75")
    settings = read_settings(Example, _parse("--port", "9"), kind="example")
    assert (settings.port, settings.ratio, settings.enabled) == (9, 0.75, True)


def test_an_old_variable_name_still_works_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="mesh.cli.process"):
        settings = read_settings(Example, _parse(), kind="example", environ={"MESHSERVE_PORT": "7001"})
    assert settings.port == 7001
    assert "MESHSERVE_PORT is deprecated for meshserve example: use MESHSERVE_EXAMPLE_PORT" in caplog.text


def test_the_new_name_and_flags_win_over_an_old_name(caplog, monkeypatch):
    monkeypatch.setenv("MESHSERVE_EXAMPLE_PORT", "7002")
    with caplog.at_level(logging.WARNING, logger="mesh.cli.process"):
        assert read_settings(Example, _parse(), kind="example", environ=dict(os.environ, MESHSERVE_PORT="1")).port == 7002
        assert read_settings(Example, _parse("--port", "3"), kind="example", environ={"MESHSERVE_PORT": "1"}).port == 3
    assert "deprecated" not in caplog.text
    assert read_settings(Example, _parse(), kind="example", environ={"MESHSERVE_PORT": "1"}, legacy=False).port == 7002


def test_a_bad_value_is_one_line_naming_the_setting():
    with pytest.raises(StartupError, match=r"^bad setting port: "):
        read_settings(Example, {"port": "not-a-port"}, kind="example")


def test_each_process_kind_has_its_own_prefix_and_one_for_what_they_share():
    assert runtime_cli.ProcessRuntimeSettings.model_config["env_prefix"] == "MESHSERVE_RUNTIME_"
    assert runtime_cli.InstanceSettings.model_config["env_prefix"] == "MESHSERVE_RUNTIME_"
    assert controller_cli.ControllerSettings.model_config["env_prefix"] == "MESHSERVE_CONTROLLER_"
    assert RouterSettings.model_config["env_prefix"] == "MESHSERVE_ROUTER_"
    assert up_cli.UpSettings.model_config["env_prefix"] == "MESHSERVE_UP_"
    assert FabricSettings.model_config["env_prefix"] == "MESHSERVE_"
    # The one name that meant three things now means one per kind.
    defaults = {cls: cls.model_fields["port"].default for cls in
                (runtime_cli.ProcessRuntimeSettings, controller_cli.ControllerSettings, RouterSettings)}
    assert sorted(defaults.values()) == [8033, 8034, 8085]


@pytest.mark.parametrize("parser", [runtime_cli.build_parser, controller_cli.build_parser, router_server.build_parser])
def test_every_fabric_process_takes_the_fabric_timings_and_no_password_flag(parser):
    dests = {a.dest for a in parser()._actions}
    assert {"etcd", "fabric", "lease_ttl_s", "loading_timeout_ms", "failure_expiry_ms"} <= dests
    assert "etcd_password" not in dests  # a password on a command line shows in `ps`


def _held_port() -> socket.socket:
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    return held


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHSERVE_")}
    return subprocess.run([sys.executable, "-m", "mesh.cli", *argv], capture_output=True, text=True, timeout=60,
                          cwd=REPO, env={**env, "PYTHONUNBUFFERED": "1"})


def _last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_a_runtime_whose_metrics_port_is_taken_exits_1_with_one_line(tmp_path):
    with _held_port() as held:
        port = held.getsockname()[1]
        result = _run("runtime", "--host", "127.0.0.1", "--port", str(free_port()),
                      "--metrics-port", str(port), "--models-dir", str(tmp_path))
    assert result.returncode == 1, result.stderr
    assert _last_line(result).startswith(f"meshserve runtime: cannot start: cannot serve metrics on 127.0.0.1:{port}")
    assert "Traceback" not in result.stderr


def test_a_metrics_certificate_without_its_key_exits_1_with_one_line(tmp_path):
    cert, key = self_signed(tmp_path / "tls")
    base = ("runtime", "--host", "127.0.0.1", "--port", str(free_port()), "--metrics-port", str(free_port()),
            "--models-dir", str(tmp_path))
    result = _run(*base, "--metrics-tls-cert-file", str(cert))
    assert result.returncode == 1, result.stderr
    assert _last_line(result) == ("meshserve runtime: cannot start: metrics TLS needs both a certificate file and "
                                  "a key file (or neither)")
    result = _run(*base, "--metrics-tls-cert-file", str(cert), "--metrics-tls-key-file", str(tmp_path / "missing.key"))
    assert result.returncode == 1, result.stderr
    assert _last_line(result).startswith(f"meshserve runtime: cannot start: cannot load the metrics certificate {cert}")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["runtime", "router"])
def test_a_taken_grpc_port_exits_1_with_one_line(command, tmp_path):
    fabric = ["--etcd", "127.0.0.1:1"] if command == "router" else ["--models-dir", str(tmp_path)]
    with _held_port() as held:
        port = held.getsockname()[1]
        result = _run(command, "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0", *fabric,
                      *(["--rest-port", "0"] if command == "router" else []))
    assert result.returncode == 1, result.stderr
    assert _last_line(result) == (f"meshserve {command}: cannot start: cannot listen on 127.0.0.1:{port}: "
                                  "the port is taken or the address is wrong")
    assert "Traceback" not in result.stderr


def test_a_size_flag_takes_the_units_its_variable_takes():
    args = runtime_cli.build_parser().parse_args(["--capacity-buffer", "256MiB", "--capacity", "2GiB"])
    settings = read_settings(runtime_cli.ProcessRuntimeSettings, args, kind="runtime")
    assert (settings.capacity_buffer, settings.capacity) == (256 << 20, 2 << 30)


def test_a_bad_setting_exits_1_with_one_line():
    result = _run("runtime", "--capacity", "12XB")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "meshserve runtime: bad setting capacity: Value error, not a size: '12XB' (examples: 2GiB, 512MiB, 1.5G, 1048576)"]


def test_tls_files_that_do_not_load_and_tls_with_the_native_front_stop_the_router_with_one_line(tmp_path):
    pki = make_pki(tmp_path / "pki")
    base = ("router", "--etcd", "127.0.0.1:1", "--host", "127.0.0.1", "--port", str(free_port()), "--rest-port", "0",
            "--metrics-port", "0")
    tls = ("--tls-cert-file", str(pki.server.cert_file), "--tls-key-file", str(pki.server.key_file))
    result = _run(*base, *tls, "--native-front")
    assert result.returncode == 1, result.stderr
    assert _last_line(result) == ("meshserve router: cannot start: --native-front does not serve TLS yet: without "
                                  "--tls-cert-file, or without --native-front")
    result = _run(*base, "--tls-cert-file", str(pki.server.cert_file), "--tls-key-file", str(pki.client.key_file))
    assert result.returncode == 1, result.stderr
    assert _last_line(result).startswith(f"meshserve router: cannot start: cannot load the TLS certificate "
                                         f"{pki.server.cert_file} with key {pki.client.key_file}")
    assert "Traceback" not in result.stderr and "PRIVATE KEY" not in result.stderr
