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

This module drives (I/O); the decisions and the parts live beside it: ``decide`` (I/O-free:
the path, the verdict, the refusals), ``paths`` (normalisation, the readings judged), ``hold``
(a held request, I/O-free: facts in, actions out), ``exchange`` (the request's state and body),
``recording`` (the events), ``upstream`` (send and relay); ``gateway/approvals.py`` asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from airlock.gate.interface import Operation
from airlock.gateway.approvals import SESSION_ENDED, Approvals
from airlock.gateway.h1.client import Pool
from airlock.gateway.h1.cycle import BODY_NOW, CLIENT_GONE, PEER_CLOSED, RESPOND
from airlock.gateway.http.capture import BodyTap, render_prefix
from airlock.gateway.http.credentials import Injector
from airlock.gateway.http.decide import (
    Verdicts,
    auth_refusal,
    denial,
    refusal_response,
    target_refusal,
)
from airlock.gateway.http.exchange import (
    ClientGone,
    Exchange,
    Refused,
    RequestBody,
    refused,
    ticket_from,
)
from airlock.gateway.http.hold import (
    Action,
    Ask,
    Cancel,
    Forward,
    Gone,
    Hold,
    Pass,
    Refuse,
)
from airlock.gateway.http.jsonmask import JsonFieldMasker
from airlock.gateway.http.recording import ExchangeLog
from airlock.gateway.http.upstream import Upstream
from airlock.gateway.tickets import Ticket, TicketCheck, check_ticket
from airlock.mask import Masker
from airlock.policy.gateways import HttpGatewayConfig
from airlock.policy.guardrails import (
    AmbiguousJson,
    Decision,
    GuardrailDefaults,
    GuardrailRule,
    describe_json_body,
)

__all__ = ["HttpProxy", "ProxySettings"]

Record = Callable[[str, Mapping[str, Any]], object]
Approve = Callable[[Operation], Awaitable[bool]]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_APPROVAL_EXCERPT = 2000


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
        pool: Pool,
        rules: Sequence[GuardrailRule] = (),
        defaults: GuardrailDefaults | None = None,
        settings: ProxySettings | None = None,
    ) -> None:
        self.config = config
        self._masker = masker
        self._ticket = ticket
        self._injector = injector
        self._rules = tuple(rules)
        self._defaults = defaults or GuardrailDefaults()
        self._settings = settings or ProxySettings()
        self._fields = JsonFieldMasker(config.mask_json_fields)
        self._log = ExchangeLog(config.name, config.record_bodies, masker, self._fields, record)
        self._needs_json = any(r.http is not None and r.http.json_body for r in self._rules)
        self._host = (urlsplit(config.upstream).hostname or "").lower()
        self._verdicts = Verdicts(self._host, self._rules, self._defaults)
        self._ids = itertools.count(1)
        self._local_ticket = ticket if isinstance(ticket, Ticket) else None
        self._approvals = Approvals(approve)
        self._upstream = Upstream(
            config,
            pool=pool,
            injector=injector,
            log=self._log,
            mask_echo=self._settings.mask_held_in_responses,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        ex = self._exchange(scope)
        extensions = scope.get("extensions") or {}
        body = RequestBody(
            receive,
            self._settings.client_timeout,
            extensions.get(BODY_NOW),
            extensions.get(PEER_CLOSED),
        )
        ex.client_gone = extensions.get(CLIENT_GONE)
        ex.respond = extensions.get(RESPOND)
        ex.body = body
        try:
            await self._steps(ex, body, send)
        finally:
            body.close()

    # ------------------------------------------------------------------ request lifecycle

    async def _steps(self, ex: Exchange, body: RequestBody, send: Send) -> None:
        try:
            await self._authenticate(ex)
            self._check_target(ex)
            if self._needs_json or (self._rules and ex.has_form_body()):
                decision = await self._judge(ex, body)
            else:  # judged on its methods and path alone
                decision = self._verdicts.judge(ex, b"", None)
            if not body.take_now():
                await body.fill(self.config.record_bodies)
            self._log.request(ex, decision, body)
            if decision.action != "allow":
                await self._enforce(ex, decision, body)
            if self._injector.needs_body or ex.hold is not None:
                await self._forward(ex, body, send)
            else:
                await self._upstream.forward(ex, body, send)
        except Refused as refusal:
            await self._refuse(ex, refusal, send)
        except ClientGone as gone:
            self._log.response(ex, 499, error=str(gone))
        except asyncio.CancelledError:  # the server is going away: say so, then let it go
            self._log.response(ex, 503, error="the gateway stopped during the request")
            raise
        except Exception as exc:  # a bug: answer 500 and record it, but never echo the message
            await self._internal_error(ex, exc, send)

    async def _internal_error(self, ex: Exchange, exc: Exception, send: Send) -> None:
        what = f"internal error in the gateway ({type(exc).__name__})"
        if ex.responded:
            self._log.response(ex, 500, error=what)
            return
        await self._refuse(
            ex, Refused(500, what, "this is a bug in Airlock: please report it"), send
        )

    def _exchange(self, scope: Scope) -> Exchange:
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        path = self._verdicts.path(bytes(raw_path))
        query = scope.get("query_string", b"")
        return Exchange(
            id=str(next(self._ids)),
            method=str(scope["method"]),
            path=path,
            query=query.decode("latin-1") if query else "",
            headers=scope.get("headers", []),  # copied (names lower-cased) by Exchange
            started=time.perf_counter(),
            request_tap=BodyTap(self.config.record_bodies),
        )

    def _presented(self, ex: Exchange) -> str | None:
        proxy = ticket_from(ex.header("proxy-authorization"))
        return proxy or ticket_from(ex.header("authorization"))

    async def _check_ticket(self, presented: str, *, fresh: bool = False) -> bool:
        return await check_ticket(self._ticket, presented, fresh=fresh)

    async def _authenticate(self, ex: Exchange) -> None:
        proxy = ex.header("proxy-authorization")
        presented = ticket_from(proxy) if proxy else None
        presented = presented or ticket_from(ex.header("authorization"))
        if presented is not None:
            local = self._local_ticket  # a constant-time compare: no coroutine needed
            if local.check(presented) if local is not None else await self._check_ticket(presented):
                return
        refusal = auth_refusal(bool(proxy), presented)
        self._log.request(ex, None, auth=refusal.extra["auth"])
        raise refusal

    def _check_target(self, ex: Exchange) -> None:
        refusal = target_refusal(ex.path, ex.header)
        if refusal is not None:
            raise refusal

    async def _judge(self, ex: Exchange, body: RequestBody) -> Decision:
        # Any method may carry a body (GET included, as Elasticsearch does): all are inspected.
        document = await self._inspect_json(ex, body) if self._needs_json else None
        form = b""
        if self._rules and ex.has_form_body():  # it may name the method: ``_method=DELETE``
            await self._buffer_all(body, "checked for a _method override")
            form = bytes(body.buffer)
        return self._verdicts.judge(ex, form, document)

    async def _inspect_json(self, ex: Exchange, body: RequestBody) -> Any:
        await self._buffer_all(body, "checked against JSON guardrails")
        if body.buffer and ex.header("content-encoding").lower() not in ("", "identity"):
            raise Refused(
                415,
                "an encoded request body cannot be checked against JSON guardrails",
                "send the body without Content-Encoding",
            )
        try:
            return describe_json_body(bytes(body.buffer)) if body.buffer else None
        except AmbiguousJson as exc:
            raise Refused(
                400,
                f"the JSON body cannot be checked against JSON guardrails: {exc}",
                "send one JSON value in UTF-8, without duplicate keys",
            ) from None

    async def _buffer_all(self, body: RequestBody, why: str) -> None:
        limit = self._settings.inspect_limit
        await body.fill(limit + 1)
        if not body.done or len(body.buffer) > limit:
            raise Refused(
                413,
                f"request body larger than {limit} bytes cannot be {why}",
                "send a smaller body, or ask for the limit to be raised",
            )

    async def _enforce(self, ex: Exchange, decision: Decision, body: RequestBody) -> None:
        if decision.action == "allow":
            return
        if decision.action == "deny":
            raise denial(decision)
        limit = self._settings.hold_limit
        if self._injector.needs_body:  # the signature needs the body in memory anyway
            await self._buffer_all(body, "held for approval and signed")
            limit = self._settings.inspect_limit
        hold = Hold(ex.method, ex.path, ex.query, decision.rule_id, limit=limit)
        ex.hold = hold
        await body.hold(hold, self._settings.inspect_limit)
        actions = hold.end(self._masker.mask_text(ex.query), self._excerpt(ex, body))
        await self._drive(ex, hold, actions)

    async def _drive(self, ex: Exchange, hold: Hold, actions: list[Action]) -> None:
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
                raise ClientGone(action.why)
            elif isinstance(action, Refuse):
                raise refused(action, hold.rule_id)
        raise AssertionError("a hold ended without forwarding or refusing")  # pragma: no cover

    async def _ask(self, ex: Exchange, hold: Hold, text: str) -> list[Action]:
        """Ask while watching the client; what the hold makes of the first thing to happen."""
        op = Operation(
            kind="http",
            text=text,
            rule_id=hold.rule_id,
            gateway=self.config.name,
            session_id=self._ticket.session_id,
        )
        asked = await self._approvals.ask(op, gone=ex.body.disconnected if ex.body else None)
        if asked.why and asked.outcome in ("approved", "denied", "expired"):
            ex.extra["approval"] = asked.why
        if asked.outcome == "ended":
            return hold.session_ended()
        if asked.outcome == "gone" or (
            asked.outcome == "approved" and ex.body is not None and ex.body.peer_closed()
        ):  # the client left, maybe since the socket was last asked: it never runs
            return hold.client_gone()
        return hold.decided(asked.outcome)

    def cancel_holds(self, reason: str = SESSION_ENDED) -> int:
        """Cancel every request held for approval (the session is ending): each is refused with
        503 and recorded, and its approval request is cancelled. Returns how many."""
        return self._approvals.cancel_all(reason)

    def _excerpt(self, ex: Exchange, body: RequestBody) -> str | None:
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

    async def _recheck_ticket(self, ex: Exchange) -> None:
        """A hold can outlast the ticket (the job was revoked or ended meanwhile): ask again."""
        presented = self._presented(ex)
        if presented is None or not await self._check_ticket(presented, fresh=True):
            raise Refused(
                401,
                "the gateway ticket was revoked or expired while the request was held",
                "the job's tickets end with the job; run the operation again in a live job",
                auth="revoked",
            )

    # ------------------------------------------------------------------ upstream

    async def _forward(self, ex: Exchange, body: RequestBody, send: Send) -> None:
        if self._injector.needs_body:
            await self._buffer_all(body, "signed")
        if ex.hold is not None:  # the approval is spent on this request, and only this one
            ex.hold.forward(ex.method, ex.path, ex.query, body.held_sha256)
            await self._recheck_ticket(ex)
        await self._upstream.forward(ex, body, send)

    async def _refuse(self, ex: Exchange, refusal: Refused, send: Send) -> None:
        if not ex.request_recorded:  # refused while reading the body: the request is still logged
            with contextlib.suppress(Refused):
                self._log.request(ex, None)
        status, headers, data = refusal_response(refusal, self.config.name)
        self._log.response(ex, refusal.status, error=refusal.error, **refusal.extra)
        ex.responded = True
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data, "more_body": False})
