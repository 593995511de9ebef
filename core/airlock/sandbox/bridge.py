"""Host side of the network bridge: a Unix socket per host TCP endpoint, in a private directory
that is bind-mounted into the sandbox, where the relay (``_relay.py``) listens on 127.0.0.1 at
the same port and forwards each connection here.

Why Unix sockets and not a veth pair: no root or CAP_NET_ADMIN on the host, no routes or NAT to
get right, and nothing but the listed endpoints is reachable: the sandbox's network namespace
has only a loopback device.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import threading
from pathlib import Path

__all__ = ["Bridge"]

_CHUNK = 65536


class Bridge:
    """Accept on ``<dir>/<port>.sock`` and connect each client to ``(host, port)`` on the host."""

    def __init__(self, endpoints: list[tuple[str, int]]) -> None:
        self.dir = tempfile.mkdtemp(prefix="airlock-bridge-")  # 0700
        self.pairs: list[tuple[int, str]] = []
        self._listeners: list[socket.socket] = []
        self._closed = threading.Event()
        try:
            for host, port in dict.fromkeys(endpoints):
                self._add(host, port)
        except BaseException:
            self.close()
            raise

    def _add(self, host: str, port: int) -> None:
        name = f"{port}.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(Path(self.dir, name)))
        listener.listen(128)
        self._listeners.append(listener)
        self.pairs.append((port, name))
        threading.Thread(
            target=self._accept,
            args=(listener, host, port),
            name=f"airlock-bridge-{port}",
            daemon=True,
        ).start()

    def _accept(self, listener: socket.socket, host: str, port: int) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_serve, args=(conn, host, port), daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        for listener in self._listeners:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _serve(conn: socket.socket, host: str, port: int) -> None:
    with conn:
        try:
            upstream = socket.create_connection((host, port), timeout=10)
        except OSError:
            return
        with upstream:
            upstream.settimeout(None)
            back = threading.Thread(target=_copy, args=(upstream, conn), daemon=True)
            back.start()
            _copy(conn, upstream)
            back.join()


def _copy(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(_CHUNK):
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
    with contextlib.suppress(OSError):
        src.shutdown(socket.SHUT_RD)
