"""The broker's forges: one factory for the backends' forges and their API clients, and the
best-effort updates (progress, outcome, replies) that never change a decision."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from airlock.broker.approvals.store import ApprovalRow
from airlock.errors import AirlockError, UsageError
from airlock.gate.forges import Forge, Shown
from airlock.gate.forges.github_check import GitHubCheckForge
from airlock.gate.forges.gitlab_notes import GitLabNotesForge
from airlock.gate.github_api import GitHubApi
from airlock.gate.gitlab import GitLabApi
from airlock.gate.interface import Decision, Operation
from airlock.policy.broker_config import ApprovalsConfig
from airlock.providers.secrets import resolve_secret

__all__ = ["FORGES", "ForgeDispatch", "carries_text", "shown"]

log = logging.getLogger("airlock.broker.approvals")

FORGES: dict[str, type[Forge]] = {f.name: f for f in (GitHubCheckForge, GitLabNotesForge)}
_Section = TypeVar("_Section")


def carries_text(backend: str) -> bool:
    """True when an answer on ``backend`` can carry a justification."""
    forge = FORGES.get(backend)
    return forge is not None and forge.carries_text


def shown(row: ApprovalRow) -> Shown:
    """The request as a forge needs it to update or judge it."""
    return Shown(
        row.request_id,
        Operation(**row.operation),
        row.repository,
        row.repository_id,
        row.target,
        row.requester,
        row.expires_at,
        row.forge_ref,
    )


class ForgeDispatch:
    """Builds each forge (and its API client) on first use."""

    def __init__(self, config: ApprovalsConfig) -> None:
        self._config = config
        self._github: GitHubApi | None = None
        self._gitlab: GitLabApi | None = None
        self._forges: dict[str, Forge] = {}

    def close(self) -> None:
        """Release forge HTTP sessions."""
        for api in (self._github, self._gitlab):
            if api is not None:
                api.close()

    def forge(self, backend: str) -> Forge:
        """The forge that shows ``backend``'s requests."""
        if backend not in self._forges:
            if backend == GitHubCheckForge.name:
                app = self._config.github_app
                if app is None:
                    raise UsageError("this broker has no github_app configured")
                self._forges[backend] = GitHubCheckForge(self.github, app.installation_id)
            elif backend == GitLabNotesForge.name:
                self._forges[backend] = GitLabNotesForge(self.gitlab)
            else:
                raise UsageError(f"no forge shows {backend!r} requests")
        return self._forges[backend]

    def github(self) -> GitHubApi:
        """The GitHub App client."""
        app = _configured(self._config.github_app, "github_app")
        if self._github is None:
            pem = resolve_secret(app.private_key.get_secret_value(), "github_app private_key")
            self._github = GitHubApi.as_app(
                app.app_id, pem, app.installation_id, api_url=app.api_url
            )
        return self._github

    def gitlab(self) -> GitLabApi:
        """The GitLab client."""
        gl = _configured(self._config.gitlab, "gitlab section")
        if self._gitlab is None:
            token = resolve_secret(gl.token.get_secret_value(), "gitlab token")
            self._gitlab = GitLabApi(gl.url, private_token=token)
        return self._gitlab

    # -- best effort: the decision stands even when the forge cannot be updated ----------------

    def show_outcome(self, row: ApprovalRow, status: str, decision: Decision) -> None:
        """Rewrite the request on the forge with its outcome."""
        self._best_effort(row, "show the outcome", lambda f, s: f.show_outcome(s, status, decision))

    def show_progress(self, row: ApprovalRow, approvers: list[str], needed: int) -> None:
        """ "1 of 2 approvals" on the check run or the note while pending."""
        self._best_effort(row, "show progress", lambda f, s: f.show_progress(s, approvers, needed))

    def reply(self, row: ApprovalRow, text: str) -> None:
        """Answer on the forge's thread, where it has one."""
        self._best_effort(row, "reply", lambda f, s: f.reply(s, text), shown_only=False)

    def _best_effort(
        self,
        row: ApprovalRow,
        what: str,
        act: Callable[[Forge, Shown], None],
        *,
        shown_only: bool = True,
    ) -> None:
        """``act`` on the forge of ``row`` (one it was shown on, with ``shown_only``); a forge
        that fails is logged: the decision stands either way."""
        if (shown_only and row.forge_ref is None) or row.backend not in FORGES:
            return
        try:
            act(self.forge(row.backend), shown(row))
        except (AirlockError, ValueError) as exc:
            log.warning("approval %s: could not %s on the forge: %s", row.request_id, what, exc)


def _configured(section: _Section | None, name: str) -> _Section:
    if section is None:
        raise UsageError(f"this broker has no {name} configured")
    return section
