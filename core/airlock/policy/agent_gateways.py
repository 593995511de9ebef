"""Policy models of the agent-native gateways: model API (``kind: llm``) and MCP (``kind: mcp``).

    LlmGatewayConfig   provider preset, held key (a variable name), allowed models, budget,
                       rules on the tool calls the model asks for
    McpGatewayConfig   a stdio command or a streamable-HTTP upstream, the server's own variables
                       (held), rules on the tools the agent calls
    ToolRule           one rule on a tool call: tool-name glob, argument matchers, action

Tool rules follow the guardrails' vocabulary (``allow | deny | require_approval``, the strictest
matching rule wins, naming its id); nothing matching → the gateway's ``tools_default``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, StrictInt, field_validator, model_validator
from pydantic_core import PydanticCustomError

from airlock.policy._gateway_base import _check_env_name, _Gateway, _Section
from airlock.policy.guardrails import (
    GUARDRAIL_ID_PATTERN,
    Action,
    Decision,
    _check_regex,
    _compiled_text,
    _glob_match,
    strictest,
)

__all__ = [
    "LLM_PRESETS",
    "LlmBudget",
    "LlmCredential",
    "LlmGatewayConfig",
    "McpCredential",
    "McpGatewayConfig",
    "ToolRule",
    "decide_tool",
]

_ID_RE = re.compile(GUARDRAIL_ID_PATTERN)
_TOOL_GLOB_RE = re.compile(r"^[^\s]{1,128}$")

# provider → (default upstream, default key variable)
LLM_PRESETS: dict[str, tuple[str | None, str]] = {
    "anthropic": ("https://api.anthropic.com", "ANTHROPIC_API_KEY"),
    "openai": ("https://api.openai.com/v1", "OPENAI_API_KEY"),
    "openai-compatible": (None, "OPENAI_API_KEY"),
}


def _default_decision_id(kind: str) -> str:
    return f"airlock.default.{kind}_tool"


class ToolRule(_Section):
    """A rule on a tool call: which tool (glob), which arguments (RE2 per field), the action."""

    id: str = Field(
        description="Stable rule id, shown in events, errors and approvals.",
        json_schema_extra={"pattern": GUARDRAIL_ID_PATTERN},
    )
    tool: str = Field(
        description="Tool-name glob, case-sensitive ('*' matches any characters), e.g. Bash, "
        "mcp__github__*."
    )
    arguments: dict[str, str] = Field(
        default_factory=dict,
        description="Argument fields (dotted paths into the arguments object; '*' for the "
        "whole object as JSON) and an RE2 regex searched in each (strings as they are, other "
        "values as JSON). Every field given must match.",
    )
    action: Action = Field(description="allow | deny | require_approval.")
    description: str = Field(default="", description="Free text, shown with the decision.")

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not _ID_RE.match(value) or value.startswith(("airlock.", "builtin.")):
            raise PydanticCustomError(
                "airlock_rule_id",
                "rule id '{id}' must be 1-64 of a-z 0-9 - _ . (not starting with airlock.)",
                {"id": value[:64]},
            )
        return value

    @field_validator("tool")
    @classmethod
    def _tool_shape(cls, value: str) -> str:
        if not _TOOL_GLOB_RE.match(value):
            raise PydanticCustomError(
                "airlock_tool_glob", "tool glob must be 1-128 characters without spaces"
            )
        return value

    @field_validator("arguments")
    @classmethod
    def _regexes(cls, value: dict[str, str]) -> dict[str, str]:
        for regex in value.values():
            _check_regex(regex)
        return value

    def matches(self, name: str, arguments: Any) -> bool:
        """True when the tool ``name`` and its ``arguments`` meet every condition."""
        if not _glob_match(self.tool, name, "", True):
            return False
        return all(
            _argument_matches(arguments, path, regex) for path, regex in self.arguments.items()
        )


def _argument_matches(arguments: Any, path: str, regex: str) -> bool:
    node = arguments
    if path != "*":
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return False
            node = node[part]
    text = node if isinstance(node, str) else json.dumps(node, sort_keys=True, ensure_ascii=False)
    return _compiled_text(regex).search(text) is not None


def decide_tool(
    name: str, arguments: Any, rules: Sequence[ToolRule], default: Action, kind: str
) -> Decision:
    """The strictest matching rule's decision, or ``default`` (rule id airlock.default.*)."""
    found = strictest(Decision(r.action, r.id) for r in rules if r.matches(name, arguments))
    return found if found is not None else Decision(default, _default_decision_id(kind))


def _unique_ids(rules: tuple[ToolRule, ...]) -> tuple[ToolRule, ...]:
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise PydanticCustomError(
                "airlock_duplicate", "tool rule ids must be unique: {id}", {"id": rule.id}
            )
        seen.add(rule.id)
    return rules


