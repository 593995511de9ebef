"""The job's side of the broker: exchange, revoke, checkpoints, and the job state file.

The job state (broker URL, job token, issued values) is written 0600 outside the workspace, so
that `airlock run` can register every issued value with its masker and `airlock credentials
--revoke` can end the leases at job end. Nothing here prints or logs a value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from airlock.broker.jobstate import (
    JobState,
    default_state_dir,
    forget_job_state,
    load_job_state,
    save_job_state,
)
from airlock.errors import (
    AirlockError,
    InfrastructureUnavailable,
    PolicyDenied,
    UsageError,
)

__all__ = [
    "BrokerClient",
    "JobState",
    "default_state_dir",
    "forget_job_state",
    "load_job_state",
    "save_job_state",
]

_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class BrokerClient:
    """Talks to one broker. Errors carry the broker's short reason, never a token."""

    def __init__(self, url: str, *, http: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self._http = http or httpx.Client(timeout=_TIMEOUT, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def exchange(self, token: str, grants: Sequence[str]) -> JobState:
        body = self._post("/v1/exchange", {"token": token, "grants": list(grants)})
        return JobState(self.url, body["job_token"], body.get("rule_id", ""), tuple(body["leases"]))

    def gateway_ticket(self, job_token: str, gateway: str) -> dict[str, Any]:
        """A ticket for a central gateway, bound to this job (central mode)."""
        return self._post("/v1/gateway-tickets", {"gateway": gateway}, bearer=job_token)

    def revoke(self, job_token: str) -> int:
        body = self._post("/v1/revoke", {}, bearer=job_token)
        return int(body["revoked"])

    def checkpoint(self, job_token: str, session_id: str, seq: int, head: str) -> dict[str, Any]:
        path = f"/v1/sessions/{session_id}/checkpoints"
        return self._post(path, {"seq": seq, "head": head}, bearer=job_token)

    def checkpoints(self, session_id: str) -> list[dict[str, Any]]:
        body = self._get(f"/v1/sessions/{session_id}/checkpoints")
        return list(body["checkpoints"])

    def public_keys(self) -> list[dict[str, str]]:
        return list(self._get("/.well-known/airlock-keys")["keys"])

    def _get(self, path: str) -> dict[str, Any]:
        return self._send("GET", path, None, None)

    def _post(
        self, path: str, body: dict[str, Any], *, bearer: str | None = None
    ) -> dict[str, Any]:
        return self._send("POST", path, body, bearer)

    def _send(
        self, method: str, path: str, body: dict[str, Any] | None, bearer: str | None
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        try:
            response = self._http.request(method, self.url + path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise InfrastructureUnavailable(
                f"could not reach the broker at {self.url}",
                hint="check --broker and that the broker is up",
            ) from exc
        try:
            data: dict[str, Any] = response.json()
        except ValueError:
            data = {}
        if response.status_code >= 400:
            raise _error(response.status_code, data, self.url)
        return data


def _error(status: int, data: Mapping[str, Any], url: str) -> AirlockError:
    message = str(data.get("message") or f"HTTP {status}")
    if status in (401, 403, 429):
        return PolicyDenied(f"the broker refused: {message}", rule_id=data.get("rule_id"))
    if status in (400, 413):
        return UsageError(f"the broker rejected the request: {message}")
    return InfrastructureUnavailable(
        f"the broker at {url} failed: {message}", hint="see the broker's log"
    )
