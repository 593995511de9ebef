"""HTTP plumbing of the model gateway: the upstream request, reading and answering over ASGI.

Nothing here decides anything; ``proxy.py`` does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

__all__ = [
    "MAX_BODY",
    "Receive",
    "Refusal",
    "Scope",
    "Send",
    "Upstream",
    "bearer",
    "headers_of",
    "plain_path",
    "read_body",
    "read_capped",
    "respond",
    "start",
]

MAX_BODY = 32 * 1024 * 1024


class Refusal(Exception):
    """Answer with ``status`` and the provider's error shape; nothing (more) goes upstream."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


class Upstream:
    """``async with``: send the request, stream the response, map failures to a 502."""

    def __init__(self, client: httpx.AsyncClient, request: httpx.Request) -> None:
        self._client, self._request = client, request
        self._response: httpx.Response | None = None

    async def __aenter__(self) -> httpx.Response:
        try:
            self._response = await self._client.send(self._request, stream=True)
        except httpx.HTTPError as exc:
            raise Refusal(
                502, "api_error", f"the model API could not be reached ({type(exc).__name__})"
            ) from exc
        return self._response

    async def __aexit__(self, *exc: object) -> None:
        if self._response is not None:
            await self._response.aclose()


def headers_of(scope: Scope) -> dict[str, str]:
    return {
        bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1") for k, v in scope["headers"]
    }


def plain_path(path: str) -> bool:
    """No dot segments or backslashes: what is judged is what the upstream serves."""
    return "\\" not in path and not any(p in (".", "..") for p in path.split("/"))


def bearer(value: str) -> str:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def read_body(receive: Receive) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refusal(499, "api_error", "the client went away")
        body += message.get("body", b"")
        if len(body) > MAX_BODY:
            raise Refusal(413, "invalid_request_error", f"request body over {MAX_BODY} bytes")
        if not message.get("more_body", False):
            return bytes(body)


async def read_capped(response: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_BODY:
            raise Refusal(502, "api_error", f"the model API answered with over {MAX_BODY} bytes")
    return bytes(body)


_RESPONSE_HEADERS = ("content-type", "request-id", "x-request-id", "retry-after")


async def start(send: Send, status: int, headers: Mapping[str, str]) -> None:
    kept = [(k.encode(), headers[k].encode()) for k in _RESPONSE_HEADERS if k in headers]
    await send({"type": "http.response.start", "status": status, "headers": kept})


async def respond(
    send: Send,
    status: int,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    quiet: bool = False,
) -> None:
    try:
        kept = {"content-type": "application/json"} | {
            k: v for k, v in (headers or {}).items() if k in _RESPONSE_HEADERS
        }
        kept["content-length"] = str(len(body))
        await start(send, status, kept)
        await send({"type": "http.response.body", "body": body, "more_body": False})
    except Exception:
        if not quiet:
            raise