class _ToolGateway(_Gateway):
    """A gateway that judges tool calls (the model's, or the agent's to an MCP server)."""

    tool_rules: tuple[ToolRule, ...] = Field(
        default=(),
        description="Rules on tool calls: tool-name glob, argument matchers, "
        "allow | deny | require_approval (the strictest match wins).",
    )
    tools_default: Action = Field(
        default="allow", description="What happens to a tool call no rule matches."
    )

    @field_validator("tool_rules")
    @classmethod
    def _ids(cls, value: tuple[ToolRule, ...]) -> tuple[ToolRule, ...]:
        return _unique_ids(value)


# ---------------------------------------------------------------------------------- model API


class LlmCredential(_Section):
    """The model API key, by variable name (held by Airlock, never given to the agent)."""

    env: str = Field(
        description="Variable holding the API key.",
        json_schema_extra={"pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
    )

    @field_validator("env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        return _check_env_name(value)


class LlmBudget(_Section):
    """Per-session limits; a request past any of them is denied (403, recorded)."""

    requests: StrictInt | None = Field(default=None, ge=1, description="Model requests.")
    input_tokens: StrictInt | None = Field(
        default=None, ge=1, description="Input tokens, as the provider reports them."
    )
    output_tokens: StrictInt | None = Field(
        default=None, ge=1, description="Output tokens, as the provider reports them."
    )


class LlmGatewayConfig(_ToolGateway):
    """A model-API gateway: the agent talks to it as to the provider, with a session ticket."""

    kind: Literal["llm"] = Field(description="llm")
    provider: Literal["anthropic", "openai", "openai-compatible"] = Field(
        description="API preset: anthropic (Messages API), openai or openai-compatible "
        "(Chat Completions)."
    )
    upstream: str | None = Field(
        default=None,
        description="Base URL of the provider (default per preset; required for "
        "openai-compatible), e.g. https://api.anthropic.com.",
    )
    credential: LlmCredential | None = Field(
        default=None,
        description="The API key's variable (default ANTHROPIC_API_KEY / OPENAI_API_KEY).",
    )
    allowed_models: tuple[str, ...] = Field(
        default=(), description="Model-name globs the agent may use; empty: any."
    )
    budget: LlmBudget = Field(default_factory=LlmBudget)
    record_text_limit: StrictInt = Field(
        default=65536,
        ge=0,
        le=16 * 1024 * 1024,
        description="Characters of each message's text recorded (the rest is cut, marked).",
    )

    @model_validator(mode="after")
    def _upstream_known(self) -> LlmGatewayConfig:
        if self.upstream is None and LLM_PRESETS[self.provider][0] is None:
            raise PydanticCustomError(
                "airlock_upstream_url",
                "provider openai-compatible needs upstream: the server's base URL (…/v1)",
            )
        if self.upstream is not None and not re.match(r"^https?://[^/@\s]+", self.upstream):
            raise PydanticCustomError(
                "airlock_upstream_url",
                "upstream must be an http:// or https:// URL with a host and no credentials",
            )
        return self

    @property
    def upstream_url(self) -> str:
        """The provider's base URL (the preset's when none is given)."""
        return (self.upstream or LLM_PRESETS[self.provider][0] or "").rstrip("/")

    @property
    def key_env(self) -> str:
        """The variable that holds the API key."""
        return self.credential.env if self.credential else LLM_PRESETS[self.provider][1]


# ---------------------------------------------------------------------------------------- MCP


class McpCredential(_Section):
    """Variables the MCP server needs (tokens …): given to the server only, withheld from the
    agent and registered with the masker."""

    env: tuple[str, ...] = Field(default=(), description="Variable names passed to the server.")
    bearer_env: str | None = Field(
        default=None,
        description="With upstream: the variable holding a bearer token sent to the server.",
    )

    @field_validator("bearer_env")
    @classmethod
    def _bearer_name(cls, value: str | None) -> str | None:
        return None if value is None else _check_env_name(value)

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_env_name(v) for v in value)


class McpGatewayConfig(_ToolGateway):
    """An MCP gateway: a stdio server Airlock starts, or a streamable-HTTP upstream it fronts."""

    kind: Literal["mcp"] = Field(description="mcp")
    command: tuple[str, ...] = Field(
        default=(), description="argv of a stdio MCP server, e.g. [npx, -y, server-x]."
    )
    upstream: str | None = Field(
        default=None, description="URL of a streamable-HTTP MCP server (instead of command)."
    )
    credential: McpCredential | None = Field(default=None)
    record_result_limit: StrictInt = Field(
        default=65536,
        ge=0,
        le=64 * 1024 * 1024,
        description="Characters of each tool result recorded (the rest is cut, marked).",
    )

    @model_validator(mode="after")
    def _one_server(self) -> McpGatewayConfig:
        if bool(self.command) == (self.upstream is not None):
            raise PydanticCustomError(
                "airlock_mcp_server",
                "give exactly one of command: [ARGV…] (a stdio server) or upstream: URL "
                "(a streamable-HTTP server)",
            )
        return self
