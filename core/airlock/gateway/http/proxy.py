"""The HTTP gateway's ASGI application: a reverse proxy to one upstream.

Per request, in this order:

1. the ticket is checked (``Authorization``/``Proxy-Authorization``: Bearer, or Basic with the
   ticket as password, as git sends it); missing or wrong → 401/407, recorded;
2. the path is normalised (``paths.py``): what is judged is what is sent;
3. the guardrails decide on method, path, host and — when a rule needs it — the JSON body;
4. ``http.request`` and ``guardrail.decision`` are recorded (fail closed: a request that cannot
   be recorded is refused with 503 and never forwarded);
5. deny → 403 naming the rule; require_approval → held until ``approve(op)`` answers;
6. client auth is stripped, the held credential injected, and the body streamed upstream;
7. the response streams back and ``http.response`` records status, size, duration and the first
   ``record_bodies`` bytes of the body, masked.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import itertools
import json
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from airlock.events import EventType
from airlock.gate.interface import EXPIRED as GATE_EXPIRED
from airlock.gate.interface import Decider, Operation
from airlock.gateway.http.capture import BodyTap, masked_headers, render_body, render_prefix
from airlock.gateway.http.credentials import Injector
from airlock.gateway.http.hold import (
    APPROVED,
    CLIENT_GONE,
    DENIED,
    EXPIRED,
    SESSION_ENDED,
    Action,
    Ask,
    Cancel,
    Forward,
    Gone,
    Hold,
    Outcome,
    Pass,
    Refuse,
)
from airlock.gateway.http.jsonmask import JsonFieldMasker
from airlock.gateway.http.paths import NormalPath, join_upstream, normalize_path
from airlock.gateway.tickets import TicketCheck
from airlock.mask import Masker, MaskSettings, StreamMasker
from airlock.policy.gateways import HttpGatewayConfig
from airlock.policy.guardrails import (
    DEFAULT_RULE_IDS,
    Decision,
    GuardrailDefaults,
    GuardrailRule,
    HttpRequestInfo,
    decide_http,
    describe_json_body,
    strictest,
)

__all__ = ["HttpProxy", "ProxySettings"]

Record = Callable[[str, Mapping[str, Any]], object]
Approve = Callable[[Operation], Awaitable[bool]]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "host",
    }
)
REQUEST_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "content-type",
        "content-length",
        "content-encoding",
        "user-agent",
        "git-protocol",
        "x-github-api-version",
        "x-request-id",
        "if-match",
        "if-none-match",
    }
)
RESPONSE_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "content-encoding",
        "etag",
        "location",
        "retry-after",
        "x-request-id",
        "x-github-request-id",
        "x-ratelimit-remaining",
        "x-amz-request-id",
    }
)
# Responses that can carry an echo of the credential as text (and are masked for the client).
_TEXT_TYPES = ("text/", "json", "xml", "javascript", "x-www-form-urlencoded", "yaml")
_APPROVAL_EXCERPT = 2000
_SPOOL_CHUNK = 256 * 1024
_IDLE_FLUSH = 0.1  # seconds of upstream quiet after which masked text held back is released
_NO_APPROVER = "no approval backend is configured"
_STOPPED = "gateway stopped"


@dataclass(frozen=True)
class ProxySettings:
    """Limits.

    ``inspect_limit``: the most body buffered in memory to judge JSON fields or to sign a
    payload. ``hold_limit``: the largest body held for approval (spooled to a private temporary
    file beyond ``inspect_limit``, e.g. a large git push). ``client_timeout``: seconds a client
    may stay silent while sending its body. ``mask_held_in_responses``: replace the held
    credential in text responses before the client sees them (an upstream that echoes it back
    cannot hand it to the agent).
    """

    inspect_limit: int = 8 * 1024 * 1024
    hold_limit: int = 1024 * 1024 * 1024
    client_timeout: float = 30.0
    mask_held_in_responses: bool = True


class _Refused(Exception):
    """Answer the client with ``status`` and a JSON error; nothing goes upstream."""

    def __init__(self, status: int, error: str, hint: str = "", **extra: Any) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.hint = hint
        self.extra = extra


class _ClientGone(Exception):
    """The client disconnected or went silent."""


@dataclass
class _Exchange:
    """One request's state as it moves through the proxy."""

    id: str
    method: str
    path: NormalPath
    query: str
    headers: list[tuple[bytes, bytes]]
    started: float
    request_tap: BodyTap
    responded: bool = False
    request_recorded: bool = False
    forwarded: bool = False
    body: _Body | None = None
    hold: Hold | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str) -> str:
        wanted = name.encode()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return ""


