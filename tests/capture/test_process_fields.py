"""Process fields in the log are masked: the working directory, every argv element, and an
argument strace cut short in the middle of a secret (issue 13, item 3)."""

from __future__ import annotations

import secrets
from pathlib import Path

from tests.support.airlock_cli import clean_env, events, only_session, run_airlock

STRACE_LIMIT = 65536  # strace -s: longer strings are cut after this many bytes


def _run(tmp_path: Path, secret: str, *argv: str, cwd: Path | None = None) -> Path:
    tmp_path.mkdir(exist_ok=True)
    policy = tmp_path / "airlock.yaml"
    policy.write_text("mask: {env: [K]}\ncapture: {exec: required}\n")
    sessions = tmp_path / "sessions"
    result = run_airlock(
        tmp_path,
        "run",
        "--policy",
        str(policy),
        "--sessions",
        str(sessions),
        "--",
        *argv,
        env=clean_env(tmp_path, K=secret),
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr
    assert secret.encode() not in result.stdout + result.stderr
    return only_session(sessions)


def test_a_secret_in_the_working_directory_is_masked(tmp_path: Path) -> None:
    secret = "cwd-" + secrets.token_hex(12)
    workdir = tmp_path / f"work-{secret}"
    inner = workdir / f"inner-{secret}"
    inner.mkdir(parents=True)
    session = _run(tmp_path, secret, "sh", "-c", f"cd {inner} && /bin/true", cwd=workdir)
    log = (session / "events.jsonl").read_bytes()
    assert secret.encode() not in log
    execs = [e["data"] for e in events(session) if e["type"] == "process.exec"]
    assert events(session)[0]["data"]["cwd"].endswith("/work-[MASKED:env:K]")
    true = next(e for e in execs if e["path"] == "/bin/true")
    assert true["cwd"].endswith("/inner-[MASKED:env:K]")


def test_an_argument_cut_inside_a_secret_masks_the_prefix(tmp_path: Path) -> None:
    secret = "ZqZ" + secrets.token_hex(16)
    for inside in (3, 17, len(secret) - 1):
        argument = ("a " * STRACE_LIMIT)[: STRACE_LIMIT - inside] + secret + " tail"
        session = _run(tmp_path / str(inside), secret, "/bin/true", argument)
        log = (session / "events.jsonl").read_bytes()
        root = next(e["data"] for e in events(session) if e["type"] == "process.exec")
        assert root["truncated"] is True
        assert secret[:inside].encode() not in log
        assert root["argv"][1].endswith("[MASKED:truncated]")


def test_a_secret_in_every_argv_element_is_masked(tmp_path: Path) -> None:
    secret = "argv-" + secrets.token_hex(12)
    session = _run(tmp_path, secret, "sh", "-c", 'exec /bin/echo "$@" >/dev/null', secret, secret)
    for e in events(session):
        if e["type"] == "process.exec":
            assert secret not in repr(e["data"])


def test_a_secret_that_is_not_utf8_is_masked_in_output_and_argv(tmp_path: Path) -> None:
    """A non-UTF-8 secret value (bytes in the environment) used to crash `airlock run` (87);
    strace's argv was decoded with U+FFFD before masking, so the rest of it showed."""
    import os
    import subprocess

    from tests.support.airlock_cli import AIRLOCK

    secret = b"bin-\xff\xfe-" + secrets.token_hex(8).encode()
    policy = tmp_path / "airlock.yaml"
    policy.write_text("mask: {env: [K]}\ncapture: {exec: required}\n")
    env = {os.fsencode(k): os.fsencode(v) for k, v in clean_env(tmp_path).items()}
    env[b"K"] = secret
    argv = [AIRLOCK, "run", "--policy", str(policy), "--sessions", str(tmp_path / "s"), "--"]
    result = subprocess.run(
        [*map(os.fsencode, argv), b"printf", b"x " + secret + b" y\n"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"x [MASKED:env:K] y\n"
    log = (only_session(tmp_path / "s") / "events.jsonl").read_bytes()
    assert secret[7:].decode() not in log.decode()
    execs = [e["data"] for e in events(only_session(tmp_path / "s")) if e["type"] == "process.exec"]
    assert execs[0]["argv"] == ["printf", "x [MASKED:env:K] y\n"]
