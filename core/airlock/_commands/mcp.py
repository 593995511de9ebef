"""``airlock mcp -- SERVER_CMD …``: run a stdio MCP server behind Airlock's MCP gateway.

The agent starts ``airlock mcp -- npx -y some-server`` where it would start the server itself;
every ``tools/call`` and ``resources/read`` is recorded in a session of its own and judged by the
tool rules of the policy's ``kind: mcp`` gateway (``--gateway NAME``; without a policy every tool
is allowed and recorded). ``--write-config FILE`` instead writes the agent's MCP config (Claude
Code's ``--mcp-config`` format) for the MCP gateways ``airlock run`` exported.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from airlock._commands._common import add_flag, add_session_flags
from airlock.errors import UsageError

__all__ = ["register"]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "mcp",
        help="run a stdio MCP server behind the MCP gateway, or write the agent's MCP config",
        description=(
            "Relay a stdio MCP server (airlock mcp -- SERVER_CMD …): record every tools/call "
            "and resources/read, mask results, and refuse or hold tool calls per the policy's "
            "kind: mcp gateway. Or, with --write-config, write an MCP config that points the "
            "agent at the gateways `airlock run` started."
        ),
    )
    add_session_flags(parser)
    add_flag(
        parser,
        "--gateway",
        env="AIRLOCK_MCP_GATEWAY",
        help="the policy's kind: mcp gateway whose tool rules apply (default: the first)",
    )
    add_flag(
        parser,
        "--write-config",
        env="AIRLOCK_MCP_CONFIG",
        type=Path,
        help="write the agent's MCP config (JSON, 0600) for the exported MCP gateways and exit",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- SERVER_CMD [ARGS...]")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    argv = list(args.command)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if args.write_config:
        from airlock.gateway.mcp.config import write_agent_config

        names = write_agent_config(args.write_config, os.environ)
        print(f"airlock: MCP config for {', '.join(names)} in {args.write_config}", file=sys.stderr)
        return 0
    if not argv:
        raise UsageError(
            "no MCP server command given",
            hint="usage: airlock mcp [OPTIONS] -- SERVER_CMD [ARGS...]",
        )
    return _serve(args, argv)


def _serve(args: argparse.Namespace, argv: list[str]) -> int:
    from airlock._commands._common import session_policy
    from airlock.audit import SessionWriter, load_signing_key
    from airlock.ci import detect_identity
    from airlock.events import EventType
    from airlock.gate import ApprovalBackend, DenyBackend, FileBackend, approver
    from airlock.gateway.mcp.stdio import serve_stdio
    from airlock.jobs.request import build_masker, correlation_key

    policy, _ = session_policy(args)
    config = _gateway_config(policy, args.gateway, argv)
    key = load_signing_key(args.key)
    environ = dict(os.environ)
    masker = build_masker(policy, environ, correlation_key(key))
    writer = SessionWriter.create(args.sessions)
    writer.append(
        EventType.SESSION_START,
        {"identity": detect_identity(environ).to_dict(), "argv": ["airlock", "mcp", *argv]},
    )
    writer.append(
        EventType.GATEWAY_STARTED,
        {"name": config.name, "kind": "mcp", "address": "stdio", "upstream": " ".join(argv)},
    )
    backend: ApprovalBackend
    if policy.approvals.backend == "file":
        backend = FileBackend(Path(policy.approvals.dir), key=key, record=writer.append)
    else:  # stdio is the agent's: no terminal to ask on; held calls are refused
        backend = DenyBackend(key=key, record=writer.append, reason="no approver for airlock mcp")
    status = 0
    try:
        status = asyncio.run(
            serve_stdio(
                config,
                masker=masker,
                record=writer.append,
                approve=approver(
                    backend, float(policy.approvals.timeout), session_id=writer.session_id
                ),
                session_id=writer.session_id,
                environ=environ,
            )
        )
    finally:
        writer.append(EventType.SESSION_END, {"exit_status": status})
        writer.seal(key, exit_code=status)
    return status


def _gateway_config(policy: Any, name: str | None, argv: list[str]) -> Any:
    from airlock.policy.agent_gateways import McpGatewayConfig

    declared = [g for g in policy.gateways if isinstance(g, McpGatewayConfig)]
    if name:
        declared = [g for g in declared if g.name == name]
        if not declared:
            raise UsageError(
                f"the policy has no kind: mcp gateway named {name!r}",
                hint="check --gateway against the policy's gateways:",
            )
    if declared:
        return declared[0].model_copy(update={"command": tuple(argv), "upstream": None})
    return McpGatewayConfig(name="mcp", kind="mcp", command=tuple(argv))
