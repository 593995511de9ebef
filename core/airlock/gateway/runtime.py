"""Start the gateways a session policy declares, and tell the agent how to reach them.

Held mode in one place: each gateway reads its upstream credential from the runner's
environment; those variables are then withheld from the agent, which gets instead an address on
127.0.0.1 and a session-bound ticket (registered with the masker, so it never reaches the log).

    PostgreSQL gateway NAME  →  <NAME>_DATABASE_URL (and, for the first one, DATABASE_URL,
                                PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE)
    HTTP gateway NAME        →  <NAME>_URL, <NAME>_TOKEN (send as `Authorization: Bearer`, or
                                as the password of basic auth, e.g. for git)
    model gateway (llm)      →  ANTHROPIC_BASE_URL + ANTHROPIC_API_KEY (the ticket), or
                                OPENAI_BASE_URL + OPENAI_API_KEY; and <NAME>_URL, <NAME>_TOKEN
    MCP gateway NAME         →  <NAME>_MCP_URL, <NAME>_TOKEN (streamable HTTP; see
                                ``airlock.gateway.mcp.config`` for the agent's MCP config)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from airlock.errors import ConfigError
from airlock.gate.interface import Approve, Record
from airlock.gateway.tickets import Ticket, TicketCheck
from airlock.mask import Masker
from airlock.policy import Policy
from airlock.policy.agent_gateways import LlmGatewayConfig, McpGatewayConfig
from airlock.policy.gateways import (
    GatewayConfig,
    HttpCredential,
    HttpEnvCredential,
    HttpGatewayConfig,
    PostgresCredential,
    PostgresEnvCredential,
    PostgresGatewayConfig,
)

__all__ = ["RunningGateways", "held_variables", "start_gateways"]

_AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@dataclass
class RunningGateways:
    """What ``airlock run`` needs from the gateways: the agent's variables, and a way to stop."""

    env: dict[str, str] = field(default_factory=dict, repr=False)
    described: list[dict[str, Any]] = field(default_factory=list)
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def close(self) -> None:
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                close()
        self._closers.clear()


def held_variables(policy: Policy) -> set[str]:
    """Names of the runner's variables that hold gateway credentials: the agent never sees them."""
    names: set[str] = set()
    for gateway in policy.gateways:
        if isinstance(gateway, LlmGatewayConfig):
            names.add(gateway.key_env)
        elif isinstance(gateway, McpGatewayConfig):
            cred = gateway.credential
            names |= (
                set(cred.env) | ({cred.bearer_env} if cred.bearer_env else set()) if cred else set()
            )
        elif isinstance(gateway, PostgresGatewayConfig):
            names |= _postgres_variables(gateway.credential)
        elif gateway.credential is not None:
            names |= _http_variables(gateway.credential)
    return names


def _postgres_variables(cred: PostgresCredential) -> set[str]:
    names = {cred.env.user, cred.env.password} if cred.env is not None else set()
    return names | ({cred.password_env} if cred.password_env else set())


def _http_variables(cred: HttpCredential) -> set[str]:
    names: set[str] = set()
    if cred.env is not None:
        names |= {v for v in (cred.env.bearer, cred.env.basic_user, cred.env.basic_password) if v}
    if cred.header is not None:
        names.add(cred.header.value_env)
    if cred.aws_sigv4 is not None:
        names |= set(_AWS_VARIABLES)
    return names


