"""What is new in a request, sans-I/O: an agent resends the whole conversation every turn, the
log records each message once.

Each request's messages get a chained hash (``h_i = sha256(h_{i-1} | sha256(message_i))``); the
longest prefix already seen in this session is named by its hash and length, and only the
messages after it are recorded. Parallel conversations (sub-agents) each find their own prefix.
Tool definitions are recorded by hash, in full only the first time a hash is seen.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

__all__ = ["Conversation", "Delta", "canonical_hash"]

_MAX_PREFIXES = 200_000  # hashes remembered; the oldest are forgotten first


def canonical_hash(value: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``value``."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Delta:
    """``new`` messages follow a prefix of ``prefix_len`` messages already recorded
    (``prefix_hash`` is its chained hash, '' when none); ``head`` names the whole request."""

    prefix_len: int
    prefix_hash: str
    new: list[Any]
    head: str


class Conversation:
    """Remembers the message prefixes this session has recorded, and the tool hashes."""

    def __init__(self) -> None:
        self._prefixes: OrderedDict[str, None] = OrderedDict()
        self._tools: set[str] = set()

    def delta(self, system: Any, messages: list[Any]) -> Delta:
        """The messages not yet recorded (the system prompt counts as the chain's start)."""
        chain = canonical_hash(system) if system is not None else ""
        hashes = []
        for message in messages:
            chain = hashlib.sha256(f"{chain}|{canonical_hash(message)}".encode()).hexdigest()
            hashes.append(chain)
        known = 0
        for index in range(len(hashes), 0, -1):
            if hashes[index - 1] in self._prefixes:
                known = index
                break
        for value in hashes:
            self._prefixes[value] = None
            self._prefixes.move_to_end(value)
        while len(self._prefixes) > _MAX_PREFIXES:
            self._prefixes.popitem(last=False)
        prefix = hashes[known - 1] if known else ""
        return Delta(known, prefix, messages[known:], hashes[-1] if hashes else "")

    def tools(self, tools: list[Any], name_of: Any) -> tuple[list[dict[str, str]], dict[str, Any]]:
        """``[{name, sha256}]`` for every tool, and the definitions not seen before by hash."""
        listed, new = [], {}
        for tool in tools:
            digest = canonical_hash(tool)
            listed.append({"name": str(name_of(tool)), "sha256": digest})
            if digest not in self._tools:
                self._tools.add(digest)
                new[digest] = tool
        return listed, new
