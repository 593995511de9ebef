"""Every module says what it exports, and exports what it says."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import airlock

MODULES = sorted(info.name for info in pkgutil.walk_packages(airlock.__path__, prefix="airlock."))


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if name.rsplit(".", 1)[-1].startswith("_") and exported is None:
        return  # private helpers need no __all__
    assert exported is not None, f"{name} has no __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert missing == []
    assert len(set(exported)) == len(exported)


def test_top_level_api() -> None:
    assert airlock.__all__ == ["AirlockError", "ExitCode", "__version__"]


def test_capture_exports_nothing_that_moved_to_jobs() -> None:
    import airlock.capture

    assert airlock.capture.__all__ == []
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("airlock.capture.session")
    assert "run_session" in importlib.import_module("airlock.jobs.run").__all__
