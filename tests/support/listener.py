"""A local TCP listener that answers every request with one fixed HTTP response and keeps
what reached it: how the attack tests tell whether anything got through."""

from __future__ import annotations

import contextlib
import socket
import threading


class Listener:
    """Accepts on 127.0.0.1 (a free port), keeps each request's first bytes, answers."""

    def __init__(self, body: bytes = b"ok", content_type: str = "text/plain") -> None:
        self.heads: list[bytes] = []
        self._answer = (
            b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (content_type.encode(), len(body), body)
        )
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def hits(self) -> int:
        """How many requests reached it."""
        return len(self.heads)

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._server.accept()
                with conn:
                    conn.settimeout(5)
                    with contextlib.suppress(OSError):
                        self.heads.append(conn.recv(65536))
                        conn.sendall(self._answer)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
