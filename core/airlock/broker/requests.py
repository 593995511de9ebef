"""The one request-parsing layer of the broker: every route reads its input through here.

- :func:`read_body` refuses a body over its cap before reading it when ``Content-Length`` says
  so, and otherwise stops reading at the cap (the memory a request can take is bounded);
- :func:`read_json` also refuses JSON nested deeper than :data:`MAX_DEPTH` (before parsing: a
  deep ``[[[[…`` would otherwise exhaust the recursion limit) and anything that is not JSON;
- :func:`bearer` reads ``Authorization: Bearer …``.

Each failure is a :class:`BadRequest` with a stable reason code and an HTTP status (4xx); the app
maps it to ``{"error": code, "message": …}``. Nothing here logs or echoes the input.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from starlette.requests import Request

from airlock.errors import UsageError

__all__ = [
    "MAX_DEPTH",
    "BadRequest",
    "bearer",
    "check_depth",
    "check_session_id",
    "loads",
    "read_body",
    "read_json",
]

MAX_DEPTH = 64
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SESSION_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class BadRequest(UsageError):
    """Input the broker refuses: ``code`` is stable (docs), ``status`` the HTTP status."""

    def __init__(self, message: str, *, code: str = "bad-request", status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


async def read_body(request: Request, cap: int) -> bytes:
    """The request body, at most ``cap`` bytes; :class:`BadRequest` (413) beyond."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isascii() or not declared.isdigit():
            raise BadRequest("Content-Length is not a number")
        if int(declared) > cap:
            raise _too_large(cap)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise _too_large(cap)
    return bytes(body)


async def read_json(request: Request, cap: int) -> Any:
    """The body as JSON (see :func:`loads`), at most ``cap`` bytes."""
    return loads(await read_body(request, cap))


def loads(raw: bytes) -> Any:
    """JSON from ``raw``, refusing nesting deeper than :data:`MAX_DEPTH` before parsing."""
    check_depth(raw)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("the request body is not JSON", code="not-json") from None


def check_depth(raw: bytes, limit: int = MAX_DEPTH) -> None:
    """:class:`BadRequest` when JSON ``raw`` nests arrays/objects deeper than ``limit``."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if len(brackets) <= limit:
        return
    deepest = max(itertools.accumulate(_STEP[b] for b in brackets))
    if deepest > limit:
        raise BadRequest(f"JSON nested deeper than {limit} levels", code="too-deep")


def bearer(request: Request) -> str:
    """The bearer token of ``Authorization``; :class:`BadRequest` (401) when there is none."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise BadRequest(
            "send the token as `Authorization: Bearer …`", code="unauthenticated", status=401
        )
    return value.strip()


def check_session_id(value: str) -> str:
    """A session id from a path: 1-128 of ``[A-Za-z0-9._-]``."""
    if not _SESSION_ID.fullmatch(value):
        raise BadRequest("a session id is 1-128 characters of A-Z a-z 0-9 . _ -")
    return value


def _too_large(cap: int) -> BadRequest:
    return BadRequest(
        f"request bodies here are limited to {cap} bytes", code="too-large", status=413
    )
