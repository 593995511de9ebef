"""gateway/h1/server.py runs one task per connection, not one per request: keep-alive requests
are answered in turn by the same task; a request that arrives while the app is still busy after
its previous response gets a task of its own (it is never stuck behind it)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from airlock.gateway.h1.cycle import CLIENT_GONE
from airlock.gateway.h1.server import H1Server

_OK = [(b"content-type", b"text/plain"), (b"content-length", b"2")]


async def _serve(app: Any) -> tuple[H1Server, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    server = H1Server(app)
    await server.start(sock)
    return server, sock.getsockname()[1]


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> bytes:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return await reader.readexactly(2)


def test_keep_alive_requests_share_the_connections_task() -> None:
    tasks: list[asyncio.Task[Any] | None] = []
    gone: list[bool] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        tasks.append(asyncio.current_task())
        gone.append(scope["extensions"][CLIENT_GONE]())
        await send({"type": "http.response.start", "status": 200, "headers": _OK})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main() -> None:
        server, port = await _serve(app)
        for _ in range(2):  # two connections, five requests each
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(5):
                assert await _get(reader, writer, "/") == b"ok"
            writer.close()
        await server.stop(grace=1)

    asyncio.run(main())
    assert len(tasks) == 10 and gone == [False] * 10
    assert len(set(map(id, tasks[:5]))) == 1 and len(set(map(id, tasks[5:]))) == 1
    assert tasks[0] is not tasks[5]


def test_a_request_is_not_held_behind_an_app_still_busy_after_its_response() -> None:
    order: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _OK})
        await send({"type": "http.response.body", "body": b"ok"})
        order.append(f"answered {scope['path']}")
        if scope["path"] == "/first":  # still running: until the next request has its answer
            while "answered /second" not in order:
                await asyncio.sleep(0.01)
            order.append("first finished")

    async def main() -> None:
        server, port = await _serve(app)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await _get(reader, writer, "/first") == b"ok"
        assert await asyncio.wait_for(_get(reader, writer, "/second"), 10) == b"ok"
        while "first finished" not in order:  # the first app ends too, in its own time
            await asyncio.sleep(0.01)
        writer.close()
        await server.stop(grace=5)

    asyncio.run(main())
    assert order == ["answered /first", "answered /second", "first finished"]


def test_a_connection_in_use_outlives_the_keep_alive_time_and_closes_once_idle() -> None:
    """The idle timer is moved on lazily: a connection that keeps sending requests stays open
    past the keep-alive time (counted from the last response), then closes when left idle."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _OK})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main() -> list[bytes]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        server = H1Server(app, keep_alive=0.6)
        await server.start(sock)
        reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        answers = []
        for _ in range(8):  # 1.6 s in all, a request every 0.2 s
            answers.append(await _get(reader, writer, "/"))
            await asyncio.sleep(0.2)
        answers.append(await asyncio.wait_for(reader.read(), 10))  # idle: closed by the server
        writer.close()
        await server.stop(grace=1)
        return answers

    assert asyncio.run(main()) == [b"ok"] * 8 + [b""]
