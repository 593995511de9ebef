"""The journal that lets the job's next ``airlock run`` or ``finalize`` put back the git
credentials a killed run took out of the checkout (airlock.sandbox.checkout)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from airlock.sandbox.checkout import hide_checkout_credentials, restore_abandoned

TOKEN = "ghs_" + "f00d" * 9
HEADER = "\textraheader = AUTHORIZATION: bearer " + TOKEN + "\n"
CONFIG = '[core]\n\tbare = false\n[http "https://git.example/"]\n' + HEADER


def _checkout(tmp_path: Path) -> Path:
    config = tmp_path / "ws" / ".git" / "config"
    config.parent.mkdir(parents=True)
    config.write_text(CONFIG)
    return config


def test_a_dead_runs_journal_puts_the_token_back_once(tmp_path: Path) -> None:
    config = _checkout(tmp_path)
    hidden, journal = hide_checkout_credentials(str(tmp_path / "ws"), tmp_path / "state")
    assert journal is not None and [h.secrets for h in hidden] == [[TOKEN]]
    assert TOKEN not in config.read_text()
    assert journal.path.stat().st_mode & 0o777 == 0o600
    assert not str(journal.path).startswith(str(tmp_path / "ws"))
    with config.open("a") as file:  # what the agent changed stays
        file.write("[user]\n\temail = agent@example.com\n")

    assert restore_abandoned(tmp_path / "state") == 0  # this run is alive: its journal is locked
    os.close(journal._fd)  # type: ignore[arg-type]  # the run dies: the kernel drops the lock
    journal._fd = None

    assert restore_abandoned(tmp_path / "state") == 1
    restored = config.read_text()
    assert restored.count(HEADER) == 1 and "agent@example.com" in restored
    assert list((tmp_path / "state").iterdir()) == []
    assert restore_abandoned(tmp_path / "state") == 0


def test_a_run_killed_before_it_rewrote_the_config_adds_nothing(tmp_path: Path) -> None:
    """The journal is synced before any config is rewritten: a run killed between the two leaves
    a journal for a config still whole, which must not get the header a second time."""
    config = _checkout(tmp_path)
    _, journal = hide_checkout_credentials(str(tmp_path / "ws"), tmp_path / "state")
    assert journal is not None
    config.write_text(CONFIG)  # as if the rewrite never happened
    os.close(journal._fd)  # type: ignore[arg-type]
    journal._fd = None

    assert restore_abandoned(tmp_path / "state") == 1
    assert config.read_text() == CONFIG


def test_a_clean_end_leaves_no_journal_and_an_unreadable_one_is_dropped(tmp_path: Path) -> None:
    config = _checkout(tmp_path)
    hidden, journal = hide_checkout_credentials(str(tmp_path / "ws"), tmp_path / "state")
    assert journal is not None and all(h.restore() for h in hidden)
    journal.done()
    assert config.read_text() == CONFIG and list((tmp_path / "state").iterdir()) == []

    torn = tmp_path / "state" / "checkout-credentials-1-dead.json"
    torn.write_text('{"version": 1, "entr')  # killed while writing it: no config touched yet
    assert restore_abandoned(tmp_path / "state") == 0
    assert not torn.exists() and config.read_text() == CONFIG


def test_a_journal_a_live_run_holds_is_left_alone(tmp_path: Path) -> None:
    _checkout(tmp_path)
    _, journal = hide_checkout_credentials(str(tmp_path / "ws"), tmp_path / "state")
    assert journal is not None
    other = os.open(journal.path, os.O_RDONLY)
    try:  # the lock is the live run's: another process cannot take it
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            taken = True
        except BlockingIOError:
            taken = False
    finally:
        os.close(other)
    assert not taken
    assert restore_abandoned(tmp_path / "state") == 0 and journal.path.exists()
    journal.done()
