"""The I/O-free hold state machine: property tests over event orders and body chunkings."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.gateway.http.hold import (
    APPROVED,
    DENIED,
    EXPIRED,
    Action,
    Ask,
    Cancel,
    Forward,
    Gone,
    Hold,
    HoldError,
    Pass,
    Refuse,
)
from airlock.gateway.http.paths import normalize_path

PATH = normalize_path("/items/1")


def _hold(limit: int = 1 << 20, method: str = "DELETE", path: str = "/items/1") -> Hold:
    return Hold(method, normalize_path(path), "", "hold-items", limit=limit)


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=20))
def test_the_text_asked_about_does_not_depend_on_how_the_body_was_cut(
    body: bytes, cuts: list[int]
) -> None:
    whole, cut = _hold(), _hold()
    assert whole.body(body) == []
    for chunk in _chunked(body, cuts):
        assert cut.body(chunk) == []
    assert whole.end("", "x") == cut.end("", "x")
    assert whole.binding == cut.binding
    assert cut.size == len(body) and cut.sha256 == hashlib.sha256(body).hexdigest()


def test_one_byte_at_a_time_past_the_limit_refuses_413() -> None:
    hold = _hold(limit=8)
    out: list[Action] = []
    for byte in b"0123456789":
        out += hold.body(bytes([byte]))
        if out:
            break
    assert [type(a) for a in out] == [Refuse] and out[0].status == 413  # type: ignore[union-attr]
    assert hold.size == 9
    with pytest.raises(HoldError):
        hold.end("", None)


EVENTS = st.lists(
    st.sampled_from(["approved", "denied", "expired", "gone", "session", "forward"]), max_size=8
)


@settings(max_examples=400, deadline=None)
@given(EVENTS)
def test_forward_happens_once_and_only_after_an_approval(events: list[str]) -> None:
    hold = _hold()
    hold.body(b"payload")
    assert [type(a) for a in hold.end("", "payload")] == [Ask]
    forwards, ended, approved = 0, False, False
    for event in events:
        if event == "forward":
            try:
                hold.forward("DELETE", PATH, "", hashlib.sha256(b"payload").hexdigest())
            except HoldError:
                continue
            assert approved and not ended
            forwards += 1
            continue
        actions: list[Action]
        try:
            if event in ("approved", "denied", "expired"):
                actions = hold.decided(event)  # type: ignore[arg-type]
            elif event == "gone":
                actions = hold.client_gone()
            else:
                actions = hold.session_ended()
        except HoldError:
            assert approved or forwards  # only a second decision is out of order
            continue
        if any(isinstance(a, Forward) for a in actions):
            assert event == "approved" and not ended and not approved
            approved = True
        if any(isinstance(a, Refuse | Gone) for a in actions):
            assert not approved
            ended = True
        if any(isinstance(a, Cancel) for a in actions):
            assert event in ("gone", "session") and not approved
    assert forwards <= 1 and hold.forwarded == (forwards == 1)


def test_the_forwarded_request_must_be_the_approved_one() -> None:
    hold = _hold()
    hold.body(b"a")
    hold.end("", "a")
    assert hold.decided(APPROVED) == [Forward(hold.binding)]
    with pytest.raises(HoldError):
        hold.forward("DELETE", normalize_path("/items/2"), "", hashlib.sha256(b"a").hexdigest())
    with pytest.raises(HoldError):
        hold.forward("DELETE", PATH, "", hashlib.sha256(b"b").hexdigest())
    assert hold.forward("DELETE", PATH, "", hashlib.sha256(b"a").hexdigest()) == hold.binding
    with pytest.raises(HoldError):  # spent
        hold.forward("DELETE", PATH, "", hashlib.sha256(b"a").hexdigest())


@pytest.mark.parametrize(("outcome", "words"), [(DENIED, "denied"), (EXPIRED, "timed out")])
def test_refusals_say_what_happened(outcome: str, words: str) -> None:
    hold = _hold()
    hold.end("", None)
    (refusal,) = hold.decided(outcome)  # type: ignore[arg-type]
    assert isinstance(refusal, Refuse) and refusal.status == 403
    assert words in refusal.error and "hold-items" in refusal.error


def test_a_masked_query_is_bound_by_hash() -> None:
    a = Hold("GET", PATH, "token=sk_live_a", "r", limit=10)
    b = Hold("GET", PATH, "token=sk_live_b", "r", limit=10)
    (ask_a,), (ask_b,) = a.end("token=[MASKED]", None), b.end("token=[MASKED]", None)
    assert isinstance(ask_a, Ask) and isinstance(ask_b, Ask)
    assert ask_a.text != ask_b.text and "sk_live" not in ask_a.text + ask_b.text
    plain = Hold("GET", PATH, "page=2", "r", limit=10).end("page=2", None)
    assert plain == [Ask("GET /items/1?page=2")]


@pytest.mark.parametrize(("body", "probe"), [(b"0000", True), (b"00000", False), (b"", False)])
def test_git_push_probe_passes_unasked(body: bytes, probe: bool) -> None:
    hold = _hold(method="POST", path="/acme/api.git/git-receive-pack")
    for byte in body:
        hold.body(bytes([byte]))
    actions = hold.end("", None)
    assert [type(a) for a in actions] == ([Pass, Forward] if probe else [Ask])


def test_session_end_while_asking_cancels_and_refuses_503() -> None:
    hold = _hold()
    hold.end("", None)
    cancel, refusal = hold.session_ended()
    assert cancel == Cancel("session ended")
    assert isinstance(refusal, Refuse) and refusal.status == 503
    assert hold.decided(APPROVED) == []  # a late approval changes nothing
