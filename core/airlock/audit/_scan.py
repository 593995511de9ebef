"""One fast pass over events.jsonl: seq order, the prev chain, the head and the file hash.

The fast path does one anchored regex match and one SHA-256 per line and never decodes JSON; the
whole-file SHA-256 runs in a helper thread (hashlib releases the GIL on large buffers). When a
line does not fit, :func:`_diagnose` re-reads a few lines around it to name what happened.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airlock.audit._format import LINE_RE
from airlock.errors import VerificationFailed

if TYPE_CHECKING:  # imported when a big log is read (it brings logging: ~5 ms at start-up)
    from concurrent.futures import Future

__all__ = ["ChainScan", "diagnose_beyond", "scan_chain"]

_BLOCK = 8 << 20
_HINT = "the log was changed after it was written; compare it with the archived copy"


@dataclass
class ChainScan:
    """What one pass found: complete lines up to ``limit``, all chained correctly."""

    event_count: int = 0
    head: str = ""
    covered: int = 0  # bytes through the last complete line's newline
    leftover: int = 0  # bytes read after that newline (a partial line)
    log_sha256: str = ""
    first_line: bytes | None = None
    last_line: bytes | None = None
    tail: list[bytes] = field(default_factory=list)  # the last two complete lines
    checkpoint_heads: dict[int, str] = field(default_factory=dict)


def scan_chain(
    events: Path,
    genesis_hex: str,
    *,
    limit: int | None = None,
    want: frozenset[int] = frozenset(),
    head: str | None = None,
) -> ChainScan:
    """Check the first ``limit`` bytes (all when None) of ``events``; raise at the first break.

    ``want`` lists seqs whose line hash to report (checkpoints); ``head`` is the sealed head,
    used only to name which line was modified when the last link breaks.
    """
    scan = ChainScan(head=genesis_hex)
    expected, prev = 0, genesis_hex.encode("ascii")
    tail: list[bytes] = []
    carry = b""
    with events.open("rb", buffering=0) as handle, _WholeHash(handle) as whole:
        for block in _blocks(handle, limit):
            buf = carry + block if carry else block
            lines = buf.split(b"\n")
            carry = lines.pop()
            done = len(buf) - len(carry)
            whole.update(memoryview(buf)[:done])
            if not lines:
                continue
            start = expected
            expected, prev = _check_lines(lines, expected, prev, want, scan.checkpoint_heads)
            if expected - start < len(lines):
                bad = expected - start
                offset = scan.covered + sum(len(x) + 1 for x in lines[:bad])
                before = (tail + lines[:bad])[-2:]
                raise _diagnose(events, offset, limit, expected + 1, before, genesis_hex, head)
            scan.first_line = scan.first_line if scan.first_line is not None else lines[0]
            scan.last_line = lines[-1]
            tail = (tail + lines[-2:])[-2:]
            scan.covered += done
        scan.log_sha256 = whole.hexdigest()
    scan.event_count = expected
    scan.tail = tail
    scan.head = prev.decode("ascii")
    scan.leftover = len(carry)
    return scan


class _WholeHash:
    """SHA-256 of the covered bytes, on a helper thread when the file is large enough to gain.

    Blocks are hashed in order: each update waits for the previous one, which overlaps the
    hashing of block N with the line checks of block N.
    """

    _THREAD_FROM = 4 << 20

    def __init__(self, handle: Any) -> None:
        self._hash = hashlib.sha256()
        size = os.fstat(handle.fileno()).st_size
        self._pool = None
        if size >= self._THREAD_FROM:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1)
        self._pending: Future[None] | None = None

    def __enter__(self) -> _WholeHash:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def update(self, data: memoryview) -> None:
        if self._pool is None:
            self._hash.update(data)
            return
        self._wait()
        self._pending = self._pool.submit(self._hash.update, data)

    def hexdigest(self) -> str:
        self._wait()
        return self._hash.hexdigest()

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None


def diagnose_beyond(
    events: Path, scan: ChainScan, genesis_hex: str, head: str | None
) -> VerificationFailed:
    """Name the break when the lines do not end where the seal's byte count says.

    The scan stopped at the sealed size; the line that straddles it is read in full, with the
    lines after it, to tell a modified line from an inserted or moved one.
    """
    k = scan.event_count + 1
    return _diagnose(events, scan.covered, None, k, scan.tail, genesis_hex, head)


def _blocks(handle: Any, limit: int | None) -> Iterator[bytes]:
    read = handle.read
    remaining = limit
    while remaining is None or remaining > 0:
        block: bytes = read(_BLOCK if remaining is None else min(_BLOCK, remaining))
        if not block:
            return
        if remaining is not None:
            remaining -= len(block)
        yield block


def _check_lines(
    lines: list[bytes], expected: int, prev: bytes, want: frozenset[int], found: dict[int, str]
) -> tuple[int, bytes]:
    """The hot loop: returns the next expected seq and prev; stops early at a bad line."""
    match = LINE_RE.fullmatch
    sha256 = hashlib.sha256
    for line in lines:
        m = match(line)
        if m is None or m[2] != prev or int(m[1]) != expected:
            break
        prev = sha256(line).hexdigest().encode("ascii")
        if want and expected in want:
            found[expected] = prev.decode("ascii")
        expected += 1
    return expected, prev


def _lines_from(events: Path, offset: int, limit: int | None) -> Iterator[bytes]:
    """Complete lines from byte ``offset`` (slow path only)."""
    with events.open("rb") as handle:
        handle.seek(offset)
        budget = None if limit is None else limit - offset
        for raw in handle:
            if budget is not None:
                if budget < len(raw):
                    return
                budget -= len(raw)
            if not raw.endswith(b"\n"):
                return
            yield raw[:-1]


@dataclass(frozen=True)
class _Line:
    raw: bytes
    seq: int
    prev: str

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


def _parse(raw: bytes | None) -> _Line | None:
    m = LINE_RE.fullmatch(raw) if raw is not None else None
    if raw is None or m is None:
        return None
    return _Line(raw, int(m[1]), m[2].decode("ascii"))


def _fail(kind: str, line: int, message: str) -> VerificationFailed:
    return VerificationFailed(f"line {line}: {message}", kind=kind, line=line, hint=_HINT)


def _diagnose(
    events: Path,
    offset: int,
    limit: int | None,
    k: int,
    before: list[bytes],
    genesis_hex: str,
    head: str | None,
) -> VerificationFailed:
    """Name the break at line ``k`` (1-based): the first line whose seq or prev is wrong."""
    ahead = _lines_from(events, offset, limit)
    cur = _parse(next(ahead, None))
    if cur is None:
        return _fail(
            "malformed",
            k,
            "not an event line (want one JSON object: seq, ts, type, prev, data in that order)",
        )
    nxt, nxt2 = _parse(next(ahead, None)), _parse(next(ahead, None))
    e = k - 1
    prevs = [hashlib.sha256(raw).hexdigest() for raw in before]
    want_prev = prevs[-1] if prevs else genesis_hex  # what cur.prev should be
    if cur.seq == e:
        return _diagnose_link(k, cur, nxt, head, genesis_hex)
    if cur.seq > e:
        rest = itertools.chain([nxt, nxt2], (_parse(raw) for raw in ahead))
        return _diagnose_gap(k, cur, nxt, nxt2, want_prev, rest)
    return _diagnose_backwards(k, cur, nxt, before, prevs, genesis_hex)


def _diagnose_link(
    k: int, cur: _Line, nxt: _Line | None, head: str | None, genesis_hex: str
) -> VerificationFailed:
    """Seq is right but prev is not: a line changed, or a line with a plausible seq was added."""
    if nxt is not None and nxt.seq == cur.seq:
        return _fail("inserted", k, f"a line with seq {cur.seq} was inserted (line {k + 1} too)")
    if k == 1:
        if cur.prev != genesis_hex and (nxt is None or nxt.prev == cur.hash):
            return _fail(
                "modified", 1, "does not chain to this session's genesis (wrong session id?)"
            )
        return _fail("modified", 1, "the first line was modified")
    successor_ok = nxt.prev == cur.hash if nxt is not None else head in (None, cur.hash)
    if successor_ok:
        return _fail("modified", k - 1, f"was modified: line {k}'s prev does not match its hash")
    return _fail("modified", k, "was modified: its prev and its hash no longer chain")


def _diagnose_gap(
    k: int,
    cur: _Line,
    nxt: _Line | None,
    nxt2: _Line | None,
    want_prev: str,
    rest: Iterator[_Line | None],
) -> VerificationFailed:
    """Seq jumps forward: deleted lines, a line moved later, or an extra line."""
    e = k - 1
    if (
        nxt is not None
        and nxt.seq == e
        and nxt.prev == want_prev
        and not (nxt2 is not None and nxt2.prev == cur.hash)
    ):
        # cur does not belong here: moved from later in the log, or not from this log at all.
        later = [line for line in rest if line is not None]
        moved = cur.seq not in {x.seq for x in later} and cur.prev in {x.hash for x in later}
        if moved:
            return _fail("reordered", k, f"seq {cur.seq} was moved before seq {e}")
        return _fail("inserted", k, f"an extra line (seq {cur.seq}) was inserted")
    if any(line is not None and line.seq == e for line in rest):
        return _fail("reordered", k, f"seq {cur.seq} comes before seq {e}: lines were reordered")
    missing = cur.seq - e
    return _fail(
        "deleted", k, f"seq jumps from {e - 1} to {cur.seq}: {missing} line(s) deleted before it"
    )


def _diagnose_backwards(
    k: int,
    cur: _Line,
    nxt: _Line | None,
    before: list[bytes],
    prevs: list[str],
    genesis_hex: str,
) -> VerificationFailed:
    """Seq repeats or goes back: an inserted copy, or lines moved earlier."""
    e = k - 1
    last = _parse(before[-1]) if before else None
    if last is not None and cur.seq == last.seq:
        grand_prev = prevs[-2] if len(prevs) >= 2 else genesis_hex
        if k >= 2 and cur.prev == grand_prev and cur.raw != last.raw:
            return _fail("inserted", k - 1, f"a line with seq {last.seq} was inserted")
        return _fail("inserted", k, f"repeats seq {cur.seq}: a line was inserted")
    if nxt is not None and nxt.seq == e:
        return _fail("inserted", k, f"an old line (seq {cur.seq}) was inserted")
    return _fail("reordered", k, f"seq goes back from {e - 1} to {cur.seq}: lines were reordered")
