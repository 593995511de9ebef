"""The audit log: an append-only, hash-chained session log, its signed seal, and verification.

    SessionWriter.create(dir) ─ append(type, data) … ─ seal(key)  →  events.jsonl + manifest.json
    seal_session(dir, key)     a crashed session (no manifest) → sealed "incomplete"
    verify_session(dir, keys)  → VerifyReport, or VerificationFailed(kind, line) at the first break
    iter_events(dir)           read events (does not verify)

The byte layout is documented in docs/session-format.md.

Names are imported on first use (PEP 562): a command that only writes a session does not load
the verifier and the reader.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airlock.lazy import lazy_exports

if TYPE_CHECKING:
    from airlock.audit.keys import (
        SigningKey,
        default_key_path,
        key_id_for,
        load_public_keys,
        load_signing_key,
    )
    from airlock.audit.reader import iter_events
    from airlock.audit.seal import find_unsealed, seal_session
    from airlock.audit.verify import FAILURE_KINDS, VerifyReport, verify_session
    from airlock.audit.writer import SessionWriter, new_session_id

__all__ = [
    "FAILURE_KINDS",
    "SessionWriter",
    "SigningKey",
    "VerifyReport",
    "default_key_path",
    "find_unsealed",
    "iter_events",
    "key_id_for",
    "load_public_keys",
    "load_signing_key",
    "new_session_id",
    "seal_session",
    "verify_session",
]

_WHERE = {
    "FAILURE_KINDS": "verify",
    "SessionWriter": "writer",
    "SigningKey": "keys",
    "VerifyReport": "verify",
    "default_key_path": "keys",
    "find_unsealed": "seal",
    "iter_events": "reader",
    "key_id_for": "keys",
    "load_public_keys": "keys",
    "load_signing_key": "keys",
    "new_session_id": "writer",
    "seal_session": "seal",
    "verify_session": "verify",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, __all__)
