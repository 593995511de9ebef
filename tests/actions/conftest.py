"""Fixtures for the GitHub Actions tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.actions.helpers import Runner
from tests.support.moto_server import moto_server

__all__ = ["moto_server"]  # re-exported fixture


@pytest.fixture
def runner(tmp_path: Path) -> Runner:
    """A fake runner step with its own GITHUB_* files under tmp_path."""
    return Runner(tmp_path)
