"""A tiny agent for the `airlock run` test: the anthropic SDK and the MCP SDK, configured only
from what Airlock exports (and `airlock mcp --write-config`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anthropic
import anyio
import httpx2
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client

with open("agent-env.json", "w") as out:  # for the test: everything this agent could see
    json.dump(dict(os.environ), out)
with anthropic.Anthropic(max_retries=0) as model:
    reply = model.messages.create(
        model="claude-test", max_tokens=50, messages=[{"role": "user", "content": "add 2 and 3"}]
    )
print("model:", reply.content[0].text)

subprocess.run(
    [sys.executable, "-m", "airlock._cli", "mcp", "--write-config", "mcp.json"], check=True
)
with open("mcp.json") as config:
    server = json.load(config)["mcpServers"]["tools"]


async def tools() -> None:
    http = httpx2.AsyncClient(headers=server["headers"])
    async with http, Client(streamable_http_client(server["url"], http_client=http)) as client:
        names = sorted(t.name for t in (await client.list_tools()).tools)
        print("tools:", ",".join(names))
        result = await client.call_tool("add", {"a": 2, "b": 3})
        print("add:", result.structured_content)


anyio.run(tools)
