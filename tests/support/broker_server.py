"""Run the broker's ASGI app under uvicorn on 127.0.0.1 in a background thread."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

import uvicorn
from starlette.applications import Starlette


class BrokerServer:
    """``with BrokerServer(app) as server: server.url`` — a real socket, a real HTTP stack."""

    def __init__(self, app: Starlette) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", ws="none")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self.url = ""

    def __enter__(self) -> BrokerServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the broker did not start")
            time.sleep(0.005)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def start_broker_process(
    argv: list[str], home: Path, timeout: float = 60.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``airlock broker serve`` (``argv`` after the program, with ``--port`` set to a free
    port here) in its own process; returns it and its URL once ``/healthz`` answers."""
    import httpx
    from tests.support.moto_server import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "airlock._cli", *argv, "--port", str(port)],
        env={**os.environ, "XDG_CONFIG_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the broker did not start"
        time.sleep(0.1)
