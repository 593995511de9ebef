"""What the HTTP gateway records of an exchange: ``http.request``, ``guardrail.decision`` and
``http.response``, masked, with the body prefixes and sizes (docs/gateways.md, "What is
recorded"). A request that cannot be recorded is refused (fail closed)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from airlock.events import EventType
from airlock.gateway.http.capture import (
    BodyTap,
    header_names,
    masked_headers,
    render_prefix,
    render_whole,
)
from airlock.gateway.http.exchange import Exchange, Refused, RequestBody
from airlock.gateway.http.jsonmask import JsonFieldMasker
from airlock.mask import Masker
from airlock.policy.guardrails import DEFAULT_RULE_IDS, Decision

__all__ = ["REQUEST_HEADERS", "RESPONSE_HEADERS", "ExchangeLog", "worth_recording"]

Record = Callable[[str, Mapping[str, Any]], object]

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


_UNMATCHED = DEFAULT_RULE_IDS["http_unmatched"]
_REMEMBERED = 256  # header lists whose masked allowlist is kept
_REQUEST_NAMES = header_names(REQUEST_HEADERS)
_RESPONSE_NAMES = header_names(RESPONSE_HEADERS)


class ExchangeLog:
    """Writes one gateway's events through ``record``, masked with ``masker`` and ``fields``."""

    def __init__(
        self, gateway: str, cap: int, masker: Masker, fields: JsonFieldMasker, record: Record
    ) -> None:
        self._gateway = gateway
        self._cap = cap
        self._masker = masker
        self._fields = fields
        self._record = record
        # Masked header allowlists remembered per exact header list (a client or upstream sends
        # the same few again and again), for as long as the masker has the same secrets.
        self._heads: dict[Any, dict[str, str]] = {}
        self._secrets = masker.literal_count

    def request(
        self, ex: Exchange, decision: Decision | None, body: RequestBody | None = None, **extra: Any
    ) -> None:
        mask = self._masker.mask_text
        data: dict[str, Any] = {
            "gateway": self._gateway,
            "id": ex.id,
            "method": ex.method,
            "path": mask(ex.path.judged),
            "query": mask(ex.query) if ex.query else "",
            "headers": self._masked_headers(ex.headers, _REQUEST_NAMES),
            **extra,
        }
        if body is not None and body.buffer and self._cap:
            data |= self._request_prefix(ex, body)
        ex.request_recorded = True
        self.emit(EventType.HTTP_REQUEST, data)
        if decision is not None and (
            decision.action != "allow" or decision.rule_id != _UNMATCHED
        ):  # worth_recording
            self.emit(
                EventType.GUARDRAIL,
                {
                    "gateway": self._gateway,
                    "kind": "http",
                    "id": ex.id,
                    "rule_id": decision.rule_id,
                    "action": decision.action,
                    "method": ex.method,
                    "path": data["path"],
                },
            )

    def _request_prefix(self, ex: Exchange, body: RequestBody) -> dict[str, Any]:
        cap = self._cap
        return render_prefix(
            bytes(body.buffer[:cap]),
            cap=cap,
            truncated=len(body.buffer) > cap or not body.done,
            content_type=ex.header("content-type"),
            content_encoding=ex.header("content-encoding"),
            fields=self._fields,
            masker=self._masker,
        )

    def response(
        self,
        ex: Exchange,
        status: int,
        *,
        tap: BodyTap | None = None,
        headers: Sequence[tuple[bytes, bytes]] = (),
        content_type: str = "",
        content_encoding: str = "",
        error: str | None = None,
        **extra: Any,
    ) -> bool:
        """Record ``http.response``; True when the response body recorded is the whole body,
        as it was, and the session masker found nothing to mask in it (see
        ``capture.render_whole``)."""
        clean = False
        data: dict[str, Any] = {
            "gateway": self._gateway,
            "id": ex.id,
            "status": status,
            "duration_ms": round((time.perf_counter() - ex.started) * 1000, 3),
            "request_body": self._request_body(ex),
        }
        for key, value in extra.items():
            if key != "auth":
                data[key] = value
        if ex.extra:
            data.update(ex.extra)
        if tap is not None:
            data["headers"] = self._masked_headers(headers, _RESPONSE_NAMES)
            data["body"], clean = render_whole(
                tap,
                content_type=content_type,
                content_encoding=content_encoding,
                fields=self._fields,
                masker=self._masker,
            )
            data["size"] = tap.size
        if error is not None:
            data["error"] = self._masker.mask_text(error)
            clean = False
        # The request is over; a writer that failed reports it on the next event it cannot take.
        # (a try costs nothing where contextlib.suppress is three calls a request)
        try:  # noqa: SIM105
            self.emit(EventType.HTTP_RESPONSE, data)
        except Refused:
            pass
        return clean

    def _masked_headers(
        self, headers: Sequence[tuple[bytes, bytes]], names: dict[bytes, str]
    ) -> dict[str, str]:
        """:func:`masked_headers`, remembered. The masker only ever gains secrets, and its
        count of them is read before masking: a value masked before a secret was added is never
        reused after."""
        secrets = self._masker.literal_count
        if secrets != self._secrets:
            self._heads.clear()
            self._secrets = secrets
        key = (id(names), *headers)
        found = self._heads.get(key)
        if found is None:
            found = masked_headers(headers, names, self._masker)
            if len(self._heads) >= _REMEMBERED:
                self._heads.clear()
            self._heads[key] = found
        return dict(found)

    def masks(self, value: str) -> bool:
        """Whether the session masker masks ``value`` (a held secret: it must)."""
        return self._masker.mask_text(value) != value

    def _request_body(self, ex: Exchange) -> dict[str, Any]:
        if ex.forwarded or ex.body is None:
            return {"size": ex.request_tap.size, "sha256": ex.request_tap.sha256}
        if ex.hold is None or not ex.hold.size:
            return ex.body.summary()  # refused before forwarding: what the gateway read of it
        data: dict[str, Any] = {"size": ex.hold.size, "sha256": ex.hold.sha256}
        return data if ex.body.done else data | {"complete": False}

    def emit(self, event: EventType, data: Mapping[str, Any]) -> None:
        try:
            self._record(str(event), data)
        except Exception as exc:
            raise Refused(
                503,
                "the session log cannot be written; refused (fail closed)",
                "check the sessions directory",
            ) from exc


def worth_recording(decision: Decision) -> bool:
    return decision.action != "allow" or decision.rule_id != DEFAULT_RULE_IDS["http_unmatched"]
