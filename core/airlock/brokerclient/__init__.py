"""The job's side of the broker: one HTTP client for every call a job makes to the broker,
and the job state file that `airlock credentials` leaves for later steps.

Only httpx and the standard library: a bare ``pip install airlock-ci`` (no ``[broker]`` extra)
imports it, so the CLI's job-side commands fail with an exit-80/85 message, never a traceback.

    BrokerClient                 client.py    exchange, tickets, revoke, checkpoints, keys,
                                              approvals (create, status)
     └─ AsyncBrokerClient        client.py    the approval long-poll, for asyncio callers
    JobState + save/load/forget  jobstate.py  0600 file outside the workspace
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airlock.brokerclient.jobstate import (
    JobState,
    default_state_dir,
    forget_job_state,
    load_job_state,
    save_job_state,
)

if TYPE_CHECKING:
    from airlock.brokerclient.client import AsyncBrokerClient, BrokerClient

__all__ = [
    "AsyncBrokerClient",
    "BrokerClient",
    "JobState",
    "default_state_dir",
    "forget_job_state",
    "load_job_state",
    "save_job_state",
]


def __getattr__(name: str) -> Any:
    # The clients import httpx (and, through it, click/rich/pygments when installed: ~0.1 s);
    # `airlock run` without a broker only needs the job state file.
    if name in ("AsyncBrokerClient", "BrokerClient"):
        from airlock.brokerclient import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
