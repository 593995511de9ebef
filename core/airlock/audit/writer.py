"""The append-only, hash-chained session log: :class:`SessionWriter`.

Each event is one ``write`` (a ``writev`` for a big line) of a whole line on an ``O_APPEND``
descriptor, with no buffering in Python: a SIGKILL loses at most the line being written, and
what is already written stays readable and verifiable. The writer fsyncs only when sealing.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from airlock.audit._format import (
    EVENTS_FILE,
    SESSION_ID_RE,
    TYPE_RE,
    encode_data,
    encode_small,
    entry_pieces,
    genesis,
    join_entry,
    line_hash,
    surely_encodes,
)
from airlock.audit._manifest import LogState, build_manifest, write_manifest
from airlock.audit._opened import mark_opened
from airlock.audit.keys import SigningKey
from airlock.errors import RecordingError, UsageError

__all__ = ["SessionWriter", "new_session_id"]


def new_session_id() -> str:
    """A time-sortable id: ``20261125T172500Z-`` + 10 random hex digits."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(5)}"


def check_session_id(session_id: str) -> str:
    """Return ``session_id`` if it is one safe path component, else raise UsageError."""
    if not SESSION_ID_RE.fullmatch(session_id):
        raise UsageError(
            f"invalid session id {session_id!r}",
            hint="use letters, digits, '.', '_' and '-' (up to 128), starting with a letter/digit",
        )
    return session_id


