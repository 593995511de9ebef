"""Who may approve is decided by immutable forge ids, never by logins (which can be renamed);
where a policy names users by login, the login compares without case."""

from __future__ import annotations

from airlock.gate.rules import ApproverRules, Clicker, refusal

REQUESTER_ID = "583231"  # GitHub actor_id / GitLab user_id of who asked
AUTHOR_ID = "77"  # the pull/merge request author's id


class _Rights:
    """Everyone has write; nobody is in a team."""

    def permission_level(self, clicker: Clicker) -> int:
        return 30

    def in_team(self, team: str, clicker: Clicker) -> bool:
        return False


def _approve(clicker: Clicker, rules: ApproverRules | None = None, **ids: str | None) -> str | None:
    kw: dict[str, str | None] = {"requester_id": REQUESTER_ID, "author_id": AUTHOR_ID, **ids}
    return refusal(
        [rules or ApproverRules()],
        clicker,
        approve=True,
        requester_id=kw["requester_id"],
        author_id=kw["author_id"],
        rights=_Rights(),
    )


def test_the_requester_cannot_approve_after_renaming_their_account() -> None:
    why = _approve(Clicker("octocat-renamed", REQUESTER_ID))
    assert why is not None and "asked for this operation" in why


def test_the_author_cannot_approve_after_renaming_their_account() -> None:
    why = _approve(Clicker("pr-author-renamed", AUTHOR_ID))
    assert why is not None and "wrote the pull/merge request" in why


def test_someone_who_took_over_the_requesters_old_login_is_another_person() -> None:
    assert _approve(Clicker("octocat", "999")) is None


def test_an_unknown_requester_or_author_id_refuses_approval_unless_allowed() -> None:
    assert _approve(Clicker("alice", "5"), requester_id=None) is not None
    assert _approve(Clicker("alice", "5"), author_id=None) is not None
    assert _approve(Clicker("alice", ""), requester_id=REQUESTER_ID) is not None
    lenient = ApproverRules(allow_self=True, allow_author=True)
    assert _approve(Clicker("alice", "5"), lenient, requester_id=None, author_id=None) is None


def test_named_users_and_bots_compare_without_case() -> None:
    named = ApproverRules.from_dict({"users": ["Alice"]})
    assert _approve(Clicker("aLICE", "5"), named) is None
    assert _approve(Clicker("ALICE", "5"), named) is None
    assert _approve(Clicker("mallory", "6"), named) is not None
    assert _approve(Clicker("Dependabot[BOT]", "7")) is not None
