"""A real git smart-HTTP server for the tests: `git http-backend` (CGI) behind a small ASGI app.

It serves the bare repositories under ``root`` and, like a forge, demands basic auth with one
user and password: a request that reaches it without the gateway's held credential gets 401.
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

__all__ = ["GitHttpBackend"]


class GitHttpBackend:
    """ASGI app: every request is one run of ``git http-backend``."""

    def __init__(self, root: Path, user: str, password: str) -> None:
        self.root = root
        self._expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.seen: list[tuple[str, str, str]] = []  # (method, path, authorization)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in scope["headers"]}
        auth = headers.get("authorization", "")
        self.seen.append((scope["method"], scope["path"], auth))
        if auth != self._expected:
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"www-authenticate", b'Basic realm="git"'),
                        (b"content-length", b"0"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, out_headers, out = await self._cgi(scope, headers, body)
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": out})

    async def _cgi(
        self, scope: dict[str, Any], headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": scope["method"],
            "PATH_INFO": scope["path"],
            "QUERY_STRING": scope["query_string"].decode(),
            "CONTENT_TYPE": headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "agent",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_CONTENT_ENCODING": headers.get("content-encoding", ""),
            "GIT_PROTOCOL": headers.get("git-protocol", ""),
            "HOME": str(self.root),
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        proc = await asyncio.create_subprocess_exec(
            "git",
            "http-backend",
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate(body)
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        out_headers = []
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"status":
                status = int(value.strip().split()[0])
            elif name:
                out_headers.append((name.strip().lower(), value.strip()))
        out_headers.append((b"content-length", str(len(payload)).encode()))
        return status, out_headers, payload