class SessionWriter:
    """Appends events to ``<sessions>/<id>/events.jsonl`` and seals the session.

    Thread-safe. After a failed write the writer is *broken*: every later append raises
    RecordingError, and :meth:`seal` can only seal the session as incomplete.
    """

    def __init__(self, session_id: str, path: Path, fd: int) -> None:
        """Use :meth:`create`; this wraps an already opened, empty events file."""
        self.session_id = session_id
        self.path = path
        self.seq = 0
        self.head = genesis(session_id)
        self._fd: int | None = fd
        self._lock = threading.Lock()
        self._whole = _FileDigest()
        self._bytes = 0
        self._first_ts: str | None = None
        self._last_ts: str | None = None
        self._failure: str | None = None
        self._manifest: dict[str, Any] | None = None
        self._second = (-1, "")  # the last whole second formatted, for _clock
        self._queue: queue.Queue[_Queued | None] | None = None
        self._thread: threading.Thread | None = None
        self._producers: set[int] = set()  # threads that queued events

    @classmethod
    def create(cls, sessions_dir: Path, session_id: str | None = None) -> SessionWriter:
        """Create the session directory (0700) and an empty events file (0600)."""
        sid = check_session_id(session_id) if session_id is not None else new_session_id()
        session_dir = Path(sessions_dir) / sid
        try:
            session_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            session_dir.mkdir(mode=0o700)
        except FileExistsError as exc:
            raise UsageError(
                f"session {sid} already exists in {session_dir.parent}",
                hint="pick another session id, or leave it unset for a fresh one",
            ) from exc
        except OSError as exc:
            raise RecordingError(
                f"cannot create session directory {session_dir}: {exc.strerror}"
            ) from exc
        try:
            mark_opened(session_dir)  # only what this machine opened is ever sealed late
        except OSError as exc:
            raise RecordingError(f"cannot mark session {session_dir}: {exc.strerror}") from exc
        events = session_dir / EVENTS_FILE
        pending = session_dir / (EVENTS_FILE + ".new")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(pending, flags, 0o600)
            # Locked before it has its name: another `airlock run` looking for abandoned
            # sessions (no manifest, no lock holder) can never catch this one in between.
            fcntl.flock(fd, fcntl.LOCK_EX)
            pending.rename(events)
        except OSError as exc:
            raise RecordingError(f"cannot create session log {events}: {exc.strerror}") from exc
        return cls(sid, session_dir, fd)

    @property
    def events_path(self) -> Path:
        """The ``events.jsonl`` file."""
        return self.path / EVENTS_FILE

    @property
    def broken(self) -> bool:
        """True once a write failed: the log stops at the last complete line."""
        return self._failure is not None

    def append(self, type: str, data: Mapping[str, Any]) -> int:
        """Append one event and return its seq.

        A thread that queued events with :meth:`append_later` first waits for them, so its own
        events keep their order; other threads (a gateway) do not wait for them.

        Raises RecordingError when the line cannot be written (ENOSPC, EFBIG, …) or the writer
        is already broken, and UsageError after seal/close. ``data`` must be JSON-serialisable.
        """
        type_ = _checked_type(type)
        if self._producers and threading.get_ident() in self._producers:
            self.flush()
        with self._lock:
            fd = self._writable_fd()
            text = encode_small(data)
            if text is None:
                return self._write_entry(fd, type_, encode_data(data))
            # The common small event: the whole line as text, encoded once. ts, type_ (checked
            # against TYPE_RE) and head need no JSON escaping; text is known to encode.
            ts = self._clock()
            line = f'{{"seq":{self.seq},"ts":"{ts}","type":"{type_}","prev":"{self.head}"'
            return self._written(fd, f'{line},"data":{text}}}\n'.encode(), ts)

    def append_later(
        self, type: str, data: Mapping[str, Any], then: Callable[[], object] | None = None
    ) -> None:
        """Queue one event: it is written in order by the writer's thread, which then calls
        ``then`` (say, showing the output that was just recorded). Should the write fail,
        ``then`` is not called and the writer is broken.

        For a producer of big events (a command's output), whose own thread reads and masks:
        the writer's thread JSON-escapes a big text value, hashes and writes, on another core.
        Anything else is encoded here. Raises at once what :meth:`append` would raise before
        writing; a later write failure is raised by the next call. ``then`` must not append.
        """
        type_ = _checked_type(type)
        self._writable_fd()
        encoded: list[bytes] | dict[str, Any]
        encoded = dict(data) if surely_encodes(data) else encode_data(data)
        self._producers.add(threading.get_ident())
        if self._queue is None:
            self._queue = queue.Queue(_QUEUED_LINES)
            self._thread = threading.Thread(
                target=self._write_queued, name="airlock-log-writer", daemon=True
            )
            self._thread.start()
        self._queue.put((type_, encoded, then))

    def last_line(self) -> tuple[int, str]:
        """(seq, hash) of the last line written, after the caller's queued events: the chain
        head a witness signs. (-1, genesis) when nothing is written yet."""
        self.flush()
        with self._lock:
            return self.seq - 1, self.head

    def flush(self) -> None:
        """Wait until every event queued by :meth:`append_later` is written (or dropped after
        a failed write). ``seq`` and ``head`` then describe everything appended so far."""
        if self._queue is not None and threading.current_thread() is not self._thread:
            self._queue.join()

    def _stop_thread(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None and self._queue is not None:
            self._queue.put(None)
            thread.join()

    def _write_queued(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            type_, encoded, then = item
            try:
                if isinstance(encoded, dict):
                    encoded = encode_data(encoded)
                with self._lock:
                    if self._failure is not None or self._fd is None:
                        continue  # not recorded, so not shown either
                    self._write_entry(self._fd, type_, encoded)
                if then is not None:
                    then()
            except RecordingError:
                pass  # the writer is broken now; the producer's next call raises
            except Exception as exc:  # a bug: stop recording rather than go on unseen
                self._failure = f"the writer thread failed ({type(exc).__name__})"
            finally:
                self._queue.task_done()

    def _write_entry(self, fd: int, type_: str, encoded: list[bytes]) -> int:
        ts = self._clock()
        if len(encoded) == 1 and len(encoded[0]) < _JOIN_BELOW:
            return self._written(fd, join_entry(self.seq, ts, type_, self.head, encoded), ts)
        # A big line (a command's output): written with writev and hashed piece by piece, so
        # the megabytes of its text are not copied once more into a joined line.
        pieces = entry_pieces(self.seq, ts, type_, self.head, encoded)
        self._write_pieces(fd, pieces)
        chain = hashlib.sha256()
        for piece in pieces[:-1]:
            chain.update(piece)
            self._whole.update(piece)
        chain.update(pieces[-1][:-1])  # the line's hash leaves out its "\n"
        self._whole.update(pieces[-1])
        self._bytes += sum(map(len, pieces))
        return self._moved_on(chain.hexdigest(), ts)

    def _written(self, fd: int, payload: bytes, ts: str) -> int:
        """Write one whole line (with its ``\\n``) and move the chain on."""
        self._write_line(fd, payload)
        self._whole.update(payload)
        self._bytes += len(payload)
        return self._moved_on(line_hash(memoryview(payload)[:-1]), ts)

    def _moved_on(self, head: str, ts: str) -> int:
        self.head = head
        self._first_ts = self._first_ts or ts
        self._last_ts = ts
        self.seq += 1
        return self.seq - 1

    def seal(
        self,
        key: SigningKey,
        *,
        exit_code: int | None,
        status: str = "complete",
        reason: str | None = None,
        checkpoints: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        """Fsync the log, write ``manifest.json`` (atomic, 0600), close, and return the manifest.

        ``checkpoints`` are the witness receipts gathered during the session (see
        :mod:`airlock.audit.checkpoints`). A broken writer is sealed as incomplete whatever
        ``status`` says, with the write failure as the reason unless one is given.
        """
        self.flush()
        with self._lock:
            if self._manifest is not None:
                raise UsageError(f"session {self.session_id} is already sealed")
            if self._failure is not None:
                status, reason = "incomplete", reason or self._failure
            self._fsync_log()
            manifest = build_manifest(
                self._state(),
                key,
                status=status,
                exit_code=exit_code,
                reason=reason,
                checkpoints=checkpoints,
            )
            write_manifest(self.path, manifest)
            self._manifest = manifest
            self._close_fd()
        self._stop_thread()
        return manifest

    def close(self) -> None:
        """Close the log without sealing (``airlock seal`` can seal it later as incomplete)."""
        self.flush()
        with self._lock:
            self._close_fd()
        self._stop_thread()

    def __enter__(self) -> SessionWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SessionWriter(session_id={self.session_id!r}, seq={self.seq})"

    def _clock(self) -> str:
        """:func:`airlock.events.utc_now`, formatting the date once per second (a trace can
        bring thousands of events a second)."""
        seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
        if seconds != self._second[0]:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            self._second = (seconds, stamp)
        return f"{self._second[1]}.{micros:06d}Z"

    def _writable_fd(self) -> int:
        if self._failure is not None:
            raise RecordingError(
                f"session log {self.events_path} stopped after a failed write ({self._failure})"
            )
        if self._fd is None:
            raise UsageError(f"session {self.session_id} is closed or sealed; cannot append")
        return self._fd

    def _write_line(self, fd: int, payload: bytes) -> None:
        self._write_pieces(fd, [payload])

    def _write_pieces(self, fd: int, pieces: list[bytes]) -> None:
        """One ``writev`` of the whole line (on ``O_APPEND``, as one ``write``)."""
        views = [memoryview(piece) for piece in pieces if piece]
        try:
            while views:  # a short write (e.g. at RLIMIT_FSIZE) is retried; the retry then fails
                written = os.writev(fd, views) if len(views) > 1 else os.write(fd, views[0])
                while views and written >= len(views[0]):
                    written -= len(views.pop(0))
                if views:
                    views[0] = views[0][written:]
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, "error")
            self._failure = f"write failed: {name} ({exc.strerror})"
            raise RecordingError(
                f"could not write to session log {self.events_path}: {exc.strerror}"
            ) from exc

    def _fsync_log(self) -> None:
        try:
            if self._fd is not None:
                os.fsync(self._fd)
                return
            fd = os.open(self.events_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise RecordingError(
                f"could not flush session log {self.events_path}: {exc.strerror}"
            ) from exc

    def _state(self) -> LogState:
        return LogState(
            session_id=self.session_id,
            event_count=self.seq,
            head=self.head,
            log_sha256=self._whole.hexdigest(),  # waits for the hashing thread
            log_bytes=self._bytes,
            started_at=self._first_ts,
            ended_at=self._last_ts,
        )

    def _close_fd(self) -> None:
        self._whole.stop()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# (type, data encoded or still to encode, then)
_Queued = tuple[str, list[bytes] | dict[str, Any], Callable[[], object] | None]
_QUEUED_LINES = 4  # events waiting for the writer's thread: bounds the memory they hold
_JOIN_BELOW = 64 * 1024  # smaller lines are joined into one bytes object (one piece to hash)


def _checked_type(type: str) -> str:
    known = _TYPES.get(type)
    if known is not None:
        return known
    type_ = str(type)
    if not TYPE_RE.fullmatch(type_):
        raise ValueError(f"invalid event type {type_!r}")
    if len(_TYPES) < _MAX_TYPES:
        _TYPES[type] = type_
    return type_


# Event types already checked (a StrEnum member maps to its plain str): a few dozen in practice.
_TYPES: dict[str, str] = {}
_MAX_TYPES = 1024


class _FileDigest:
    """SHA-256 of the whole file, computed on a thread of its own for large writes.

    The chain hash of each line is needed before the next line exists; the file digest only
    at the seal. hashlib releases the GIL on large buffers, so the two passes over megabytes
    of output run on two cores (profiled: with both on the writer's thread, that thread was
    the bottleneck, the main thread waiting for it). Small lines are hashed in batches, in
    order.
    """

    _BATCH = 64 * 1024
    _QUEUE = 8  # batches in flight: bounds the memory held for hashing

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._small: list[bytes] = []
        self._small_size = 0
        self._queue: queue.Queue[bytes | None] | None = None
        self._thread: threading.Thread | None = None

    def update(self, data: bytes) -> None:
        if len(data) < self._BATCH:
            self._small.append(data)
            self._small_size += len(data)
            if self._small_size < self._BATCH:
                return
            data = b"".join(self._small)
            self._small.clear()
            self._small_size = 0
        elif self._small:
            self._submit(b"".join(self._small))
            self._small.clear()
            self._small_size = 0
        self._submit(data)

    def hexdigest(self) -> str:
        self.stop()
        if self._small:
            self._hash.update(b"".join(self._small))
            self._small.clear()
            self._small_size = 0
        return self._hash.hexdigest()

    def stop(self) -> None:
        """Wait until everything submitted is hashed, and end the thread."""
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = self._queue = None

    def _submit(self, data: bytes) -> None:
        if self._queue is None:
            self._queue = queue.Queue(self._QUEUE)
            self._thread = threading.Thread(
                target=self._run, args=(self._queue,), name="airlock-log-digest", daemon=True
            )
            self._thread.start()
        self._queue.put(data)

    def _run(self, batches: queue.Queue[bytes | None]) -> None:
        update = self._hash.update
        while (data := batches.get()) is not None:
            update(data)
