"""Fixtures for the GitHub Actions tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.actions.helpers import Runner, make_act_repo
from tests.support.moto_server import moto_server

__all__ = ["moto_server"]  # re-exported fixture


@pytest.fixture
def runner(tmp_path: Path) -> Runner:
    """A fake runner step with its own GITHUB_* files under tmp_path."""
    return Runner(tmp_path)


@pytest.fixture
def act_repo(tmp_path: Path) -> Path:
    """A fresh git repository with this checkout's actions and the test workflows, for act."""
    return make_act_repo(tmp_path / "repo")