def start_gateways(
    policy: Policy,
    *,
    session_id: str,
    masker: Masker,
    record: Record,
    approve: Approve,
    environ: Mapping[str, str],
    ticket_for: Callable[[str], TicketCheck] | None = None,
    grant_values: Mapping[str, Mapping[str, str]] | None = None,
) -> RunningGateways:
    """Start every gateway of ``policy``; on any failure, stop those already started.

    ``ticket_for`` (central mode) gives each gateway a ticket check of its own, e.g. one that
    asks the broker; then no session ticket is made and none is exported. ``grant_values`` are
    the values the broker issued to this job, by grant: a gateway whose credential is
    ``{grant: NAME}`` logs in upstream with them.
    """
    running = RunningGateways()
    try:
        for value in _held_values(policy, environ):
            masker.add_secret(value, "gateway-credential")
        for index, declared in enumerate(policy.gateways):
            ticket: TicketCheck
            if isinstance(declared, LlmGatewayConfig | McpGatewayConfig):
                _start_agent_gateway(
                    running, declared, session_id, masker, record, approve, environ
                )
                continue
            config, environ = _with_grant(declared, environ, grant_values or {})
            if ticket_for is not None:
                ticket = ticket_for(config.name)
            else:
                local = Ticket.issue(session_id, config.name)
                masker.add_secret(local.value, "gateway-ticket")
                ticket = local
            common: dict[str, Any] = {
                "masker": masker,
                "record": record,
                "approve": approve,
                "ticket": ticket,
                "guardrails": policy.guardrails,
                "defaults": policy.guardrail_defaults,
                "environ": environ,
            }
            if isinstance(config, PostgresGatewayConfig):
                _start_postgres(running, config, ticket, common, first=index == _first_pg(policy))
            elif isinstance(config, HttpGatewayConfig):
                _start_http(running, config, ticket, common)
    except BaseException:
        running.close()
        raise
    return running


_GRANT_USER, _GRANT_SECRET = "_AIRLOCK_GRANT_USER", "_AIRLOCK_GRANT_SECRET"
_TOKEN_NAMES = ("GITHUB_TOKEN", "GITLAB_TOKEN")


def _with_grant(
    config: GatewayConfig, environ: Mapping[str, str], grants: Mapping[str, Mapping[str, str]]
) -> tuple[GatewayConfig, Mapping[str, str]]:
    """A ``{grant: NAME}`` credential turned into the env form the gateways read, with the
    values the broker issued (they are held here and never given to the agent)."""
    cred = config.credential
    grant = getattr(cred, "grant", None)
    if grant is None:
        return config, environ
    values = grants.get(grant)
    if not values:
        raise ConfigError(
            f"gateway {config.name}: grant {grant!r} was not issued to this job",
            hint=f"run `airlock credentials --grant {grant} --hold` before `airlock run`",
        )
    if isinstance(config, PostgresGatewayConfig):
        held = {_GRANT_USER: values.get("PGUSER", ""), _GRANT_SECRET: values.get("PGPASSWORD", "")}
        new_cred: Any = PostgresCredential(
            env=PostgresEnvCredential(user=_GRANT_USER, password=_GRANT_SECRET)
        )
    else:
        token = next((values[n] for n in _TOKEN_NAMES if n in values), next(iter(values.values())))
        held = {_GRANT_SECRET: token}
        new_cred = HttpCredential(env=HttpEnvCredential(bearer=_GRANT_SECRET))
    return config.model_copy(update={"credential": new_cred}), {**environ, **held}


def _held_values(policy: Policy, environ: Mapping[str, str]) -> list[str]:
    """The values of the held variables that are secrets: not user names (an upstream user
    ``postgres`` registered as a secret would mask every ``/usr/lib/postgresql`` path)."""
    names = held_variables(policy) - _user_variables(policy)
    return [environ[name] for name in sorted(names) if environ.get(name)]


def _user_variables(policy: Policy) -> set[str]:
    names: set[str] = set()
    for gateway in policy.gateways:
        cred = gateway.credential
        if isinstance(gateway, PostgresGatewayConfig) and gateway.credential.env is not None:
            names.add(gateway.credential.env.user)
        elif isinstance(cred, HttpCredential) and cred.env is not None and cred.env.basic_user:
            names.add(cred.env.basic_user)
    return names


def _first_pg(policy: Policy) -> int:
    return next(
        (i for i, g in enumerate(policy.gateways) if isinstance(g, PostgresGatewayConfig)), -1
    )


def _prefix(name: str) -> str:
    return name.upper().replace("-", "_")


