"""A small MCP server of ours on the official SDK (stdio), for the gateway tests."""

from __future__ import annotations

import os
import sys

from mcp.server.mcpserver import MCPServer

SECRET = "ghp_" + "ToolResultSecret0123" * 2
app = MCPServer("airlock-test")


@app.tool()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@app.tool()
def delete_file(path: str) -> str:
    """Delete a file (pretend)."""
    return f"deleted {path}"


@app.tool()
def run_sql(sql: str) -> str:
    """Run SQL (pretend)."""
    return f"ran {sql}"


@app.tool()
def read_config() -> str:
    """Return a config that holds a secret and the server's held token."""
    return f"token={SECRET} held={os.environ.get('TEST_MCP_TOKEN', '')}"


@app.tool()
def big(size: int) -> str:
    """A result of ``size`` bytes."""
    return "x" * size


@app.tool()
def crash() -> str:
    """Exit the server mid-call."""
    sys.stdout.flush()
    os._exit(3)


@app.resource("config://app")
def config() -> str:
    return "setting=1"


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--http":  # streamable HTTP on 127.0.0.1:PORT/mcp
        app.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        app.run()
