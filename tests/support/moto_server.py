"""A real moto S3 server in its own process, on a free loopback port.

Usage::

    with MotoServer(auth=True) as server:
        s3 = server.client()          # boto3 client with valid credentials
        server.endpoint_url           # http://127.0.0.1:<port>

With ``auth=True`` the server checks signatures and IAM policies (moto's
``/moto-api/reset-auth``): an IAM user with full S3 access is created first, and its keys
are ``server.access_key_id`` / ``server.secret_access_key``; any other keys are refused.
Without it, any credentials are accepted (the cheapest setup, used by the benchmark).
A separate process keeps the server's work off the test's GIL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from tests.support.ports import free_port

__all__ = ["MotoServer"]

_S3_ALL = json.dumps({"Version": "2012-10-17",
                      "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})


class MotoServer:
    def __init__(self, *, auth: bool = False, start_timeout_s: float = 30.0):
        self.auth = auth
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.access_key_id = "testing"
        self.secret_access_key = "testing"
        self.region = "us-east-1"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MotoServer":
        last_error = "not started"
        for _ in range(3):  # a port picked as free can be taken before the server binds it
            self.port = free_port()
            env = dict(os.environ, MOTO_CALL_RESET_API="false", AWS_DEFAULT_REGION=self.region)
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
            last_error = self._wait_ready()
            if not last_error:
                break
            self.stop()
        else:
            raise RuntimeError(f"moto server did not start: {last_error}")
        if self.auth:
            self._enable_auth()
        return self

    def _wait_ready(self) -> str:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/data.json", timeout=2) as resp:
                    if resp.status == 200:
                        return ""
            except (urllib.error.URLError, OSError):
                pass
            try:  # doubles as the wait between probes: returns at once if the server died
                self.process.wait(timeout=0.05)
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                return f"exited with {self.process.returncode}: {err[-500:]}"
            except subprocess.TimeoutExpired:
                pass
        return "timed out waiting for the server to answer"

    def _enable_auth(self) -> None:
        iam = self.client("iam")
        iam.create_user(UserName="puller-tests")
        iam.put_user_policy(UserName="puller-tests", PolicyName="s3-all", PolicyDocument=_S3_ALL)
        key = iam.create_access_key(UserName="puller-tests")["AccessKey"]
        self.access_key_id, self.secret_access_key = key["AccessKeyId"], key["SecretAccessKey"]
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 200

    def client(self, service: str = "s3", **overrides: Any) -> Any:
        import boto3

        kwargs: dict[str, Any] = dict(
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
            endpoint_url=self.endpoint_url,
        )
        kwargs.update(overrides)
        return boto3.session.Session().client(service, **kwargs)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            if self.process.stderr:
                self.process.stderr.close()
            self.process = None

    def __enter__(self) -> "MotoServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
