"""A hand-written stdio 'MCP server' that misbehaves on purpose (line protocol only)."""

from __future__ import annotations

import json
import sys

for line in sys.stdin:
    message = json.loads(line)
    if "id" not in message:
        continue
    name = message.get("params", {}).get("name")
    if name == "garbage":
        sys.stdout.write("this is not json\n")
    elif name == "invalid":  # JSON with the request's id, but neither result nor error
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": message["id"], "oops": 1}) + "\n")
    elif name == "huge":
        body = {
            "content": [{"type": "text", "text": "y" * int(message["params"]["arguments"]["n"])}]
        }
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": body}) + "\n")
    elif name == "exit":
        sys.stdout.flush()
        sys.exit(7)
    else:
        result = {"content": [{"type": "text", "text": f"ok {name}"}], "isError": False}
        sys.stdout.write(
            json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}) + "\n"
        )
    sys.stdout.flush()
