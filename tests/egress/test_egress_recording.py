"""The proxy records from its own thread while the runner records output and processes: the
chain stays whole, no line is interleaved, and every attempt is in the sealed log — tunnels
still open when the agent ends included (they are closed and recorded before the seal)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.egress.test_egress_run import AIRLOCK, _events, _run, https_port
from tests.support.tls_ca import LocalCA

__all__ = ["https_port"]  # the fixture, shared with test_egress_run

ALLOWED, DENIED = 24, 8

# Opens a tunnel to a server that never answers nor closes, sends a ClientHello, hands the
# socket to a keeper outside the session, and exits: the tunnel is still open when the agent's
# command ends (as one held by a daemon would be), until the proxy closes it.
HOLD = """
import os, socket, ssl, sys
proxy = os.environ["HTTPS_PROXY"].rsplit(":", 1)
s = socket.create_connection((proxy[0].split("//")[1], int(proxy[1])))
s.sendall(b"CONNECT localhost:%s HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n" % sys.argv[1].encode())
print("HELD", s.recv(12).decode(), flush=True)
out = ssl.MemoryBIO()
tls = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), out, server_hostname="localhost")
try:
    tls.do_handshake()
except ssl.SSLWantReadError:
    pass
s.sendall(out.read())
keeper = socket.socket(socket.AF_UNIX)
keeper.connect(sys.argv[2])
socket.send_fds(keeper, [b"k"], [s.fileno()])
keeper.recv(1)
"""


@pytest.fixture
def keeper(tmp_path: Path) -> Iterator[Path]:
    """A Unix socket that takes a file descriptor and keeps it open until the test ends."""
    path = tmp_path / "keeper.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    kept: list[int] = []

    def keep() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn = server.accept()[0]
                kept.extend(socket.recv_fds(conn, 1, 1)[1])
                conn.sendall(b"k")
                conn.close()

    threading.Thread(target=keep, daemon=True).start()
    yield path
    server.close()
    for fd in kept:
        os.close(fd)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP server that accepts and then never sends nor closes (until the test ends)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for conn in held:
        conn.close()


def test_concurrent_connections_and_output_keep_one_whole_chain(
    tmp_path: Path, ca: LocalCA, https_port: int, silent_port: int, keeper: Path
) -> None:
    policy = (
        "capture: {exec: best_effort}\n"
        "network:\n"
        f"  allow: [{{id: local-site, host: localhost, ports: [{https_port}, {silent_port}], "
        "local_addresses: true}]\n"
    )
    shutil.copy(ca.path, tmp_path / "ca.pem")
    (tmp_path / "hold.py").write_text(HOLD)
    get = f"curl -sS --cacert ca.pem -o /dev/null https://localhost:{https_port}/hello.txt"
    deny = f"curl -sS -o /dev/null https://denied.example:{https_port}/ 2>/dev/null"
    script = (
        f"for i in $(seq {ALLOWED}); do {get} & done; "
        f"for i in $(seq {DENIED}); do {deny} & done; "
        "seq 1 20000; seq 1 5000 >&2; wait; "
        f"python3 hold.py {silent_port} {keeper}"
    )
    done = _run(tmp_path, policy, script)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "HELD HTTP/1.1 200" in done.stdout

    session, events = _events(tmp_path)
    assert [e["seq"] for e in events] == list(range(len(events)))  # one line per event
    net = [e["data"] for e in events if e["type"] == "net.connect"]
    outcomes = sorted(n["outcome"] for n in net)
    assert outcomes == ["allowed"] * (ALLOWED + 1) + ["denied"] * DENIED
    assert events[-1]["type"] == "session.end"  # nothing recorded after the end
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    verified = subprocess.run(
        [AIRLOCK, "verify", str(session)],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
