"""Local servers the egress tests reach through the proxy: static HTTPS, an echoing plain-HTTP
server, and git's smart HTTP (git http-backend) behind TLS. All on 127.0.0.1, port 0."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["EchoHandler", "GitHandler", "serve"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return


class EchoHandler(http.server.BaseHTTPRequestHandler):
    """Answers every method with ``METHOD PATH HOST BODY-LENGTH`` as text."""

    protocol_version = "HTTP/1.1"
    seen: list[str]

    def log_message(self, format: str, *args: object) -> None:
        return

    def _echo(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append(f"{self.command} {self.path}")  # type: ignore[attr-defined]
        text = f"{self.command} {self.path} {self.headers.get('Host')} {len(body)}\n".encode()
        proxy_auth = self.headers.get("Proxy-Authorization")
        if proxy_auth is not None:
            text += b"proxy-authorization leaked\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)
        # Like a careless server, read on after "Connection: close": a request smuggled behind
        # the first one would be served, so the proxy must never pass it on.
        self.close_connection = False

    do_GET = do_POST = do_PUT = do_DELETE = _echo  # noqa: N815


class GitHandler(http.server.BaseHTTPRequestHandler):
    """git's smart HTTP protocol through ``git http-backend`` (CGI)."""

    protocol_version = "HTTP/1.0"
    root: str

    def log_message(self, format: str, *args: object) -> None:
        return

    def _cgi(self) -> None:
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": self.server.root,  # type: ignore[attr-defined]
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": "127.0.0.1",
        }
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=True
        ).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.split(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _cgi  # noqa: N815


@contextlib.contextmanager
def serve(
    handler: type[http.server.BaseHTTPRequestHandler] | None = None,
    *,
    directory: Path | None = None,
    tls: ssl.SSLContext | None = None,
    git_root: Path | None = None,
) -> Iterator[http.server.ThreadingHTTPServer]:
    """A threading HTTP(S) server on 127.0.0.1:0; ``server.server_address[1]`` is its port."""
    if handler is None:
        handler = functools.partial(_Quiet, directory=str(directory))  # type: ignore[assignment]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # type: ignore[arg-type]
    server.daemon_threads = True
    server.seen = []  # type: ignore[attr-defined]
    if git_root is not None:
        server.root = str(git_root)  # type: ignore[attr-defined]
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
