"""github-check rendering and the shared click-time rules, without any network."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.gate import Operation
from airlock.gate.github_check import (
    action_identifier,
    check_run_body,
    outcome_body,
    parse_identifier,
    pull_request_number,
)
from airlock.gate.rules import ApproverRules, Clicker, approve_command, code_fence, refusal

HASHES = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


@settings(max_examples=200)
@given(HASHES, st.booleans())
def test_identifiers_fit_github_and_round_trip(op_hash: str, approve: bool) -> None:
    identifier = action_identifier(approve, op_hash)
    assert len(identifier) <= 20
    assert parse_identifier(identifier) == (approve, op_hash[:12])


@settings(max_examples=200)
@given(st.text(max_size=200))
def test_foreign_identifiers_are_not_understood(identifier: str) -> None:
    parsed = parse_identifier(identifier)
    assert parsed is None or identifier == action_identifier(parsed[0], parsed[1] + "0" * 52)


@settings(max_examples=200)
@given(st.text(max_size=300))
def test_the_code_fence_outlasts_any_backtick_run(text: str) -> None:
    fence = code_fence(text)
    assert fence not in text and len(fence) >= 3


def test_check_run_body_respects_githubs_limits() -> None:
    op = Operation("sql", "DROP TABLE users " + "x" * 70_000, "no-drop", "appdb", run_id="1")
    body = check_run_body(
        request_id="a" * 32, op=op, head_sha="b" * 40, requester="octocat",
        expires_at=0.0, details_url=None,
    )  # fmt: skip
    assert len(body["actions"]) <= 3
    assert len(body["output"]["summary"]) <= 65535 and len(body["output"]["text"]) <= 65535
    assert "details_url" not in body and body["name"].startswith("Airlock approval: DROP TABLE")
    done = outcome_body("expired", by="airlock", at="t", reason="expired", operation_hash="c" * 64)
    assert done["conclusion"] == "timed_out" and done["actions"] == []


def test_commands_are_found_only_at_the_start_of_a_line() -> None:
    rid = "0123456789abcdef0123456789abcdef"
    assert approve_command(f"LGTM\n/airlock approve {rid}") == (True, rid)
    assert approve_command(f"  /Airlock DENY {rid} because") == (False, rid)
    assert approve_command(f"Reply `/airlock approve {rid}`") is None
    assert approve_command(f"/airlock approve {rid[:-1]}") is None


class _Rights:
    def __init__(self, levels: dict[str, int], teams: dict[str, set[str]]) -> None:
        self.levels, self.teams = levels, teams

    def permission_level(self, clicker: Clicker) -> int:
        return self.levels.get(clicker.login, 0)

    def in_team(self, team: str, clicker: Clicker) -> bool:
        return clicker.login in self.teams.get(team, set())


def test_deny_needs_less_than_approve() -> None:
    rights = _Rights({"req": 30, "outsider": 0}, {})
    rules = [ApproverRules(teams=frozenset({"acme/dba"}))]
    kw = {"requester_id": "1", "author_id": "2", "rights": rights}
    assert refusal(rules, Clicker("req", "1"), approve=False, **kw) is None  # type: ignore[arg-type]
    assert refusal(rules, Clicker("req", "1"), approve=True, **kw) is not None  # type: ignore[arg-type]
    assert refusal(rules, Clicker("outsider"), approve=False, **kw) is not None  # type: ignore[arg-type]
    assert refusal(rules, Clicker("dependabot[bot]"), approve=False, **kw) is not None  # type: ignore[arg-type]


def test_pull_request_number_from_the_event_or_the_ref(tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 31}}))
    assert pull_request_number({"GITHUB_EVENT_PATH": str(event)}) == 31
    assert pull_request_number({"GITHUB_REF": "refs/pull/7/merge"}) == 7
    assert pull_request_number({"GITHUB_REF": "refs/heads/main"}) is None
