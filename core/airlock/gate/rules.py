"""Who may answer an approval request, checked at click time, the same way for every forge.

A click is refused when the clicker is a bot; when they asked for the operation (unless
``allow_self``); when they wrote the pull/merge request (unless ``allow_author``); when they hold
less than ``permission`` on the repository; or, if ``users`` or ``teams`` are named, when they
are neither one of the users nor a member of one of the teams (users and teams are OR'ed).
A ``users`` entry is a login or, better, ``id:<numeric id>``: a login can be given up and
taken by another account, an id cannot.

"Who asked" and "who wrote" compare the forge's immutable numeric user ids (GitHub ``actor_id``
and ``sender.id``, GitLab ``user_id`` and ``user.id``), never logins: a login can be renamed
between the request and the click. When an id is unknown, an approval is refused (unless the
rule allows self- or author-approval). Logins are for humans to read, and where a policy names
users by login they compare without case, ASCII only (a confusable matches nobody).

A request needs ``min_approvals`` distinct entitled approvers (the largest over all rule sets),
and with ``require_justification`` (if any rule set asks) an approval must say why.

Denying is safer than approving: a deny needs only a human with ``permission`` on the repository
(the requester and the author may stop their own operation).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "MAX_APPROVALS",
    "MAX_JUSTIFICATION",
    "PERMISSION_LEVELS",
    "ApproverRules",
    "Clicker",
    "Command",
    "Rights",
    "approve_command",
    "code_fence",
    "justification_required",
    "login_key",
    "parse_command",
    "refusal",
    "required_approvals",
    "same_id",
    "same_login",
]

# One vocabulary for both forges. GitHub role names map here; GitLab access levels are these
# numbers already (reporter 20, developer 30, maintainer 40, owner 50).
PERMISSION_LEVELS: Mapping[str, int] = {
    "none": 0,
    "read": 20,
    "triage": 25,
    "write": 30,
    "maintain": 40,
    "admin": 50,
}
_BOT_LOGIN = re.compile(r"(\[bot\]$)|(^(project|group)_\d+_bot(_[0-9a-f]+)?$)", re.IGNORECASE)
_COMMAND = re.compile(
    r"^\s*/airlock\s+(approve|deny)\s+([0-9a-f]{32})\b(.*)$", re.IGNORECASE | re.MULTILINE
)
_LOGIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}(\[bot\])?", re.ASCII)
MAX_APPROVALS = 10
MAX_JUSTIFICATION = 1000


@dataclass(frozen=True)
class ApproverRules:
    """One rule set; a request may carry several (broker's and session's), and all must hold."""

    users: frozenset[str] = field(default_factory=frozenset)
    teams: frozenset[str] = field(default_factory=frozenset)
    permission: str = "write"
    allow_self: bool = False
    allow_author: bool = False
    min_approvals: int = 1
    require_justification: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, stable order."""
        return {
            "users": sorted(self.users),
            "teams": sorted(self.teams),
            "permission": self.permission,
            "allow_self": self.allow_self,
            "allow_author": self.allow_author,
            "min_approvals": self.min_approvals,
            "require_justification": self.require_justification,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ApproverRules:
        """The inverse of :meth:`to_dict`; unknown or out-of-range values become the strictest."""
        permission = str(data.get("permission", "write"))
        return cls(
            users=frozenset(str(u).lower() for u in data.get("users", ())),
            teams=frozenset(str(t).lower() for t in data.get("teams", ())),
            permission=permission if permission in PERMISSION_LEVELS else "admin",
            allow_self=bool(data.get("allow_self", False)),
            allow_author=bool(data.get("allow_author", False)),
            min_approvals=_quorum(data.get("min_approvals", 1)),
            require_justification=bool(data.get("require_justification", False)),
        )


def _quorum(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_APPROVALS:
        return value
    return MAX_APPROVALS


def required_approvals(rules: Iterable[ApproverRules]) -> int:
    """How many distinct entitled approvers a request needs: the strictest rule set wins."""
    return max((rule.min_approvals for rule in rules), default=1)


def justification_required(rules: Iterable[ApproverRules]) -> bool:
    """True when any rule set asks approvers to say why."""
    return any(rule.require_justification for rule in rules)


@dataclass(frozen=True)
class Clicker:
    """Who clicked (or commented): their login, numeric id and whether the forge says bot."""

    login: str
    user_id: str = ""
    bot: bool = False

    @property
    def is_bot(self) -> bool:
        """The forge's own flag, or a login only bots can have."""
        return self.bot or bool(_BOT_LOGIN.search(self.login))


class Rights(Protocol):
    """The forge's answer to "what may this user do here", asked at click time."""

    def permission_level(self, clicker: Clicker) -> int:
        """The clicker's level on the repository (:data:`PERMISSION_LEVELS` scale)."""
        ...

    def in_team(self, team: str, clicker: Clicker) -> bool:
        """True when the clicker is an active member of ``team`` (org/slug, or group path)."""
        ...


def login_key(login: str | None) -> str | None:
    """A forge login as compared: lower-case ASCII, or None for anything no forge allows.

    GitHub and GitLab logins are ASCII; a non-ASCII "login" is a confusable (``"\u212aevin"``
    lower-cases to ``"kevin"``) and matches nobody."""
    text = str(login or "")
    return text.lower() if _LOGIN.fullmatch(text) else None


def same_login(a: str | None, b: str | None) -> bool:
    """Forge logins compare without case, ASCII only; an unknown login matches nobody."""
    key = login_key(a)
    return key is not None and key == login_key(b)


def same_id(a: str | None, b: str | None) -> bool:
    """Immutable forge user ids compare exactly; an unknown id matches nobody."""
    return bool(a) and bool(b) and str(a).strip() == str(b).strip()


def refusal(
    rules: Iterable[ApproverRules],
    clicker: Clicker,
    *,
    approve: bool,
    requester_id: str | None,
    author_id: str | None,
    rights: Rights,
) -> str | None:
    """Why this click must not decide the request, or None when it may.

    ``requester_id`` and ``author_id`` are the forge's numeric user ids of who asked for the
    operation and who wrote the pull/merge request (None: unknown)."""
    if clicker.is_bot:
        return f"{clicker.login} is a bot; bots cannot decide approvals"
    for rule in rules:
        reason = _refusal_one(
            rule,
            clicker,
            approve=approve,
            requester_id=requester_id,
            author_id=author_id,
            rights=rights,
        )
        if reason is not None:
            return reason
    return None


def _refusal_one(
    rule: ApproverRules,
    clicker: Clicker,
    *,
    approve: bool,
    requester_id: str | None,
    author_id: str | None,
    rights: Rights,
) -> str | None:
    if approve and not rule.allow_self:
        if not requester_id or not clicker.user_id:
            return "who asked for this operation is unknown, so no one may approve it"
        if same_id(clicker.user_id, requester_id):
            return f"{clicker.login} asked for this operation and cannot approve it"
    if approve and not rule.allow_author:
        if not author_id or not clicker.user_id:
            return "who wrote the pull/merge request is unknown, so no one may approve it"
        if same_id(clicker.user_id, author_id):
            return f"{clicker.login} wrote the pull/merge request and cannot approve its operations"
    needed = PERMISSION_LEVELS[rule.permission]
    if rights.permission_level(clicker) < needed:
        return f"{clicker.login} lacks {rule.permission} permission on the repository"
    if approve and (rule.users or rule.teams) and not _named(rule, clicker, rights):
        return f"{clicker.login} is not one of the approvers named by the policy"
    return None


def _named(rule: ApproverRules, clicker: Clicker, rights: Rights) -> bool:
    if clicker.user_id and f"id:{clicker.user_id.strip()}" in rule.users:
        return True  # pinned by immutable id: the safe way to name a person
    if login_key(clicker.login) in rule.users:
        return True
    return any(rights.in_team(team, clicker) for team in sorted(rule.teams))


@dataclass(frozen=True)
class Command:
    """``/airlock approve|deny <id> [justification…]`` as written in a note or comment."""

    approve: bool
    request_id: str
    justification: str = ""


def parse_command(text: str) -> Command | None:
    """The first command in ``text``; the justification is everything written after the id."""
    match = _COMMAND.search(text or "")
    if match is None:
        return None
    rest = (text or "")[match.end(2) :].strip()
    return Command(match.group(1).lower() == "approve", match.group(2), rest)


def approve_command(text: str) -> tuple[bool, str] | None:
    """``(approve, request_id)`` from the first ``/airlock approve|deny <id>`` line, if any."""
    command = parse_command(text)
    return None if command is None else (command.approve, command.request_id)


def code_fence(text: str) -> str:
    """A Markdown code fence longer than any run of backticks inside ``text``."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)
