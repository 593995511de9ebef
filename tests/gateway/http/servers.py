"""Real servers for the HTTP gateway tests: a local upstream app and a uvicorn runner."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

Scope = dict[str, Any]

SECRET_IN_RESPONSE = "ghp_" + "Z9y8X7w6V5" * 3 + "abcdef"


async def _body(receive: Any) -> bytes:
    data = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return data
        data += message.get("body", b"")
        if not message.get("more_body"):
            return data


async def _reply(
    send: Any,
    status: int,
    body: bytes,
    ctype: bytes = b"application/json",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", ctype),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def upstream_app(scope: Scope, receive: Any, send: Any) -> None:
    """Echo and test endpoints: what the upstream saw is what the tests check."""
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    raw_path: bytes = scope.get("raw_path") or path.encode()
    if path.startswith("/stream/"):
        await _stream(send, int(path.rsplit("/", 1)[1]))
        return
    if path == "/slow":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        for _ in range(5):
            await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
            await asyncio.sleep(0.1)
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/slow-echo":  # the credential it received, sent back in slow pieces
        auth = dict(scope["headers"]).get(b"authorization", b"")
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        step = max(1, len(auth) // 4)
        for i in range(0, len(auth), step):
            await send(
                {"type": "http.response.body", "body": auth[i : i + step], "more_body": True}
            )
            await asyncio.sleep(0.15)
        await send({"type": "http.response.body", "body": b"\n"})
        return
    if path == "/secret-json":
        doc = {
            "user": {"name": "ann", "password": "hunter2-pass"},
            "token": SECRET_IN_RESPONSE,
            "items": [{"api_key": "k-123456"}],
        }
        await _reply(send, 200, json.dumps(doc).encode())
        return
    if path == "/escaped-json":  # the secret written with JSON unicode escapes, as some APIs do
        escaped = "".join(f"\\u{ord(c):04x}" for c in SECRET_IN_RESPONSE[:2])
        token = escaped + SECRET_IN_RESPONSE[2:]
        doc = '{"token": "' + token + '", "quote": "\\u0022", "pair": "\\ud83d\\ude00"}'
        await _reply(send, 200, doc.encode())
        return
    if path == "/gzip":
        await _reply(
            send,
            200,
            gzip.compress(json.dumps({"hello": "world " * 50}).encode()),
            extra=[(b"content-encoding", b"gzip")],
        )
        return
    if path == "/binary":
        await _reply(send, 200, bytes(range(256)) * 4, ctype=b"application/octet-stream")
        return
    body = await _body(receive)
    echo = {
        "method": scope["method"],
        "path": path,
        "raw_path": raw_path.decode("latin-1"),
        "query": scope["query_string"].decode("latin-1"),
        "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
        # what arrived, as hashes: the gateway masks an echoed credential in text responses
        "header_sha256": {
            k.decode("latin-1"): hashlib.sha256(v).hexdigest() for k, v in scope["headers"]
        },
        "body_size": len(body),
        "body": body.decode("utf-8", "replace")[:4096],
    }
    await _reply(send, 200, json.dumps(echo).encode())


async def _stream(send: Any, size: int) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/octet-stream")],
        }
    )
    chunk = b"x" * 65536
    left = size
    while left > 0:
        part = chunk[: min(left, len(chunk))]
        left -= len(part)
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


class ThreadedServer:
    """An ASGI app under uvicorn in a background thread, on 127.0.0.1:port."""

    def __init__(self, app: Any, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_config=None, lifespan="off", access_log=False)
        )
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self.server.config.load()
        self.server.lifespan = self.server.config.lifespan_class(self.server.config)

        async def main() -> None:
            await self.server.startup(sockets=[self.sock])
            await self.server.main_loop()
            await self.server.shutdown(sockets=[self.sock])

        loop.run_until_complete(main())
        loop.close()

    def start(self) -> ThreadedServer:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("upstream server failed to start")
            threading.Event().wait(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@contextmanager
def serving(app: Any, port: int = 0) -> Iterator[ThreadedServer]:
    server = ThreadedServer(app, port).start()
    try:
        yield server
    finally:
        server.stop()
