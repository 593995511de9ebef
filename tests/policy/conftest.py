"""Policy tests behave the same whatever AIRLOCK_* variables the caller has set."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _clean_airlock_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("AIRLOCK_", "GITHUB_", "CI_", "GITLAB_")):
            monkeypatch.delenv(name)
