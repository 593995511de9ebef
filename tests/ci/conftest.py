"""CI tests behave the same on a laptop and inside a real CI job."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
_CI_PREFIXES = ("GITHUB_", "ACTIONS_", "RUNNER_", "CI_", "GITLAB_", "AIRLOCK_")


@pytest.fixture(autouse=True)
def _clean_ci_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(_CI_PREFIXES) or name in {"CI", "GITLAB_CI"}:
            monkeypatch.delenv(name)


def _variables(name: str) -> dict[str, str]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return dict(data["variables"])


@pytest.fixture
def github_env() -> dict[str, str]:
    return _variables("github-actions.json")


@pytest.fixture
def gitlab_env() -> dict[str, str]:
    return _variables("gitlab-ci.json")
