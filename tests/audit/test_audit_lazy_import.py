"""The audit package loads its modules on first use (PEP 562), so a writer does not load the verifier."""

from __future__ import annotations

import subprocess
import sys


def _loaded_after(code: str, modules: list[str]) -> list[str]:
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_audit_names_are_loaded_on_first_use() -> None:
    lazy = ["airlock.audit.verify", "airlock.audit.reader"]
    assert _loaded_after("from airlock.audit import SessionWriter, SigningKey", lazy) == []
    assert _loaded_after("from airlock.audit import verify_session", lazy) == lazy[:1]
