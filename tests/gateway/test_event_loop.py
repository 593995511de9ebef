"""A gateway thread runs uvloop when it is installed, asyncio's loop otherwise or when told."""

from __future__ import annotations

import asyncio
import importlib.util
import sys

import pytest

from airlock.gateway._loop import new_loop


def test_asyncio_is_forced_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRLOCK_EVENT_LOOP", "asyncio")
    loop, name = new_loop()
    try:
        assert name == "asyncio" and type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()


def test_uvloop_when_installed_and_asyncio_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRLOCK_EVENT_LOOP", raising=False)
    loop, name = new_loop()
    loop.close()
    assert name == ("uvloop" if importlib.util.find_spec("uvloop") else "asyncio")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    loop, name = new_loop()
    try:
        assert name == "asyncio" and isinstance(loop, asyncio.AbstractEventLoop)
    finally:
        loop.close()
