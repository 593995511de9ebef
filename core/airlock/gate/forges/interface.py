"""The one interface every forge implements (see the package docstring)."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from airlock.gate.interface import Decision, Operation
from airlock.gate.rules import Clicker, Rights

__all__ = ["Click", "Forge", "ForgeRef", "ForgeRequest", "Shown"]


@dataclass(frozen=True)
class ForgeRequest:
    """A request to show: the operation, where, for whom, until when."""

    request_id: str
    op: Operation
    repository: str
    repository_id: str
    target: int  # pull request number / merge request iid
    requester: str | None  # a login, for humans to read
    expires_at: float
    job_sha: str  # the commit the job runs


@dataclass(frozen=True)
class ForgeRef:
    """Where the request is shown: check run or note id, its URL, and what the forge said."""

    ref: str
    url: str | None
    head_sha: str | None = None
    author: str | None = None  # the PR/MR author's login, for humans to read


@dataclass(frozen=True)
class Shown:
    """A request already shown, as the forge needs it to update or judge it."""

    request_id: str
    op: Operation
    repository: str
    repository_id: str
    target: int | None
    requester: str | None
    expires_at: float
    ref: str | None


@dataclass(frozen=True)
class Click:
    """A verified answer on the forge, before the service judges it.

    ``request_id`` names the request it answers; the rest says where it was made, so that the
    service can check it belongs to that request (``matches``)."""

    request_id: str
    clicker: Clicker
    approve: bool
    deliveries: tuple[tuple[str, str], ...]
    where: str  # "the check run", "a note"
    repository_id: str
    ref: str | None = None  # the check run it was on (GitHub)
    target: int | None = None  # the merge request it was on (GitLab)
    head_sha: str | None = None
    hash_prefix: str | None = None  # the operation hash the button was for (GitHub)
    justification: str = ""


class Forge(abc.ABC):
    """Show approval requests on a forge and read the answers."""

    name: ClassVar[str]  # the backend name: "github-check", "gitlab"
    source: ClassVar[str]  # the decision's prefix and the delivery source: "github", "gitlab"
    carries_text: ClassVar[bool] = False  # whether an answer can carry a justification

    @abc.abstractmethod
    def post(self, request: ForgeRequest) -> ForgeRef:
        """Show the request; raise GateError when the forge refuses."""

    @abc.abstractmethod
    def show_progress(self, shown: Shown, approvers: list[str], needed: int) -> None:
        """Say "1 of 2 approvals" while the request waits for more."""

    @abc.abstractmethod
    def show_outcome(self, shown: Shown, status: str, decision: Decision) -> None:
        """Rewrite the request with its outcome."""

    @abc.abstractmethod
    def author_id(self, shown: Shown) -> str | None:
        """The immutable id of who wrote the pull/merge request, asked now."""

    @abc.abstractmethod
    def rights(self, shown: Shown) -> Rights:
        """What a clicker may do in the request's repository, asked at click time."""

    @abc.abstractmethod
    def click(self, payload: Mapping[str, Any], delivery: str) -> Click | None:
        """The answer in a verified webhook payload, or None when it is no answer."""

    def matches(self, click: Click, shown: Shown, head_sha: str | None) -> bool:
        """True when ``click`` was made where ``shown`` is (same repository and place)."""
        return click.repository_id == shown.repository_id

    def reply(self, shown: Shown, text: str) -> None:  # noqa: B027 - optional
        """Answer on the forge's thread, where it has one (best effort)."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release HTTP sessions."""
