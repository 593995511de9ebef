"""A real moto S3 server in a subprocess, for tests that talk to S3 over HTTP.

Usage as a pytest fixture::

    from tests.support.moto_server import MotoServer, moto_server  # noqa: F401 (fixture)

    def test_x(moto_server: MotoServer) -> None:
        s3 = moto_server.client("s3")
        ...

or directly: ``with MotoServer.start() as server: ...``. The server can be stopped and started
again on the same port (``server.stop()`` / ``server.restart()``) to simulate S3 going down;
state is lost on restart (moto keeps it in memory).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = ["MotoServer", "free_port", "moto_env", "moto_server"]

_CREDS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",  # moto accepts anything; not a secret
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def moto_env() -> dict[str, str]:
    """Fake AWS credentials and region so boto3 never looks at the real home or IMDS."""
    return dict(_CREDS)


def _moto_executable() -> str:
    candidate = Path(sys.executable).with_name("moto_server")
    return str(candidate) if candidate.exists() else "moto_server"


@dataclass
class MotoServer:
    """A ``moto_server`` process on 127.0.0.1:port."""

    port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    @contextlib.contextmanager
    def start(cls, port: int | None = None, timeout: float = 20.0) -> Iterator[MotoServer]:
        """Start a server, wait until it answers, yield it, stop it on exit."""
        server = cls(port=port or free_port())
        server.launch(timeout)
        try:
            yield server
        finally:
            server.stop()

    def launch(self, timeout: float = 20.0) -> None:
        """Start the process (if not running) and wait until it answers HTTP."""
        if self.running:
            return
        env = {**os.environ, **_CREDS}
        self.process = subprocess.Popen(
            [_moto_executable(), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.process.returncode}")
            if self.answers():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.endpoint_url} in {timeout}s")

    def answers(self) -> bool:
        """True when the server responds to an HTTP request."""
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL) and wait for it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def restart(self, timeout: float = 20.0) -> None:
        """Stop and start again on the same port (all S3 state is lost)."""
        self.stop()
        self.launch(timeout)

    def reset(self) -> None:
        """Drop all state (buckets, objects) without restarting the process."""
        req = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=5):
            pass

    def client(self, service: str = "s3") -> Any:
        """A boto3 client pointed at this server with fake credentials."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=_CREDS["AWS_DEFAULT_REGION"],
            aws_access_key_id=_CREDS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=_CREDS["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=_CREDS["AWS_SESSION_TOKEN"],
        )


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server for the whole test session; tests use distinct bucket names."""
    with MotoServer.start() as server:
        yield server