def _start_postgres(
    running: RunningGateways,
    config: PostgresGatewayConfig,
    ticket: TicketCheck,
    common: dict[str, Any],
    *,
    first: bool,
) -> None:
    from airlock.gateway.postgres.native import IO_PATH
    from airlock.gateway.postgres.rowpath import ROW_PATH
    from airlock.gateway.postgres.server import start_in_thread

    gateway = start_in_thread(config, **common)
    running._closers.append(gateway.close)
    host, port = gateway.address[0], gateway.address[1]
    database = config.upstream.database
    if isinstance(ticket, Ticket):  # central mode: jobs bring their own tickets from the broker
        _export_postgres(running, config.name, ticket.value, host, port, database, first=first)
    running.described.append(
        {
            "name": config.name,
            "kind": "postgres",
            "address": f"{host}:{port}",
            "database": database,
            "row_path": ROW_PATH,
            "io_path": IO_PATH,
        }
    )


def _export_postgres(
    running: RunningGateways,
    name: str,
    ticket: str,
    host: str,
    port: int,
    database: str,
    *,
    first: bool,
) -> None:
    url = f"postgresql://airlock:{quote(ticket, safe='')}@{host}:{port}/{quote(database)}"
    running.env[f"{_prefix(name)}_DATABASE_URL"] = url + "?sslmode=disable"
    if first:
        running.env.update(
            DATABASE_URL=url + "?sslmode=disable",
            PGHOST=host,
            PGPORT=str(port),
            PGUSER="airlock",
            PGPASSWORD=ticket,
            PGDATABASE=database,
            PGSSLMODE="disable",  # loopback to the gateway; the gateway does TLS upstream
        )


def _start_http(
    running: RunningGateways, config: HttpGatewayConfig, ticket: TicketCheck, common: dict[str, Any]
) -> None:
    from airlock.gateway.http.server import start_in_thread

    gateway = start_in_thread(config, **common)
    running._closers.append(gateway.close)
    prefix = _prefix(config.name)
    running.env[f"{prefix}_URL"] = gateway.url
    if isinstance(ticket, Ticket):
        running.env[f"{prefix}_TOKEN"] = ticket.value
    running.described.append(
        {
            "name": config.name,
            "kind": "http",
            "address": gateway.url,
            "upstream": str(config.upstream),
        }
    )


def _start_agent_gateway(
    running: RunningGateways,
    config: LlmGatewayConfig | McpGatewayConfig,
    session_id: str,
    masker: Masker,
    record: Record,
    approve: Approve,
    environ: Mapping[str, str],
) -> None:
    """The model and MCP gateways: local tickets only (central mode does not serve them yet)."""
    ticket = Ticket.issue(session_id, config.name)
    masker.add_secret(ticket.value, "gateway-ticket")
    prefix = _prefix(config.name)
    common: dict[str, Any] = {
        "masker": masker,
        "record": record,
        "approve": approve,
        "ticket": ticket,
        "environ": environ,
    }
    if isinstance(config, LlmGatewayConfig):
        from airlock.gateway.llm import agent_env, start_in_thread

        llm = start_in_thread(config, **common)
        running._closers.append(llm.close)
        running.env.update(agent_env(config, llm.url, ticket.value))
        running.env.update({f"{prefix}_URL": llm.url, f"{prefix}_TOKEN": ticket.value})
        running.described.append(
            {
                "name": config.name,
                "kind": "llm",
                "provider": config.provider,
                "address": llm.url,
                "upstream": config.upstream_url,
            }
        )
        return
    from airlock.gateway.mcp.http import start_in_thread as start_mcp

    mcp = start_mcp(config, **common)
    running._closers.append(mcp.close)
    running.env.update({f"{prefix}_MCP_URL": mcp.url, f"{prefix}_TOKEN": ticket.value})
    running.described.append(
        {
            "name": config.name,
            "kind": "mcp",
            "address": mcp.url,
            "upstream": config.upstream or " ".join(config.command),
        }
    )