class _Body:
    """The client's request body: a buffered prefix, then the rest, streamed on demand."""

    def __init__(self, receive: Receive, timeout: float) -> None:
        self._receive = receive
        self._timeout = timeout
        self.buffer = bytearray()
        self.done = False
        self.spool: Any = None  # a SpooledTemporaryFile holding the whole body, once held
        self.held_size = 0
        self.held_sha256 = ""

    async def hold(self, hold: Hold, in_memory: int) -> None:
        """Read the whole body into a spool (memory up to ``in_memory`` bytes, then a private
        temporary file), counted and hashed by ``hold``: the body forwarded later is exactly
        the one hashed here."""
        spool = tempfile.SpooledTemporaryFile(max_size=in_memory)  # noqa: SIM115 (closed in stream)
        self.spool = spool
        chunk = bytes(self.buffer)
        while True:
            spool.write(chunk)
            for action in hold.body(chunk):
                raise _refused(action, hold.rule_id)
            if self.done:
                break
            chunk = await self._next()
        self.held_size, self.held_sha256 = hold.size, hold.sha256

    def held_prefix(self, size: int) -> bytes:
        """The first ``size`` bytes of a held body."""
        self.spool.seek(0)
        data: bytes = self.spool.read(size)
        return data

    def close(self) -> None:
        """Drop the spool, if any."""
        if self.spool is not None:
            self.spool.close()

    async def _next(self) -> bytes:
        try:
            message = await asyncio.wait_for(self._receive(), self._timeout)
        except TimeoutError as exc:
            raise _Refused(
                408,
                "the client went silent while sending its body",
                "send the body without pauses longer than the client timeout",
            ) from exc
        if message["type"] == "http.disconnect":
            raise _ClientGone("client disconnected")
        self.done = not message.get("more_body", False)
        return bytes(message.get("body", b""))

    async def fill(self, limit: int) -> None:
        """Buffer until ``limit`` bytes (or a little more) or the end of the body."""
        while not self.done and len(self.buffer) < limit:
            self.buffer += await self._next()

    async def watch_disconnect(self, gone: asyncio.Event) -> None:
        """Once the body is read, the next message is the disconnect: flag it."""
        if not self.done:
            return
        await self.disconnected()
        gone.set()

    async def disconnected(self) -> None:
        """Return when the client has gone (call once the body is read whole)."""
        while (await self._receive())["type"] != "http.disconnect":
            pass

    def summary(self) -> dict[str, Any]:
        """Size and SHA-256 of the body as far as the gateway read it (for a refusal)."""
        data: dict[str, Any] = {
            "size": len(self.buffer),
            "sha256": hashlib.sha256(self.buffer).hexdigest(),
        }
        return data if self.done else data | {"complete": False}

    async def stream(self, tap: BodyTap) -> AsyncIterator[bytes]:
        """The whole body: the held spool, or the buffer then the rest as it arrives."""
        if self.spool is not None:
            self.spool.seek(0)
            while chunk := self.spool.read(_SPOOL_CHUNK):
                tap.feed(chunk)
                yield chunk
            return
        if self.buffer:
            tap.feed(bytes(self.buffer))
            yield bytes(self.buffer)
        while not self.done:
            chunk = await self._next()
            if chunk:
                tap.feed(chunk)
                yield chunk


class _EchoMask:
    """Masks the held credential in a text response as it streams. Output is held only while it
    might be the start of the credential, and released at least every ``_IDLE_FLUSH`` seconds,
    so a slow trickle (progress lines, server-sent events) still arrives promptly."""

    def __init__(self, stream: StreamMasker) -> None:
        self._stream = stream
        self._released = time.monotonic()

    def feed(self, chunk: bytes) -> bytes:
        out = self._stream.feed(chunk)
        if not out and time.monotonic() - self._released >= _IDLE_FLUSH:
            out = self._stream.flush_idle()
        if out:
            self._released = time.monotonic()
        return out

    def idle(self) -> bytes:
        out = self._stream.flush_idle()
        self._released = time.monotonic()
        return out

    def flush(self) -> bytes:
        return self._stream.flush()


