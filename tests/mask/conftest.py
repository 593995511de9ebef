"""Fixtures for the masker tests."""

from __future__ import annotations

import pytest
from tests.mask.helpers import ENGINES


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Each test taking ``engine`` runs once per prefilter engine."""
    return str(request.param)
