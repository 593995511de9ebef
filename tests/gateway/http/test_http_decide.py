"""The HTTP gateway's I/O-free decision layer (``http/decide.py``), fed directly.

The property: however a request spells a path a deny rule names (trailing slash, repeated
slashes, dot segments, percent-escapes, an escaped separator, ``;params``, absolute-form, a
method override), the verdict is the rule's; a request that names another resource passes.
"""

from __future__ import annotations

import json
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.gateway.http.capture import BodyTap
from airlock.gateway.http.decide import (
    Verdicts,
    auth_refusal,
    denial,
    judge,
    refusal_response,
    request_path,
    target_refusal,
)
from airlock.gateway.http.exchange import Exchange
from airlock.policy.guardrails import GuardrailDefaults, GuardrailRule

RULES = (
    GuardrailRule.model_validate(
        {
            "id": "no-item-delete",
            "http": {"methods": ["DELETE"], "path": "/items/*"},
            "action": "deny",
        }
    ),
)
DEFAULTS = GuardrailDefaults()


def _exchange(method: str, raw: bytes, headers: list[tuple[bytes, bytes]]) -> Exchange:
    target, _, query = raw.partition(b"?")
    return Exchange(
        id="1",
        method=method,
        path=request_path(target),
        query=query.decode("latin-1"),
        headers=headers,
        started=time.perf_counter(),
        request_tap=BodyTap(0),
    )


def _escape(char: str, how: int) -> str:
    """A character as it is, percent-escaped, or (for letters) in another case of escape."""
    if how == 0 or char == "/":
        return char
    text = f"%{ord(char):02X}"
    return text if how == 1 else text.lower()


@st.composite
def item_spellings(draw: st.DrawFn) -> bytes:
    """``/items/<id>`` as a client might spell it to slip past ``/items/*``."""
    item = draw(st.text("abc123", min_size=1, max_size=6))
    name = "".join(_escape(c, draw(st.integers(0, 2))) for c in "items")
    ident = "".join(_escape(c, draw(st.integers(0, 2))) for c in item)
    slash = draw(st.sampled_from(["/", "//", "/./", "/x/../", "%2F", "%2f", ";v=1/", "%252F"]))
    path = draw(st.sampled_from(["/", "//", "/./"])) + name + slash + ident
    path += draw(st.sampled_from(["", "/", "//", ";jsessionid=1"]))
    form = draw(st.sampled_from(["", "http://example.test", "HTTPS://upstream"]))
    query = draw(st.sampled_from(["", "?a=1", "?_method=GET"]))
    return (form + path + query).encode()


@settings(max_examples=400, deadline=None)
@given(
    item_spellings(),
    st.sampled_from(
        [
            ("DELETE", []),
            ("delete", []),
            ("POST", [(b"X-HTTP-Method-Override", b"DELETE")]),
            ("POST", [(b"x-http-method", b"delete")]),
            ("PUT", [(b"X-Method-Override", b"GET, DELETE")]),
        ]
    ),
)
def test_every_spelling_of_a_denied_request_is_denied(
    raw: bytes, method: tuple[str, list[tuple[bytes, bytes]]]
) -> None:
    ex = _exchange(method[0], raw, method[1])
    assert target_refusal(ex.path, ex.header) is None
    decision = judge(ex, b"", "upstream", None, RULES, DEFAULTS)
    assert (decision.action, decision.rule_id) == ("deny", "no-item-delete"), ex.path


@settings(max_examples=200, deadline=None)
@given(item_spellings(), st.sampled_from(["GET", "POST", "HEAD", "OPTIONS"]))
def test_other_methods_on_the_same_paths_pass(raw: bytes, method: str) -> None:
    ex = _exchange(method, raw, [])
    assert judge(ex, b"", "upstream", None, RULES, DEFAULTS).action == "allow"


