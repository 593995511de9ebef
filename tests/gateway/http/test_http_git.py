"""git clone, fetch and push through the HTTP gateway to a real `git http-backend`."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.gateway.http.conftest import GatewayFactory, Recorder
from tests.gateway.http.git_server import GitHttpBackend
from tests.gateway.http.servers import ThreadedServer

from airlock.gate import Operation
from airlock.gateway.tickets import Ticket

GIT_USER = "forge-bot"
GIT_PASSWORD = "forge-password-" + "k" * 20


def git(
    *args: str, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(cwd or "/nonexistent"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Agent",
        "GIT_AUTHOR_EMAIL": "agent@example.com",
        "GIT_COMMITTER_NAME": "Agent",
        "GIT_COMMITTER_EMAIL": "agent@example.com",
    }
    return subprocess.run(
        ["git", "-c", "init.defaultBranch=main", "-c", "credential.helper=", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
    )


@pytest.fixture
def forge(tmp_path: Path) -> Iterator[tuple[ThreadedServer, GitHttpBackend, Path]]:
    root = tmp_path / "forge"
    bare = root / "acme" / "api.git"
    bare.parent.mkdir(parents=True)
    git("init", "--bare", str(bare))
    seed = tmp_path / "seed"
    git("init", str(seed))
    (seed / "README.md").write_text("hello from the forge\n")
    git("add", "README.md", cwd=seed)
    git("commit", "-m", "initial", cwd=seed)
    git("push", str(bare), "main", cwd=seed)
    app = GitHttpBackend(root, GIT_USER, GIT_PASSWORD)
    server = ThreadedServer(app).start()
    yield server, app, bare
    server.stop()


def _forge_gateway(make_gateway: GatewayFactory, url: str, **kwargs: Any) -> Any:
    return make_gateway(
        upstream_url=url,
        credential={"env": {"basic_user": "GIT_USER", "basic_password": "GIT_PASSWORD"}},
        environ={"GIT_USER": GIT_USER, "GIT_PASSWORD": GIT_PASSWORD},
        record_bodies=512,
        **kwargs,
    )


def _remote(gw: Any, ticket: Ticket) -> str:
    host, port = gw.address
    return f"http://airlock:{ticket.value}@{host}:{port}/acme/api.git"


def test_direct_access_without_the_credential_is_refused(forge: Any, tmp_path: Path) -> None:
    server, _, _ = forge
    result = git("clone", f"{server.url}/acme/api.git", str(tmp_path / "direct"), check=False)
    assert result.returncode != 0


def test_clone_fetch_push_through_the_gateway(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder, forge: Any, tmp_path: Path
) -> None:
    server, app, bare = forge
    gw = _forge_gateway(make_gateway, server.url)
    work = tmp_path / "work"
    clone = git("clone", _remote(gw, ticket), str(work))
    assert clone.returncode == 0, clone.stderr
    assert (work / "README.md").read_text() == "hello from the forge\n"

    (work / "change.txt").write_text("agent was here\n")
    git("add", "change.txt", cwd=work)
    git("commit", "-m", "agent change", cwd=work)
    push = git("push", "origin", "main", cwd=work, check=False)
    assert push.returncode == 0, push.stderr
    assert git("--git-dir", str(bare), "log", "--format=%s", "-1").stdout.strip() == "agent change"

    other = tmp_path / "other"
    git("clone", str(bare), str(other))
    (other / "more.txt").write_text("x\n")
    git("add", "more.txt", cwd=other)
    git("commit", "-m", "upstream change", cwd=other)
    git("push", str(bare), "main", cwd=other)
    fetch = git("fetch", "origin", cwd=work, check=False)
    assert fetch.returncode == 0, fetch.stderr
    assert (
        git("log", "--format=%s", "-1", "origin/main", cwd=work).stdout.strip() == "upstream change"
    )

    # what the forge saw: only the held credential, never the ticket
    authorised = [auth for _, _, auth in app.seen if auth]
    assert authorised and all(GIT_PASSWORD not in a and ticket.value not in a for a in authorised)
    paths = [e["path"] for e in recorder.of("http.request")]
    assert "/acme/api.git/git-upload-pack" in paths and "/acme/api.git/git-receive-pack" in paths
    log = recorder.text()
    assert ticket.value not in log and GIT_PASSWORD not in log


@pytest.mark.parametrize("approved", [True, False])
def test_push_held_for_approval(
    make_gateway: GatewayFactory,
    ticket: Ticket,
    recorder: Recorder,
    forge: Any,
    tmp_path: Path,
    approved: bool,
) -> None:
    server, _, bare = forge
    held: list[Operation] = []

    async def approve(op: Operation) -> bool:
        held.append(op)
        return approved

    rules = [
        {
            "id": "protect-main",
            "http": {"methods": ["POST"], "path": "/*/*/git-receive-pack"},
            "action": "require_approval",
        }
    ]
    gw = _forge_gateway(make_gateway, server.url, rules=rules, approve=approve)
    work = tmp_path / "work"
    git("clone", _remote(gw, ticket), str(work))
    (work / "f.txt").write_text("change\n")
    git("add", "f.txt", cwd=work)
    git("commit", "-m", "held change", cwd=work)
    push = git("push", "origin", "main", cwd=work, check=False)
    assert len(held) == 1 and held[0].rule_id == "protect-main"
    assert held[0].text.startswith("POST /acme/api.git/git-receive-pack\nbody: ")
    last = git("--git-dir", str(bare), "log", "--format=%s", "-1").stdout.strip()
    if approved:
        assert push.returncode == 0, push.stderr
        assert last == "held change"
    else:
        assert push.returncode != 0
        assert "403" in push.stderr
        assert last == "initial"
    # the pack's real size is recorded, refused or not (it is also in the approval text)
    size = int(held[0].text.split("body: ", 1)[1].split(" bytes", 1)[0])
    pushes = {r["id"] for r in recorder.of("http.request") if r["path"].endswith("receive-pack")}
    assert size in [
        r["request_body"]["size"] for r in recorder.of("http.response") if r["id"] in pushes
    ]


def test_large_push_held_for_approval_is_spooled_and_forwarded_intact(
    make_gateway: GatewayFactory, ticket: Ticket, forge: Any, tmp_path: Path
) -> None:
    from airlock.gateway.http import ProxySettings

    server, _, bare = forge
    held: list[Operation] = []

    async def approve(op: Operation) -> bool:
        held.append(op)
        return True

    rules = [
        {
            "id": "protect-main",
            "http": {"methods": ["POST"], "path": "/*/*/git-receive-pack"},
            "action": "require_approval",
        }
    ]
    gw = _forge_gateway(
        make_gateway,
        server.url,
        rules=rules,
        approve=approve,
        settings=ProxySettings(inspect_limit=64 * 1024),
    )
    work = tmp_path / "work"
    git("clone", _remote(gw, ticket), str(work))
    (work / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))  # incompressible: a 2 MiB pack
    git("add", "big.bin", cwd=work)
    git("commit", "-m", "big change", cwd=work)
    push = git("push", "origin", "main", cwd=work, check=False)
    assert push.returncode == 0, push.stderr
    assert git("--git-dir", str(bare), "log", "--format=%s", "-1").stdout.strip() == "big change"
    # git probes a large push with a flush packet first: a no-op that passes without asking,
    # so the approver is asked once, about the whole pack (held beyond the in-memory limit)
    (op,) = held
    assert int(op.text.split("\n")[1].split()[1]) > 2 * 1024 * 1024
    fsck = git("--git-dir", str(bare), "fsck", "--full", check=False)
    assert fsck.returncode == 0, fsck.stderr
