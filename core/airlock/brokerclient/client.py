"""One HTTP client for the broker's ``/v1`` API, used by every job-side caller.

Errors (the root is :class:`~airlock.errors.AirlockError`, never an httpx exception)::

    unreachable, 404, or 5xx       InfrastructureUnavailable  (exit 85: fail closed)
    401 / 403 / 429                PolicyDenied               (the broker's short reason)
    400 / 413 / 422                UsageError                 (the request is wrong)

A message carries the broker's short reason and its URL, never a token: the job token and the
gateway token travel only in the ``Authorization`` header.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from airlock.brokerclient.jobstate import JobState
from airlock.errors import AirlockError, InfrastructureUnavailable, PolicyDenied, UsageError

__all__ = ["AsyncBrokerClient", "BrokerClient"]

_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
_HINT = "check --broker and that the broker is up"


class BrokerClient:
    """Talks to one broker."""

    def __init__(self, url: str, *, http: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self._http = http or httpx.Client(timeout=_TIMEOUT, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    # -- credentials and the job's life -----------------------------------------------------------

    def exchange(self, token: str, grants: Sequence[str]) -> JobState:
        body = self._post("/v1/exchange", {"token": token, "grants": list(grants)})
        return JobState(self.url, body["job_token"], body.get("rule_id", ""), tuple(body["leases"]))

    def gateway_ticket(self, job_token: str, gateway: str) -> dict[str, Any]:
        """A ticket for a central gateway, bound to this job (central mode)."""
        return self._post("/v1/gateway-tickets", {"gateway": gateway}, bearer=job_token)

    def revoke(self, job_token: str) -> int:
        body = self._post("/v1/revoke", {}, bearer=job_token)
        return int(body["revoked"])

    # -- the witness ------------------------------------------------------------------------------

    def checkpoint(self, job_token: str, session_id: str, seq: int, head: str) -> dict[str, Any]:
        path = f"/v1/sessions/{session_id}/checkpoints"
        return self._post(path, {"seq": seq, "head": head}, bearer=job_token)

    def checkpoints(self, session_id: str) -> list[dict[str, Any]]:
        body = self._get(f"/v1/sessions/{session_id}/checkpoints")
        return list(body["checkpoints"])

    def public_keys(self) -> list[dict[str, str]]:
        return list(self._get("/.well-known/airlock-keys")["keys"])

    # -- approvals --------------------------------------------------------------------------------

    def create_approval(self, job_token: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Register an approval request; the broker shows it on the forge."""
        return self._post("/v1/approvals", dict(body), bearer=job_token)

    def approval_status(self, job_token: str, request_id: str, wait: float = 0) -> dict[str, Any]:
        """The request's status; with ``wait`` the broker holds the answer until a decision."""
        return self._send("GET", approval_path(request_id, wait), None, job_token, wait)

    # -- plumbing ---------------------------------------------------------------------------------

    def _get(self, path: str) -> dict[str, Any]:
        return self._send("GET", path, None, None)

    def _post(
        self, path: str, body: dict[str, Any], *, bearer: str | None = None
    ) -> dict[str, Any]:
        return self._send("POST", path, body, bearer)

    def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        bearer: str | None,
        wait: float = 0,
    ) -> dict[str, Any]:
        timeout: Any = httpx.USE_CLIENT_DEFAULT  # the client's own, unless a long-poll
        if wait > 0:
            timeout = httpx.Timeout(wait + 15, connect=5.0)
        try:
            response = self._http.request(
                method, self.url + path, json=body, headers=_auth(bearer), timeout=timeout
            )
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, exc) from None
        return _result(response, self.url)


class AsyncBrokerClient:
    """The approval long-poll for asyncio callers (``async with AsyncBrokerClient(url)``)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(timeout=_TIMEOUT, follow_redirects=False)

    async def __aenter__(self) -> AsyncBrokerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def approval_status(
        self, job_token: str, request_id: str, wait: float = 0
    ) -> dict[str, Any]:
        """As :meth:`BrokerClient.approval_status`."""
        try:
            response = await self._http.get(
                self.url + approval_path(request_id, wait),
                headers=_auth(job_token),
                timeout=httpx.Timeout(wait + 15, connect=5.0),
            )
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, exc) from None
        return _result(response, self.url)


def approval_path(request_id: str, wait: float) -> str:
    return f"/v1/approvals/{request_id}?wait={max(0.0, wait):.1f}"


def _auth(bearer: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {bearer}"} if bearer else {}


def _unreachable(url: str, exc: Exception) -> InfrastructureUnavailable:
    return InfrastructureUnavailable(
        f"could not reach the broker at {url}: {type(exc).__name__}", hint=_HINT
    )


def _result(response: httpx.Response, url: str) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    if response.status_code >= 400:
        raise _error(response.status_code, data, url)
    return data


def _error(status: int, data: Mapping[str, Any], url: str) -> AirlockError:
    message = str(data.get("message") or f"HTTP {status}")[:300]
    if status in (401, 403, 429):
        return PolicyDenied(f"the broker refused: {message}", rule_id=data.get("rule_id"))
    if status in (400, 413, 422):
        return UsageError(f"the broker rejected the request: {message}")
    return InfrastructureUnavailable(
        f"the broker at {url} failed: {message}", hint="see the broker's log"
    )
