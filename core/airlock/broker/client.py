"""The job's side of the broker: exchange, revoke, checkpoints, and the job state file.

The job state (broker URL, job token, issued values) is written 0600 outside the workspace, so
that `airlock run` can register every issued value with its masker and `airlock credentials
--revoke` can end the leases at job end. Nothing here prints or logs a value.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from airlock.errors import (
    AirlockError,
    InfrastructureUnavailable,
    PolicyDenied,
    UsageError,
)

__all__ = ["BrokerClient", "JobState", "default_state_dir", "load_job_state"]

_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
_STATE_FILE = "job.json"


@dataclass(frozen=True)
class JobState:
    broker: str
    job_token: str = field(repr=False)
    rule_id: str
    leases: tuple[dict[str, Any], ...] = field(repr=False)  # lease_id, grant, expires_at, values

    def values(self) -> dict[str, str]:
        """Every issued value, by variable name (secrets: for masking and export only)."""
        out: dict[str, str] = {}
        for lease in self.leases:
            out.update(lease.get("values", {}))
        return out

    def to_json(self) -> str:
        return json.dumps(
            {
                "broker": self.broker,
                "job_token": self.job_token,
                "rule_id": self.rule_id,
                "leases": list(self.leases),
            }
        )


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """$AIRLOCK_STATE_DIR, else the runner's temp dir, else ~/.local/state — never the workspace."""
    env = os.environ if environ is None else environ
    if env.get("AIRLOCK_STATE_DIR"):
        return Path(env["AIRLOCK_STATE_DIR"])
    for name in ("RUNNER_TEMP", "XDG_STATE_HOME"):
        if env.get(name):
            return Path(env[name]) / "airlock"
    return Path.home() / ".local" / "state" / "airlock"


def save_job_state(state: JobState, state_dir: Path) -> Path:
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / _STATE_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(state.to_json())
    tmp.replace(path)
    return path


def load_job_state(state_dir: Path) -> JobState | None:
    path = state_dir / _STATE_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the job state at {path}") from exc
    return JobState(raw["broker"], raw["job_token"], raw.get("rule_id", ""), tuple(raw["leases"]))


def forget_job_state(state_dir: Path) -> None:
    (state_dir / _STATE_FILE).unlink(missing_ok=True)


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
