"""Exchange the job's OIDC token at the broker for its grants (and central-gateway tickets),
and keep what was issued in the 0600 job state, so that later sessions mask every value and
finalize revokes the leases. ``airlock credentials`` and the root action's steps call this;
where the values are exported is theirs to decide.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from airlock.brokerclient import (
    BrokerClient,
    JobState,
    default_state_dir,
    forget_job_state,
    load_job_state,
    save_job_state,
)

__all__ = ["issue_credentials", "revoke_job_leases"]


def issue_credentials(
    broker: str,
    audience: str,
    grants: Sequence[str],
    *,
    state_dir: Path,
    gateways: Sequence[str] = (),
    id_token_variable: str = "AIRLOCK_ID_TOKEN",  # noqa: S107 (a variable name)
) -> JobState:
    """Exchange, get a ticket per central gateway (as a lease ``gateway:NAME`` whose value is
    ``<NAME>_TICKET``), save the job state in ``state_dir`` and return it."""
    from airlock.oidc import acquire_token

    token = acquire_token(audience, gitlab_variable=id_token_variable)
    client = BrokerClient(broker)
    try:
        state = client.exchange(token, list(grants))
        for name in gateways:
            ticket = client.gateway_ticket(state.job_token, name)
            prefix = name.upper().replace("-", "_")
            lease = {
                "lease_id": str(ticket.get("lease_id", f"ticket-{name}")),
                "grant": f"gateway:{name}",
                "expires_at": ticket["expires_at"],
                "values": {f"{prefix}_TICKET": ticket["ticket"]},
            }
            state = dataclasses.replace(state, leases=(*state.leases, lease))
    finally:
        client.close()
    save_job_state(state, state_dir)
    return state


def revoke_job_leases(state_dir: Path | None = None) -> int | None:
    """End this job's leases at the broker (the job state `airlock credentials` saved in
    ``state_dir``, default :func:`default_state_dir`) and forget the state; returns how many
    leases ended, or None when there is no job state (nothing was issued, nothing to end)."""
    state_dir = state_dir or default_state_dir()
    state = load_job_state(state_dir)
    if state is None:
        return None
    client = BrokerClient(state.broker)
    try:
        revoked = client.revoke(state.job_token)
    finally:
        client.close()
    forget_job_state(state_dir)
    return revoked
