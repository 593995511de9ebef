"""The model gateway's guardrails, sans-I/O: allowed models, the session budget, tool calls."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from airlock.policy.agent_gateways import LlmBudget
from airlock.policy.guardrails import _glob_match

__all__ = ["Budget", "model_allowed"]

MODEL_RULE = "airlock.llm.model"
BUDGET_RULE = "airlock.llm.budget"


def model_allowed(model: str, globs: tuple[str, ...]) -> bool:
    """True when ``globs`` is empty or one of them matches ``model`` ('*': any characters)."""
    return not globs or any(_glob_match(g, model, "", True) for g in globs)


@dataclass
class Budget:
    """What this session has used against its limits. A request is refused once any limit is
    reached; tokens are known only after a response, so the request that crosses a token limit
    completes and the next one is refused."""

    limits: LlmBudget
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take_request(self) -> str | None:
        """Count a request, or say which limit refuses it (nothing is counted then)."""
        with self._lock:
            limits = self.limits
            if limits.requests is not None and self.requests >= limits.requests:
                return f"the session's budget of {limits.requests} model requests is used up"
            if limits.input_tokens is not None and self.input_tokens >= limits.input_tokens:
                return f"the session's budget of {limits.input_tokens} input tokens is used up"
            if limits.output_tokens is not None and self.output_tokens >= limits.output_tokens:
                return f"the session's budget of {limits.output_tokens} output tokens is used up"
            self.requests += 1
            return None

    def charge(self, input_tokens: int, output_tokens: int) -> None:
        """Add a response's token usage."""
        with self._lock:
            self.input_tokens += max(0, input_tokens)
            self.output_tokens += max(0, output_tokens)

    def used(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }
