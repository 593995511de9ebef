"""Fixtures for the approval gate tests: a signing key, a recorder, an operation."""

from __future__ import annotations

from typing import Any

import pytest

from airlock.audit import SigningKey
from airlock.gate import Operation


class Recorder:
    """Collects ``record(type, data)`` calls as the session writer would receive them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, type_: str, data: Any) -> None:
        self.events.append((type_, dict(data)))

    def types(self) -> list[str]:
        return [t for t, _ in self.events]


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def op() -> Operation:
    return Operation(
        kind="sql",
        text="DROP TABLE users",
        rule_id="no-drop",
        gateway="appdb",
        repository="acme/api",
        commit="0" * 40,
        run_id="42",
        session_id="s-1",
    )
