"""The HTTP gateway's decisions, I/O-free: facts about a request in, a verdict or a refusal out.

``proxy.py`` reads the request and talks to the approver and the upstream; what it does with
them is decided here, in functions a property test can feed directly
(tests/gateway/http/test_http_decide.py):

    request_path(raw_path)                  the path judged and sent (absolute-form read as path)
    target_refusal(path, header)            a request line the gateway will not carry, or None
    auth_refusal(proxy_auth, presented)     401/407 for a missing or wrong ticket
    judge(exchange, form, host, document, rules, defaults)
                                            the strictest decision over every reading of the
                                            request (each method it names, each path reading)
    Verdicts(host, rules, defaults)         judge, remembering the verdicts that depend on the
                                            method and path alone (no JSON body to match)
    denial(decision)                        the 403 of a deny rule
    refusal_response(refusal, gateway)      status, headers and JSON body the client gets
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from airlock.gateway.http.exchange import Exchange, Refused
from airlock.gateway.http.paths import NormalPath, normalize_path
from airlock.policy.guardrails import (
    Decision,
    GuardrailDefaults,
    GuardrailRule,
    HttpRequestInfo,
    decide_http,
    strictest,
)

__all__ = [
    "auth_refusal",
    "denial",
    "judge",
    "origin_form",
    "refusal_response",
    "request_path",
    "target_refusal",
]

# Symfony, Zend/Laminas and IIS (URL Rewrite) route by these headers instead of the request line.
_REWRITES = ("x-original-url", "x-rewrite-url")


def origin_form(target: bytes) -> bytes | None:
    """The path of a request target: absolute-form (``GET http://host/path``, as clients that
    take the gateway for a forward proxy send it) is read as its path; the authority is ignored,
    as the ``Host`` header is. Another form (``*``, ``items/1``) is not a path: None."""
    if target.startswith(b"/"):
        return target
    scheme, sep, rest = target.partition(b"://")
    if sep and scheme.lower() in (b"http", b"https"):
        return b"/" + rest.partition(b"/")[2]
    return None


def request_path(raw_path: bytes) -> NormalPath:
    """The normalised path of a raw request target (query excluded)."""
    target = origin_form(raw_path.split(b"?", 1)[0])
    if target is None:
        return NormalPath("/", "/", invalid="the request target is not a path")
    return normalize_path(target)


def target_refusal(path: NormalPath, header: Callable[[str], str]) -> Refused | None:
    """Why the request line cannot be carried as it is, or None."""
    if path.invalid:
        return Refused(
            400, path.invalid, "send a path (/…) of UTF-8 text without control characters"
        )
    for name in _REWRITES:  # frameworks route by these over the request line
        if header(name):
            return Refused(
                400,
                f"the {name} header is refused: it would change the path upstream",
                "send the path in the request line",
            )
    return None


def auth_refusal(proxy_auth: bool, presented: str | None) -> Refused:
    """The refusal of a request whose ticket is missing (``presented`` None) or wrong; 407 when
    the client spoke to us as to a forward proxy (``Proxy-Authorization``)."""
    outcome = "missing" if presented is None else "wrong"
    return Refused(
        407 if proxy_auth else 401,
        f"{outcome} gateway ticket",
        "send the session ticket as a bearer token, or as the password of basic auth "
        "(e.g. http://airlock:TICKET@host/…)",
        auth=outcome,
    )


_REMEMBERED = 1024  # verdicts (and paths) kept per gateway; the whole cache is dropped when full


class Verdicts:
    """:func:`judge` for one gateway, with a cache: a request with no JSON document to match
    (``document`` None) is judged on its methods and path alone, so its verdict is kept under
    those. The methods include every override the request names (headers, ``_method`` in the
    query or ``form``), so a cached verdict is never a dodge; rules that look at a JSON body
    still see each body. Raw paths are normalised once each, the same way."""

    def __init__(
        self, host: str, rules: Sequence[GuardrailRule], defaults: GuardrailDefaults
    ) -> None:
        self._host = host
        self._rules = tuple(rules)
        self._defaults = defaults
        self._verdicts: dict[tuple[tuple[str, ...], NormalPath], Decision] = {}
        self._paths: dict[bytes, NormalPath] = {}

    def path(self, raw_path: bytes) -> NormalPath:
        """:func:`request_path`, remembered."""
        found = self._paths.get(raw_path)
        if found is None:
            found = _remember(self._paths, raw_path, request_path(raw_path))
        return found

    def judge(self, ex: Exchange, form: bytes, document: Any) -> Decision:
        """:func:`judge`, remembered when ``document`` is None."""
        if document is not None:
            return judge(ex, form, self._host, document, self._rules, self._defaults)
        methods = tuple(ex.methods(form))
        key = (methods, ex.path)
        found = self._verdicts.get(key)
        if found is None:
            decision = _strictest(methods, ex.path, self._host, None, self._rules, self._defaults)
            found = _remember(self._verdicts, key, decision)
        return found


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> Any:
    if len(cache) >= _REMEMBERED:
        cache.clear()
    cache[key] = value
    return value


def judge(
    ex: Exchange,
    form: bytes,
    host: str,
    document: Any,
    rules: Sequence[GuardrailRule],
    defaults: GuardrailDefaults,
) -> Decision:
    """The strictest decision over every method the request names (overrides, ``_method`` in
    ``form``) and every reading of its path: a rule cannot be dodged by spelling."""
    return _strictest(ex.methods(form), ex.path, host, document, rules, defaults)


def _strictest(
    methods: Sequence[str],
    path: NormalPath,
    host: str,
    document: Any,
    rules: Sequence[GuardrailRule],
    defaults: GuardrailDefaults,
) -> Decision:
    decisions = (
        decide_http(HttpRequestInfo(method, reading, host, document), rules, defaults)
        for method in methods
        for reading in path.candidates
    )
    decision = strictest(decisions)
    assert decision is not None  # a request has at least one method and one path reading
    return decision


def denial(decision: Decision) -> Refused:
    """The refusal of a request a deny rule matched."""
    return Refused(
        403,
        f"refused by guardrail {decision.rule_id}",
        "this request is not allowed by the session policy; see the rule in airlock.yaml",
        rule_id=decision.rule_id,
    )


def refusal_response(
    refusal: Refused, gateway: str
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """What the client gets for ``refusal``: status, headers, a JSON body naming the error, the
    hint and the rule (never a value from the request)."""
    payload = {"error": refusal.error, "gateway": gateway}
    if refusal.hint:
        payload["hint"] = refusal.hint
    if "rule_id" in refusal.extra:
        payload["rule_id"] = refusal.extra["rule_id"]
    data = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    challenge = f'Basic realm="airlock {gateway}"'.encode()
    if refusal.status == 401:
        headers.append((b"www-authenticate", challenge))
    elif refusal.status == 407:
        headers.append((b"proxy-authenticate", challenge))
    return refusal.status, headers, data
