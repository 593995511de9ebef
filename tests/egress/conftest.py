"""Fixtures for the egress proxy tests: a test CA, local servers, a proxy whose DNS maps the
``.test`` names to 127.0.0.1, and the ``net.connect`` events it records."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from tests.support.tls_ca import LocalCA

from airlock.egress import EgressProxy, build_relay, native, start_egress_proxy
from airlock.egress import proxy as egress_proxy
from airlock.gate.file import decide, pending
from airlock.gate.interface import Approve
from airlock.policy import parse_policy


class Events:
    """What the proxy recorded, in order (thread-safe)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def __call__(self, kind: str, data: Mapping[str, Any]) -> None:
        with self._lock:
            self.items.append((kind, dict(data)))

    def net(self) -> list[dict[str, Any]]:
        with self._lock:
            return [d for k, d in self.items if k == "net.connect"]

    def wait_net(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """The ``net.connect`` events once ``count`` are there (a tunnel is recorded when both
        ends have closed, a moment after the client exits)."""
        deadline = time.monotonic() + timeout
        while len(found := self.net()) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return found


class Resolver:
    """The proxy's DNS in tests: ``.test`` names are 127.0.0.1; every lookup is remembered."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host.endswith(".test"):
            return ["127.0.0.1"]
        raise OSError("not a test name")


@pytest.fixture
def resolver() -> Resolver:
    return Resolver()


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return LocalCA.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def events() -> Events:
    return Events()


ProxyFactory = Callable[..., EgressProxy]


@pytest.fixture
def start_proxy(events: Events, resolver: Resolver) -> Iterator[ProxyFactory]:
    """``start_proxy(network_yaml, approve=None)``: a running proxy for that ``network:``."""
    running: list[EgressProxy] = []

    def start(network_yaml: str, approve: Approve | None = None) -> EgressProxy:
        policy = parse_policy(network_yaml)
        assert policy.network is not None
        proxy = start_egress_proxy(policy.network, record=events, approve=approve, resolve=resolver)
        running.append(proxy)
        return proxy

    yield start
    for proxy in running:
        proxy.close()


@pytest.fixture
def site_dir(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "hello.txt").write_text("hello through the proxy\n")
    return root


def decide_first(directory: Path, verdict: bool) -> None:
    """Decide the first pending request of the file gate in ``directory`` (a human, scripted)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = list(pending(directory))
        if found:
            decide(directory, str(found[0]["request_id"]), approved=verdict, by="tester")
            return
        time.sleep(0.02)


@pytest.fixture(scope="session")
def compiled_relay(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The compiled tunnel relay (``_relay.c``): the built one, else built into a temporary
    directory (skipped without a C compiler: then the Python relay is the only one)."""
    try:
        built = importlib.import_module("airlock.egress._relay")
    except ImportError:
        pass
    else:
        if native.current(built):
            return built
    if not sys.platform.startswith("linux"):
        pytest.skip("the compiled relay is Linux only")
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the pure-Python relay is the only one")
    path = build_relay.build(Path(tmp_path_factory.mktemp("relay")))
    spec = importlib.util.spec_from_file_location("_relay", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert native.current(module)
    return module


@pytest.fixture(params=["native", "python"])
def relay_way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Proxies started in this test relay tunnels the compiled way, or the pure-Python way."""
    if request.param == "python":
        monkeypatch.setenv("AIRLOCK_EGRESS_RELAY", "python")
    else:
        module = request.getfixturevalue("compiled_relay")
        monkeypatch.setattr(egress_proxy, "load", lambda: module)
    return str(request.param)
