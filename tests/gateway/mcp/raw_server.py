"""A hand-written stdio 'MCP server' that misbehaves on purpose (line protocol only)."""

from __future__ import annotations

import json
import sys


def send(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
    sys.stdout.flush()


def ask_the_client() -> str:
    """A request of the server's own (sampling), answered by the agent."""
    send({"id": "srv-1", "method": "sampling/createMessage", "params": {"maxTokens": 5,
          "messages": [{"role": "user", "content": {"type": "text", "text": "ok?"}}]}})  # fmt: skip
    for reply in sys.stdin:
        answer = json.loads(reply)
        if answer.get("id") == "srv-1" and "method" not in answer:
            return str(answer["result"]["content"]["text"])
    return "no answer"


for line in sys.stdin:
    message = json.loads(line)
    if "id" not in message or "method" not in message:
        continue
    name = message.get("params", {}).get("name")
    if name == "notify":
        send({"method": "notifications/message", "params": {"level": "info", "data": "working"}})
    if name == "ask":
        name = "asked: " + ask_the_client()
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
