"""The model-API gateway (``kind: llm``): Airlock holds the provider key, the agent gets a
session ticket; every exchange is recorded (``llm.request`` / ``llm.response``) and judged
(allowed models, session budget, rules on the tool calls the model asks for).

See ``proxy.py`` for the order of checks and docs/agent-gateways.md for what can be held.
"""

from airlock.gateway.llm.server import (
    LlmGateway,
    LlmGatewayError,
    ThreadedLlmGateway,
    agent_env,
    serve_llm,
    start_in_thread,
)

__all__ = [
    "LlmGateway",
    "LlmGatewayError",
    "ThreadedLlmGateway",
    "agent_env",
    "serve_llm",
    "start_in_thread",
]
