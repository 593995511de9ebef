"""The job state that `airlock credentials` leaves for the job's later commands: broker URL,
job token and issued values, in a 0600 file outside the workspace. No network here, so reading
it costs `airlock run` nothing when there is no broker."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airlock.errors import UsageError

__all__ = ["JobState", "default_state_dir", "forget_job_state", "load_job_state", "save_job_state"]

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
