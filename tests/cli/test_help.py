"""The README shows the real `airlock --help`, and the exit-code table is one table everywhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from airlock._cli import build_parser, main
from airlock.errors import ExitCode

REPO = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"<!-- airlock --help -->\n```text\n(.*?)```", re.S)


def _help(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", "100")
    return build_parser().format_help()


def test_readme_shows_the_real_help(monkeypatch: pytest.MonkeyPatch) -> None:
    found = MARKER.search((REPO / "README.md").read_text())
    assert found, "README.md needs a ```text block after <!-- airlock --help -->"
    assert found[1] == _help(monkeypatch), (
        "README's `airlock --help` is stale: regenerate with COLUMNS=100 .venv/bin/airlock --help"
    )


def test_exit_code_table_is_the_same_in_docs_and_help(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = (REPO / "docs" / "exit-codes.md").read_text()
    text = _help(monkeypatch)
    for code in ExitCode:
        assert f"| {int(code)} | {code.meaning} |" in docs
        assert f"{int(code):>3}  {code.meaning}" in text


def test_help_exits_zero_and_bad_usage_is_the_usage_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--help"]) == 0
    assert main(["no-such-command"]) == ExitCode.USAGE
    assert "invalid choice" in capsys.readouterr().err
