"""Capture fixtures: the compiled pty drain, and runs that read the pty either way."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from airlock.capture import build_drain, drain


@pytest.fixture(scope="session")
def compiled_drain(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The compiled pty drain (``_ptydrain.c``): the built one, else built into a temporary
    directory (skipped without a C compiler: then the loop's own read is the only one)."""
    try:
        built = importlib.import_module("airlock.capture._ptydrain")
    except ImportError:
        pass
    else:
        if drain.current(built):
            return built
    if not sys.platform.startswith("linux"):
        pytest.skip("the compiled drain is Linux only")
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the loop's own pty read is the only one")
    path = build_drain.build(Path(tmp_path_factory.mktemp("drain")))
    spec = importlib.util.spec_from_file_location("_ptydrain", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert drain.current(module)
    return module


@pytest.fixture(params=["native", "python"])
def drain_way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runners started in this test read a pty through the compiled drain, or in their loop."""
    if request.param == "python":
        monkeypatch.setenv("AIRLOCK_PTY_DRAIN", "python")
    else:
        module = request.getfixturevalue("compiled_drain")
        monkeypatch.setattr(drain, "load", lambda: module)
    return str(request.param)
