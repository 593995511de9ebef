"""The agent's MCP config: which MCP servers it talks to, pointed at Airlock's gateways.

``airlock run`` exports ``<NAME>_MCP_URL`` and ``<NAME>_TOKEN`` for every ``kind: mcp`` gateway;
:func:`agent_config` turns them into the ``mcpServers`` JSON that Claude Code reads with
``--mcp-config`` (and that other MCP clients read in the same shape): one streamable-HTTP entry
per gateway, the ticket as a bearer token.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airlock.errors import UsageError

__all__ = ["agent_config", "write_agent_config"]

_SUFFIX = "_MCP_URL"


def agent_config(environ: Mapping[str, str]) -> dict[str, Any]:
    """``{"mcpServers": {name: {type: http, url, headers}}}`` for the exported gateways."""
    servers: dict[str, Any] = {}
    for variable in sorted(environ):
        if not variable.endswith(_SUFFIX):
            continue
        prefix = variable[: -len(_SUFFIX)]
        token = environ.get(f"{prefix}_TOKEN", "")
        name = prefix.lower().replace("_", "-")
        servers[name] = {
            "type": "http",
            "url": environ[variable],
            "headers": {"Authorization": f"Bearer {token}"},
        }
    if not servers:
        raise UsageError(
            "no MCP gateway is exported to this process (no *_MCP_URL variable)",
            hint="declare a kind: mcp gateway in the policy and run this inside `airlock run`",
        )
    return {"mcpServers": servers}


def write_agent_config(path: Path, environ: Mapping[str, str]) -> list[str]:
    """Write :func:`agent_config` to ``path`` (0600: it holds tickets); the server names."""
    config = agent_config(environ)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(config, out, indent=2)
        out.write("\n")
    return list(config["mcpServers"])
