"""The few GitHub REST calls the approval backends make, through PyGithub's requester.

Two ways to authenticate: as a GitHub App installation (the broker: check runs, deployment
reviews; PyGithub mints and refreshes the installation token) or with a token (a job's
``GITHUB_TOKEN``: comments and reviews). Errors become :class:`GateError` with the status and
GitHub's message, never a token.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

import requests
from github import Auth, Github, GithubException

from airlock.audit.visible import visible_json
from airlock.gate.interface import GateError
from airlock.gate.rules import PERMISSION_LEVELS, Clicker, same_id

__all__ = ["GitHubApi", "GitHubRights"]

_PER_PAGE = 100
_MAX_PAGES = 20
_HINT = "check the GitHub App's permissions (checks, pull requests, members, deployments)"


class GitHubApi:
    """One authenticated GitHub REST client."""

    def __init__(self, auth: Auth.Auth, *, api_url: str = "https://api.github.com") -> None:
        self.api_url = api_url.rstrip("/")
        self._github = Github(
            auth=auth,
            base_url=self.api_url,
            timeout=15,
            retry=None,
            seconds_between_requests=None,
            seconds_between_writes=None,
        )

    @classmethod
    def as_app(
        cls, app_id: int | str, private_key: str, installation_id: int, *, api_url: str
    ) -> GitHubApi:
        """Authenticated as one installation of a GitHub App."""
        auth = Auth.AppAuth(app_id, private_key).get_installation_auth(installation_id)
        return cls(auth, api_url=api_url)

    @classmethod
    def with_token(cls, token: str, *, api_url: str = "https://api.github.com") -> GitHubApi:
        """Authenticated with a token (e.g. the job's GITHUB_TOKEN)."""
        return cls(Auth.Token(token), api_url=api_url)

    def close(self) -> None:
        """Release the HTTP session."""
        self._github.close()

    def call(
        self,
        verb: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        missing_ok: bool = False,
    ) -> Any:
        """``verb path`` with a JSON ``body``; None for a 404 when ``missing_ok``. Every
        string in ``body`` goes out :func:`~airlock.audit.visible.visible` (agent text with bidi
        or zero-width characters must not reach a check run or comment raw)."""
        requester = self._github.requester
        body = visible_json(body) if body is not None else None
        try:
            _, data = requester.requestJsonAndCheck(
                verb, path, parameters=dict(params) if params else None, input=body
            )
        except GithubException as exc:
            if missing_ok and exc.status == 404:
                return None
            message = exc.data.get("message", "") if isinstance(exc.data, dict) else ""
            raise GateError(
                f"GitHub refused {verb} {path}: {exc.status} {str(message)[:200]}", hint=_HINT
            ) from None
        except requests.RequestException as exc:
            raise GateError(
                f"cannot reach GitHub at {self.api_url}: {type(exc).__name__}",
                hint="check the network path to GitHub and api_url",
            ) from None
        return data

    # -- the calls ----------------------------------------------------------------------------

    def pull_request(self, repo: str, number: int) -> dict[str, Any]:
        """``GET /repos/{repo}/pulls/{number}``: head sha, author."""
        data: dict[str, Any] = self.call("GET", f"/repos/{repo}/pulls/{int(number)}")
        return data

    def permission_level(self, repo: str, clicker: Clicker) -> int:
        """The clicker's permission on ``repo`` on the :data:`PERMISSION_LEVELS` scale.

        Asked by login (GitHub has no by-id form), then confirmed by id: GitHub's answer names
        the account it describes, and when that is not the clicker (the login was renamed or
        taken by another account since the click) the clicker gets no permission at all."""
        if not clicker.user_id:
            return 0
        path = f"/repos/{repo}/collaborators/{_seg(clicker.login)}/permission"
        data = self.call("GET", path, missing_ok=True) or {}
        user = data.get("user") if isinstance(data, dict) else None
        if not isinstance(user, dict) or not same_id(str(user.get("id", "")), clicker.user_id):
            return 0
        role = str(data.get("role_name") or data.get("permission") or "none")
        return PERMISSION_LEVELS.get(role, PERMISSION_LEVELS.get(str(data.get("permission")), 0))

    def in_team(self, team: str, clicker: Clicker) -> bool:
        """True when the clicker's id is among the members of ``org/team-slug`` (by id, never
        by login: a login may have changed hands since the click)."""
        org, _, slug = team.partition("/")
        if not org or not slug or not clicker.user_id:
            return False
        path = f"/orgs/{_seg(org)}/teams/{_seg(slug)}/members"
        for page in range(1, _MAX_PAGES + 1):
            params = {"per_page": _PER_PAGE, "page": page}
            members = self.call("GET", path, params=params, missing_ok=True) or []
            if not isinstance(members, list):
                return False
            if any(
                isinstance(m, dict) and same_id(str(m.get("id", "")), clicker.user_id)
                for m in members
            ):
                return True
            if len(members) < _PER_PAGE:
                return False
        raise GateError(
            f"team {team} has more than {_MAX_PAGES * _PER_PAGE} members: too many to check",
            hint="name a smaller team in approvers.teams",
        )


class GitHubRights:
    """:class:`~airlock.gate.rules.Rights` for one repository, asked of GitHub at click time."""

    def __init__(self, api: GitHubApi, repo: str) -> None:
        self._api = api
        self._repo = repo

    def permission_level(self, clicker: Clicker) -> int:
        return self._api.permission_level(self._repo, clicker)

    def in_team(self, team: str, clicker: Clicker) -> bool:
        return self._api.in_team(team, clicker)


def _seg(value: str) -> str:
    return urllib.parse.quote(value, safe="")
