"""Recorded CI environments (tests/ci/fixtures). tests/conftest.py clears the real ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def _variables(name: str) -> dict[str, str]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return dict(data["variables"])


@pytest.fixture
def github_env() -> dict[str, str]:
    return _variables("github-actions.json")


@pytest.fixture
def gitlab_env() -> dict[str, str]:
    return _variables("gitlab-ci.json")