@settings(max_examples=200, deadline=None)
@given(st.text("abcxyz%._-", max_size=20))
def test_a_form_body_override_is_judged(tail: str) -> None:
    ex = _exchange(
        "POST",
        b"/items/" + tail.encode() + b"7",
        [(b"content-type", b"application/x-www-form-urlencoded")],
    )
    if ex.path.invalid or not ex.path.judged.startswith("/items/"):
        return
    assert judge(ex, b"a=1&_method=DELETE", "upstream", None, RULES, DEFAULTS).action == "deny"


SHARED = Verdicts("upstream", RULES, DEFAULTS)  # one cache across every example below
JSON_RULES = (
    GuardrailRule.model_validate(
        {"id": "no-force", "http": {"path": "/items/*", "json": {"force": True}}, "action": "deny"}
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    item_spellings(),
    st.sampled_from(
        [
            ("GET", []),
            ("DELETE", []),
            ("POST", [(b"x-http-method-override", b"DELETE")]),
            ("POST", [(b"content-type", b"application/x-www-form-urlencoded")]),
        ]
    ),
    st.booleans(),
)
def test_remembered_verdicts_are_the_verdicts(
    raw: bytes, method: tuple[str, list[tuple[bytes, bytes]]], override_in_form: bool
) -> None:
    """The cache keys on every method a request names: an override (header, ``_method`` in a
    form) on a path judged before gets its own verdict, never the remembered one."""
    ex = _exchange(method[0], raw, method[1])
    form = b"_method=DELETE" if override_in_form and ex.has_form_body() else b""
    expected = judge(ex, form, "upstream", None, RULES, DEFAULTS)
    assert SHARED.judge(ex, form, None) == expected
    assert SHARED.judge(ex, form, None) == expected  # and again, from the cache
    assert SHARED.path(raw.partition(b"?")[0]) == ex.path


def test_a_json_rule_sees_every_body() -> None:
    verdicts = Verdicts("upstream", JSON_RULES, DEFAULTS)
    ex = _exchange("POST", b"/items/1", [(b"content-type", b"application/json")])
    assert verdicts.judge(ex, b"", None).action == "allow"  # no body
    assert verdicts.judge(ex, b"", {"force": False}).action == "allow"
    assert verdicts.judge(ex, b"", {"force": True}).action == "deny"
    assert verdicts.judge(ex, b"", None).action == "allow"


def test_other_resources_pass() -> None:
    for raw in (b"/itemsx/1", b"/other/items/1", b"/items", b"/", b"/items-1"):
        ex = _exchange("DELETE", raw, [])
        assert judge(ex, b"", "upstream", None, RULES, DEFAULTS).action == "allow", raw


def test_refusals_name_what_to_fix_and_never_the_request() -> None:
    ex = _exchange("GET", b"/a%00b", [(b"x-original-url", b"/admin")])
    refusal = target_refusal(ex.path, ex.header)
    assert refusal is not None and refusal.status == 400 and "control character" in refusal.error
    ok = _exchange("GET", b"/a", [(b"X-Rewrite-URL", b"/admin")])
    rewrite = target_refusal(ok.path, ok.header)
    assert rewrite is not None and "x-rewrite-url header is refused" in rewrite.error
    assert request_path(b"*").invalid == "the request target is not a path"

    status, headers, body = refusal_response(auth_refusal(True, "tk-secret"), "api")
    assert status == 407 and (b"proxy-authenticate", b'Basic realm="airlock api"') in headers
    assert b"tk-secret" not in body and json.loads(body)["error"] == "wrong gateway ticket"
    status, headers, body = refusal_response(auth_refusal(False, None), "api")
    assert status == 401 and any(k == b"www-authenticate" for k, _ in headers)
    ex = _exchange("DELETE", b"/items/1", [])
    status, _, body = refusal_response(denial(judge(ex, b"", "u", None, RULES, DEFAULTS)), "api")
    assert status == 403 and json.loads(body)["rule_id"] == "no-item-delete"
