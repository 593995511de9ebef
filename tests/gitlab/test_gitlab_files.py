"""airlock.ci.gitlab: dotenv reports GitLab accepts, env scripts a shell reads back exactly."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import airlock.ci.gitlab as gl
from airlock.ci.gitlab import (
    DOTENV_MAX_BYTES,
    format_dotenv,
    format_env_script,
    section_end,
    section_start,
    shell_quote,
    write_dotenv,
    write_env_script,
)
from airlock.errors import UsageError


def test_public_api_is_pinned() -> None:
    assert sorted(gl.__all__) == sorted(
        [
            "DOTENV_MAX_BYTES",
            "DOTENV_MAX_VARIABLES",
            "format_dotenv",
            "format_env_script",
            "section_end",
            "section_start",
            "shell_quote",
            "write_dotenv",
            "write_env_script",
        ]
    )


def test_dotenv_lines() -> None:
    assert format_dotenv({"AIRLOCK_SESSION_ID": "s-1", "AIRLOCK_VERIFIED": "ok"}) == (
        "AIRLOCK_SESSION_ID=s-1\nAIRLOCK_VERIFIED=ok\n"
    )


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\0b"])
def test_dotenv_refuses_multiline_values(value: str) -> None:
    with pytest.raises(UsageError, match="one"):
        format_dotenv({"NAME": value})


@pytest.mark.parametrize("name", ["A-B", "1A", "", "A B", "ÄB"])
def test_dotenv_refuses_names_gitlab_rejects(name: str) -> None:
    with pytest.raises(UsageError, match="invalid variable name"):
        format_dotenv({name: "v"})


def test_dotenv_limits() -> None:
    with pytest.raises(UsageError, match="GitLab accepts 20"):
        format_dotenv({f"V{i}": "x" for i in range(21)})
    with pytest.raises(UsageError, match="over 5120 bytes"):
        format_dotenv({"BIG": "x" * DOTENV_MAX_BYTES})


def test_files_are_private(tmp_path: Path) -> None:
    dotenv, script = tmp_path / "a.env", tmp_path / "creds.sh"
    write_dotenv(dotenv, {"A": "1"})
    write_env_script(script, {"B": "2"})
    for path in (dotenv, script):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[A-Z][A-Z0-9_]{0,10}", fullmatch=True),
        st.text(alphabet=st.characters(blacklist_characters="\0", codec="utf-8")),
        max_size=4,
    )
)
def test_env_script_round_trips_through_a_real_shell(values: dict[str, str]) -> None:
    script = format_env_script(values) + 'for n in "$@"; do printf "%s\\0" "${!n}"; done\n'
    names = list(values)
    done = subprocess.run(["bash", "-c", script, "bash", *names], capture_output=True, check=True)
    got = done.stdout.decode("utf-8", "surrogateescape").split("\0")[:-1] if names else []
    assert got == [values[n] for n in names]


def test_shell_quote_neutralises_substitutions(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    value = f"$(touch {marker})`touch {marker}`'; touch {marker}; '"
    out = subprocess.run(
        ["sh", "-c", f"printf %s {shell_quote(value)}"], capture_output=True, text=True, check=True
    )
    assert out.stdout == value
    assert not marker.exists()


def test_env_script_refuses_nul_and_bad_names() -> None:
    with pytest.raises(UsageError, match="NUL"):
        format_env_script({"A": "x\0y"})
    with pytest.raises(UsageError):
        format_env_script({"A;rm": "x"})


def test_sections() -> None:
    start = section_start("airlock_finalize", "Airlock:\nfinalize", now=100)
    assert (
        start
        == "\x1b[0Ksection_start:100:airlock_finalize[collapsed=true]\r\x1b[0KAirlock: finalize"
    )
    assert (
        section_end("airlock_finalize", now=101)
        == "\x1b[0Ksection_end:101:airlock_finalize\r\x1b[0K"
    )
    with pytest.raises(UsageError):
        section_start("bad name", "x")