class HttpProxy:
    """ASGI app proxying to ``config.upstream`` with the held credential (see module doc)."""

    def __init__(
        self,
        config: HttpGatewayConfig,
        *,
        masker: Masker,
        record: Record,
        approve: Approve | None,
        ticket: TicketCheck,
        injector: Injector,
        client: httpx.AsyncClient,
        rules: Sequence[GuardrailRule] = (),
        defaults: GuardrailDefaults | None = None,
        settings: ProxySettings | None = None,
    ) -> None:
        self.config = config
        self._masker = masker
        self._record = record
        self._approve = approve
        self._ticket = ticket
        self._injector = injector
        self._client = client
        self._rules = tuple(rules)
        self._defaults = defaults or GuardrailDefaults()
        self._settings = settings or ProxySettings()
        self._fields = JsonFieldMasker(config.mask_json_fields)
        self._needs_json = any(r.http is not None and r.http.json_body for r in self._rules)
        upstream = urlsplit(config.upstream)
        self._origin = f"{upstream.scheme}://{upstream.netloc}"
        self._base_path = upstream.path
        self._host = (upstream.hostname or "").lower()
        self._ids = itertools.count(1)
        self._holds: set[asyncio.Future[tuple[Outcome, str]]] = set()
        self._echo = (
            _echo_masker(injector, config.name) if self._settings.mask_held_in_responses else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._handle(scope, receive, send)

    # ------------------------------------------------------------------ request lifecycle

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex = self._exchange(scope)
        body = _Body(receive, self._settings.client_timeout)
        ex.body = body
        try:
            await self._steps(ex, body, send)
        finally:
            body.close()

    async def _steps(self, ex: _Exchange, body: _Body, send: Send) -> None:
        try:
            self._authenticate(ex)
            decision = await self._judge(ex, body)
            await body.fill(self.config.record_bodies)
            self._record_request(ex, decision, body)
            await self._enforce(ex, decision, body)
            await self._forward(ex, body, send)
        except _Refused as refusal:
            await self._refuse(ex, refusal, send)
        except _ClientGone as gone:
            self._safe_record_response(ex, 499, error=str(gone))
        except asyncio.CancelledError:  # the server is going away: say so, then let it go
            self._safe_record_response(ex, 503, error="the gateway stopped during the request")
            raise
        except Exception as exc:  # a bug: answer 500 and record it, but never echo the message
            await self._internal_error(ex, exc, send)

    async def _internal_error(self, ex: _Exchange, exc: Exception, send: Send) -> None:
        what = f"internal error in the gateway ({type(exc).__name__})"
        if ex.responded:
            self._safe_record_response(ex, 500, error=what)
            return
        await self._refuse(
            ex, _Refused(500, what, "this is a bug in Airlock: please report it"), send
        )

    def _exchange(self, scope: Scope) -> _Exchange:
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        raw_path = raw_path.split(b"?", 1)[0]
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        return _Exchange(
            id=str(next(self._ids)),
            method=str(scope["method"]),
            path=normalize_path(raw_path),
            query=query,
            headers=[(bytes(k), bytes(v)) for k, v in scope.get("headers", [])],
            started=time.perf_counter(),
            request_tap=BodyTap(self.config.record_bodies),
        )

    def _authenticate(self, ex: _Exchange) -> None:
        proxy = ex.header("proxy-authorization")
        presented = _ticket_from(proxy) or _ticket_from(ex.header("authorization"))
        if presented is not None and self._ticket.check(presented):
            return
        status = 407 if proxy else 401
        outcome = "missing" if presented is None else "wrong"
        self._record_request(ex, None, auth=outcome)
        raise _Refused(
            status,
            f"{outcome} gateway ticket",
            "send the session ticket as a bearer token, or as the password of basic auth "
            "(e.g. http://airlock:TICKET@host/…)",
            auth=outcome,
        )

    async def _judge(self, ex: _Exchange, body: _Body) -> Decision:
        # Any method may carry a body (GET included, as Elasticsearch does): all are inspected.
        document = await self._inspect_json(ex, body) if self._needs_json else None
        decisions = (
            decide_http(
                HttpRequestInfo(ex.method, path, self._host, document), self._rules, self._defaults
            )
            for path in ex.path.candidates
        )
        decision = strictest(decisions)
        assert decision is not None  # a path has at least one reading
        return decision

    async def _inspect_json(self, ex: _Exchange, body: _Body) -> Any:
        await self._buffer_all(body, "checked against JSON guardrails")
        if body.buffer and ex.header("content-encoding").lower() not in ("", "identity"):
            raise _Refused(
                415,
                "an encoded request body cannot be checked against JSON guardrails",
                "send the body without Content-Encoding",
            )
        return describe_json_body(bytes(body.buffer)) if body.buffer else None

    async def _buffer_all(self, body: _Body, why: str) -> None:
        limit = self._settings.inspect_limit
        await body.fill(limit + 1)
        if not body.done or len(body.buffer) > limit:
            raise _Refused(
                413,
                f"request body larger than {limit} bytes cannot be {why}",
                "send a smaller body, or ask for the limit to be raised",
            )

    async def _enforce(self, ex: _Exchange, decision: Decision, body: _Body) -> None:
        if decision.action == "allow":
            return
        if decision.action == "deny":
            raise _Refused(
                403,
                f"refused by guardrail {decision.rule_id}",
                "this request is not allowed by the session policy; see the rule in airlock.yaml",
                rule_id=decision.rule_id,
            )
        limit = self._settings.hold_limit
        if self._injector.needs_body:  # the signature needs the body in memory anyway
            await self._buffer_all(body, "held for approval and signed")
            limit = self._settings.inspect_limit
        hold = Hold(ex.method, ex.path, ex.query, decision.rule_id, limit=limit)
        ex.hold = hold
        await body.hold(hold, self._settings.inspect_limit)
        actions = hold.end(self._masker.mask_text(ex.query), self._excerpt(ex, body))
        await self._drive(ex, hold, actions)

    async def _drive(self, ex: _Exchange, hold: Hold, actions: list[Action]) -> None:
        """Carry out the hold's actions until it forwards (return) or refuses (raise)."""
        while actions:
            action, *actions = actions
            if isinstance(action, Forward):
                return
            if isinstance(action, Pass):
                ex.extra["approval"] = action.why
            elif isinstance(action, Ask):
                actions += await self._ask(ex, hold, action.text)
            elif isinstance(action, Cancel):
                ex.extra["approval"] = f"cancelled: {action.reason}"
            elif isinstance(action, Gone):
                raise _ClientGone(action.why)
            elif isinstance(action, Refuse):
                raise _refused(action, hold.rule_id)
        raise AssertionError("a hold ended without forwarding or refusing")  # pragma: no cover

    async def _ask(self, ex: _Exchange, hold: Hold, text: str) -> list[Action]:
        """Ask while watching the client; what the hold makes of the first thing to happen."""
        if self._approve is None:
            ex.extra["approval"] = _NO_APPROVER
            return hold.decided(DENIED)
        op = Operation(
            kind="http",
            text=text,
            rule_id=hold.rule_id,
            gateway=self.config.name,
            session_id=self._ticket.session_id,
        )
        asking = asyncio.ensure_future(self._decide(op))
        gone = asyncio.ensure_future(ex.body.disconnected() if ex.body else asyncio.Event().wait())
        self._holds.add(asking)
        try:
            await asyncio.wait({asking, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            asking.cancel(_STOPPED)
            raise
        finally:
            self._holds.discard(asking)
            gone.cancel()
        if asking.cancelled():  # cancel_holds(): the session is ending
            return hold.session_ended()
        if not asking.done():  # the client left first: the request must never go upstream
            actions = hold.client_gone()
            asking.cancel(CLIENT_GONE)
            await asyncio.wait({asking})
            return actions
        outcome, why = asking.result()
        if why:
            ex.extra["approval"] = why
        return hold.decided(outcome)

    async def _decide(self, op: Operation) -> tuple[Outcome, str]:
        """The outcome and, when it is not plain, why. A broken approval path denies."""
        try:
            decider: object = self._approve  # an Approver also says why (Decider)
            if isinstance(decider, Decider):
                verdict = await decider.decide(op)
                if verdict.approved:
                    return APPROVED, ""
                return (EXPIRED if verdict.reason == GATE_EXPIRED else DENIED), verdict.reason
            assert self._approve is not None
            return (APPROVED if await self._approve(op) else DENIED), ""
        except Exception as exc:  # it never lets a request through
            return DENIED, f"approval failed: {type(exc).__name__}"

    def cancel_holds(self, reason: str = SESSION_ENDED) -> int:
        """Cancel every request held for approval (the session is ending): each is refused with
        503 and recorded, and its approval request is cancelled. Returns how many."""
        holds = list(self._holds)
        for task in holds:
            task.cancel(reason)
        return len(holds)

    def _excerpt(self, ex: _Exchange, body: _Body) -> str | None:
        if not body.held_size:
            return None
        shown = render_prefix(
            body.held_prefix(_APPROVAL_EXCERPT),
            cap=_APPROVAL_EXCERPT,
            truncated=body.held_size > _APPROVAL_EXCERPT,
            content_type=ex.header("content-type"),
            content_encoding=ex.header("content-encoding"),
            fields=self._fields,
            masker=self._masker,
        )
        return str(shown.get("body", f"({shown.get('body_omitted', 'not shown')})"))

    # ------------------------------------------------------------------ upstream

    async def _forward(self, ex: _Exchange, body: _Body, send: Send) -> None:
        if self._injector.needs_body:
            await self._buffer_all(body, "signed")
        if ex.hold is not None:  # the approval is spent on this request, and only this one
            ex.hold.forward(ex.method, ex.path, ex.query, body.held_sha256)
        request = self._upstream_request(ex, body)
        ex.forwarded = True
        try:
            response = await self._client.send(request, stream=True)
        except _ClientGone:
            raise
        except httpx.TimeoutException as exc:
            raise _Refused(
                504, "upstream timed out", "check the upstream", upstream=_why(exc)
            ) from None
        except httpx.HTTPError as exc:
            raise _Refused(
                502, "upstream unreachable", "check the upstream URL", upstream=_why(exc)
            ) from None
        gone = asyncio.Event()
        watcher = asyncio.create_task(body.watch_disconnect(gone))
        try:
            await self._relay(ex, response, send, gone)
        finally:
            watcher.cancel()
            await response.aclose()

    def _upstream_request(self, ex: _Exchange, body: _Body) -> httpx.Request:
        url = self._origin + join_upstream(self._base_path, ex.path.wire)
        if ex.query:
            url += "?" + ex.query
        # the whole body is in memory: read without a hold, or held but small enough to sign
        buffered = body.done and (body.spool is None or len(body.buffer) == body.held_size)
        drop = _HOP_BY_HOP | self._injector.strip | ({"content-length"} if buffered else set())
        headers = [(k, v) for k, v in ex.headers if k.decode("latin-1").lower() not in drop]
        content: bytes | AsyncIterator[bytes]
        if buffered:
            content = bytes(body.buffer)
            ex.request_tap.feed(content)
        else:
            content = body.stream(ex.request_tap)
        if self._echo is not None:  # text responses are masked: they must arrive uncompressed
            headers = [(k, v) for k, v in headers if k.lower() != b"accept-encoding"]
            headers.append((b"accept-encoding", b"identity"))
        request = self._client.build_request(ex.method, url, headers=headers, content=content)
        self._injector.apply(request, content if isinstance(content, bytes) else None)
        return request

    async def _relay(
        self, ex: _Exchange, response: httpx.Response, send: Send, gone: asyncio.Event
    ) -> None:
        echo = self._echo_stream(ex, response)
        drop = _HOP_BY_HOP | ({"content-length"} if echo is not None else set())
        headers = [
            (k, v) for k, v in response.headers.raw if k.decode("latin-1").lower() not in drop
        ]
        start = {"type": "http.response.start", "status": response.status_code, "headers": headers}
        tap = BodyTap(self.config.record_bodies)
        # The response is recorded before its last byte is sent: once the client has the whole
        # response, so has the log. A bodiless response is complete with its headers.
        if ex.method == "HEAD" or response.status_code in (204, 304):
            last, error = await self._pump(response, _discard, tap, None, gone)
            self._record_relay(ex, response, tap, error, echo)
            ex.responded = True
            await send(start)
        else:
            ex.responded = True
            await send(start)
            last, error = await self._pump(response, send, tap, echo, gone)
            self._record_relay(ex, response, tap, error, echo)
        if error is None:
            await send({"type": "http.response.body", "body": last, "more_body": False})

    async def _pump(
        self,
        response: httpx.Response,
        send: Send,
        tap: BodyTap,
        echo: _EchoMask | None,
        gone: asyncio.Event,
    ) -> tuple[bytes, str | None]:
        """Relay the body; return the bytes held back for the last message, and any error."""
        # With a Content-Length the last chunk is known by its size and held back.
        length = _content_length(response) if echo is None else None
        last = b""
        chunks = response.aiter_raw()
        try:
            while (chunk := await self._next_chunk(chunks, echo, send)) is not None:
                if gone.is_set():
                    return b"", "client disconnected mid-response"
                tap.feed(chunk)
                if length is not None and tap.size >= length:
                    last = chunk  # held back; the loop still drains so the connection is reused
                    continue
                out = chunk if echo is None else echo.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
        except httpx.HTTPError as exc:
            return b"", f"upstream failed mid-response: {_why(exc)}"
        return (last if echo is None else echo.flush()), None

    async def _next_chunk(
        self, chunks: AsyncIterator[bytes], echo: _EchoMask | None, send: Send
    ) -> bytes | None:
        """The next upstream chunk, or None at the end. While the upstream is quiet, text the
        echo masker holds is released (all but a possible start of the credential)."""
        if echo is None:
            return await anext(chunks, None)
        pending = asyncio.ensure_future(anext(chunks, None))
        try:
            while True:
                done, _ = await asyncio.wait({pending}, timeout=_IDLE_FLUSH)
                if done:
                    return pending.result()
                if out := echo.idle():
                    await send({"type": "http.response.body", "body": out, "more_body": True})
        finally:
            pending.cancel()

    def _record_relay(
        self,
        ex: _Exchange,
        response: httpx.Response,
        tap: BodyTap,
        error: str | None,
        echo: _EchoMask | None,
    ) -> None:
        self._safe_record_response(
            ex,
            response.status_code,
            tap=tap,
            headers=response.headers.raw,
            content_type=response.headers.get("content-type", ""),
            content_encoding=response.headers.get("content-encoding", ""),
            error=error,
            **({"client_masked": True} if echo is not None else {}),
        )

    def _echo_stream(self, ex: _Exchange, response: httpx.Response) -> _EchoMask | None:
        if self._echo is None or ex.method == "HEAD":
            return None
        ctype = response.headers.get("content-type", "").lower()
        encoded = response.headers.get("content-encoding", "").lower() not in ("", "identity")
        if encoded or not any(kind in ctype for kind in _TEXT_TYPES):
            return None
        return _EchoMask(self._echo.stream())

    # ------------------------------------------------------------------ answers and events

    async def _refuse(self, ex: _Exchange, refusal: _Refused, send: Send) -> None:
        if not ex.request_recorded:  # refused while reading the body: the request is still logged
            with contextlib.suppress(_Refused):
                self._record_request(ex, None)
        payload = {"error": refusal.error, "gateway": self.config.name}
        if refusal.hint:
            payload["hint"] = refusal.hint
        if "rule_id" in refusal.extra:
            payload["rule_id"] = refusal.extra["rule_id"]
        data = json.dumps(payload).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
        ]
        if refusal.status == 401:
            headers.append(
                (b"www-authenticate", f'Basic realm="airlock {self.config.name}"'.encode())
            )
        elif refusal.status == 407:
            headers.append(
                (b"proxy-authenticate", f'Basic realm="airlock {self.config.name}"'.encode())
            )
        self._safe_record_response(ex, refusal.status, error=refusal.error, **refusal.extra)
        ex.responded = True
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": data, "more_body": False})

    def _record_request(
        self, ex: _Exchange, decision: Decision | None, body: _Body | None = None, **extra: Any
    ) -> None:
        data: dict[str, Any] = {
            "gateway": self.config.name,
            "id": ex.id,
            "method": ex.method,
            "path": self._masker.mask_text(ex.path.judged),
            "query": self._masker.mask_text(ex.query),
            "headers": masked_headers(ex.headers, REQUEST_HEADERS, self._masker),
            **extra,
        }
        if body is not None:
            data |= self._request_prefix(ex, body)
        ex.request_recorded = True
        self._emit(EventType.HTTP_REQUEST, data)
        if decision is not None and _worth_recording(decision):
            self._emit(
                EventType.GUARDRAIL,
                {
                    "gateway": self.config.name,
                    "kind": "http",
                    "id": ex.id,
                    "rule_id": decision.rule_id,
                    "action": decision.action,
                    "method": ex.method,
                    "path": data["path"],
                },
            )

    def _request_prefix(self, ex: _Exchange, body: _Body) -> dict[str, Any]:
        cap = self.config.record_bodies
        return render_prefix(
            bytes(body.buffer[:cap]),
            cap=cap,
            truncated=len(body.buffer) > cap or not body.done,
            content_type=ex.header("content-type"),
            content_encoding=ex.header("content-encoding"),
            fields=self._fields,
            masker=self._masker,
        )

    def _safe_record_response(
        self,
        ex: _Exchange,
        status: int,
        *,
        tap: BodyTap | None = None,
        headers: Sequence[tuple[bytes, bytes]] = (),
        content_type: str = "",
        content_encoding: str = "",
        error: str | None = None,
        **extra: Any,
    ) -> None:
        data: dict[str, Any] = {
            "gateway": self.config.name,
            "id": ex.id,
            "status": status,
            "duration_ms": round((time.perf_counter() - ex.started) * 1000, 3),
            "request_body": self._request_body(ex),
            **{k: v for k, v in extra.items() if k != "auth"},
            **ex.extra,
        }
        if tap is not None:
            data["headers"] = masked_headers(headers, RESPONSE_HEADERS, self._masker)
            data["body"] = self._render(tap, content_type, content_encoding)
            data["size"] = tap.size
        if error is not None:
            data["error"] = self._masker.mask_text(error)
        # The request is over; a writer that failed reports it on the next event it cannot take.
        with contextlib.suppress(_Refused):
            self._emit(EventType.HTTP_RESPONSE, data)

    def _request_body(self, ex: _Exchange) -> dict[str, Any]:
        if ex.forwarded or ex.body is None:
            return {"size": ex.request_tap.size, "sha256": ex.request_tap.sha256}
        if ex.hold is None or not ex.hold.size:
            return ex.body.summary()  # refused before forwarding: what the gateway read of it
        data: dict[str, Any] = {"size": ex.hold.size, "sha256": ex.hold.sha256}
        return data if ex.body.done else data | {"complete": False}

    def _render(self, tap: BodyTap, content_type: str, content_encoding: str) -> dict[str, Any]:
        return render_body(
            tap,
            content_type=content_type,
            content_encoding=content_encoding,
            fields=self._fields,
            masker=self._masker,
        )

    def _emit(self, event: EventType, data: Mapping[str, Any]) -> None:
        try:
            self._record(str(event), data)
        except Exception as exc:
            raise _Refused(
                503,
                "the session log cannot be written; refused (fail closed)",
                "check the sessions directory",
            ) from exc


def _echo_masker(injector: Injector, gateway: str) -> Masker | None:
    if not injector.secrets:
        return None
    rule = f"gateway.{gateway}"
    literals = tuple((rule, value) for value in injector.secrets)
    return Masker(MaskSettings(literals=literals, builtin=False))


async def _discard(message: dict[str, Any]) -> None:
    return None


def _content_length(response: httpx.Response) -> int | None:
    raw = response.headers.get("content-length", "")
    return int(raw) if raw.isdigit() else None


def _refused(action: Action, rule_id: str) -> _Refused:
    assert isinstance(action, Refuse), action
    return _Refused(action.status, action.error, action.hint, rule_id=rule_id)


def _worth_recording(decision: Decision) -> bool:
    return decision.action != "allow" or decision.rule_id != DEFAULT_RULE_IDS["http_unmatched"]


def _ticket_from(header: str) -> str | None:
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if not value:
        return None
    if scheme in ("bearer", "token"):
        return value
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[2]
    return None


def _why(exc: BaseException) -> str:
    return type(exc).__name__
