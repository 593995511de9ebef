"""airlock.ci.github: masks, heredoc-safe outputs and env, PATH, summary — parsed back as the
runner parses them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.actions.helpers import parse_file_commands

import airlock.ci.github as gh
from airlock.ci.github import (
    EXEC_HIJACK_VARIABLES,
    GitHubFiles,
    append_path,
    append_summary,
    escape_command_data,
    format_file_command,
    mask_commands,
    set_env,
    set_output,
)
from airlock.errors import UsageError


def unescape_command_data(data: str) -> str:
    """The runner's unescaping of a workflow command's data."""
    return data.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")


def test_public_api_is_pinned() -> None:
    assert sorted(gh.__all__) == sorted(
        [
            "EXEC_HIJACK_VARIABLES",
            "MAX_SUMMARY_BYTES",
            "GitHubFiles",
            "append_path",
            "append_summary",
            "error_annotation",
            "escape_command_data",
            "format_file_command",
            "mask_commands",
            "set_env",
            "set_output",
        ]
    )


def test_multiline_secret_is_masked_line_by_line() -> None:
    pem = "-----BEGIN KEY-----\nAAAA\r\nBBBB\n\n-----END KEY-----\n"
    assert mask_commands(pem) == [
        "::add-mask::-----BEGIN KEY-----",
        "::add-mask::-----END KEY-----",
        "::add-mask::AAAA",
        "::add-mask::BBBB",
    ]


def test_mask_escapes_percent_so_the_runner_registers_the_literal() -> None:
    (line,) = mask_commands("p%0Ass%25")
    data = line.removeprefix("::add-mask::")
    assert unescape_command_data(data) == "p%0Ass%25"


def test_blank_values_register_no_mask() -> None:
    assert mask_commands("") == []
    assert mask_commands(" \n\t\n") == []


@settings(max_examples=200)
@given(st.text())
def test_every_nonblank_line_is_masked_exactly(value: str) -> None:
    registered = {
        unescape_command_data(c.removeprefix("::add-mask::")) for c in mask_commands(value)
    }
    expected = {line.rstrip("\r") for line in value.split("\n") if line.rstrip("\r").strip()}
    assert registered == expected
    assert all("\n" not in c for c in mask_commands(value))


@settings(max_examples=200)
@given(
    name=st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True),
    value=st.text(alphabet=st.characters(blacklist_characters="\r")),
)
def test_output_block_round_trips_whatever_the_value(name: str, value: str) -> None:
    assert parse_file_commands(format_file_command(name, value)) == {name: value}


def test_value_cannot_close_the_block_and_inject_a_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tokens = iter(["a" * 32, "b" * 32])
    monkeypatch.setattr(gh.secrets, "token_hex", lambda _n: next(tokens))
    value = f"x\nghadelimiter_{'a' * 32}\nLD_PRELOAD=/tmp/evil.so"
    out = tmp_path / "out"
    set_output(out, "result", value)
    assert parse_file_commands(out.read_text()) == {"result": value}
    assert f"ghadelimiter_{'b' * 32}" in out.read_text()


@pytest.mark.parametrize("name", ["", "1abc", "a b", "a=b", "a\nb", "a<<b"])
def test_bad_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        set_output(tmp_path / "out", name, "v")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(EXEC_HIJACK_VARIABLES))
def test_exec_hijack_variables_are_refused_unless_meant(name: str, tmp_path: Path) -> None:
    env = tmp_path / "env"
    with pytest.raises(UsageError, match="decides what code"):
        set_env(env, name, "/tmp/x")
    with pytest.raises(UsageError):
        set_env(env, name.lower(), "/tmp/x")
    assert not env.exists()
    set_env(env, name, "/tmp/x", allow_exec_hijack=True)
    assert parse_file_commands(env.read_text()) == {name: "/tmp/x"}


def test_env_names_may_not_hold_hyphens(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="invalid environment variable name"):
        set_env(tmp_path / "env", "A-B", "v")


def test_appends_keep_earlier_blocks(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("")
    set_output(out, "one", "1")
    set_output(out, "two", "2\n2")
    assert parse_file_commands(out.read_text()) == {"one": "1", "two": "2\n2"}


def test_path_entries_are_one_line(tmp_path: Path) -> None:
    path_file = tmp_path / "path"
    append_path(path_file, "/opt/tool/bin")
    assert path_file.read_text() == "/opt/tool/bin\n"
    for bad in ("", "/a\n/b", "/a\r"):
        with pytest.raises(UsageError):
            append_path(path_file, bad)


def test_summary_is_capped_and_refuses_rather_than_truncates(tmp_path: Path) -> None:
    summary = tmp_path / "summary"
    assert append_summary(summary, "# one", max_bytes=20)
    assert summary.read_text() == "# one\n"
    assert not append_summary(summary, "x" * 20, max_bytes=20)
    assert summary.read_text() == "# one\n"


def test_unwritable_runner_file_says_what_to_check(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="cannot open the runner file") as info:
        set_output(tmp_path / "missing-dir" / "out", "a", "b")
    assert "GitHub Actions step" in info.value.hint  # type: ignore[attr-defined]


def test_files_outside_actions_are_quiet_noops(tmp_path: Path) -> None:
    files = GitHubFiles({})
    files.set_outputs({"a": "b"})
    assert not files.summarize("# hi")
    with pytest.raises(UsageError, match="GITHUB_ENV is not set"):
        list(files.export_secret("TOKEN", "s3cr3t"))


def test_export_secret_masks_before_it_exports(tmp_path: Path) -> None:
    env = tmp_path / "env"
    files = GitHubFiles({"GITHUB_ENV": str(env)})
    exported = files.export_secret("DB_PASSWORD", "line1\nline2")
    assert next(exported) == "::add-mask::line1"
    assert not env.exists()
    assert list(exported) == ["::add-mask::line2"]
    assert parse_file_commands(env.read_text()) == {"DB_PASSWORD": "line1\nline2"}


def test_command_data_escaping() -> None:
    assert escape_command_data("50%\r\nok") == "50%25%0D%0Aok"
    assert re.fullmatch(r"[^\r\n]*", escape_command_data("a\nb\rc"))
