"""The masker: settings, the shared ``Masker`` and one ``StreamMasker`` per output stream.

A ``Masker`` holds an immutable compiled snapshot (rules, literal set, prefilters). ``add_secret``
builds a new snapshot under a lock and swaps it in; masking never takes the lock, and a stream
notices the new snapshot at its next call and re-examines everything it still holds.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Literal

from airlock.errors import ConfigError
from airlock.mask import _compile
from airlock.mask._compile import (
    LITERAL_INDEX,
    CompiledRule,
)
from airlock.mask._scan import Span, render
from airlock.mask._snapshot import NEVER, TRUNCATED, Snapshot, replacement
from airlock.mask._wrapped import MAX_WRAP
from airlock.mask.rules import BUILTIN_RULES, PatternRule
from airlock.mask.strength import weak_reason

__all__ = ["MaskSettings", "Masker", "StreamMasker", "replacement"]

Engine = Literal["auto", "hyperscan", "re2"]


@dataclass(frozen=True)
class MaskSettings:
    """What to mask and how. Literal values are secrets: they never appear in a repr."""

    literals: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    patterns: tuple[PatternRule, ...] = ()
    builtin: bool = True
    correlate: Literal["none", "hmac"] = "none"
    hmac_key: bytes | None = field(default=None, repr=False)
    engine: Engine = "auto"
    min_literal_len: int = 4
    weak: Literal["error", "warn"] = "warn"  # a literal that would mask ordinary text


_TEXT_MEMO_LEN = 4096  # longer strings are not remembered
_TEXT_MEMO_SIZE = 4096


class Masker:
    """Masks secrets in bytes and text; thread-safe. Create one per session and share it."""

    def __init__(self, settings: MaskSettings) -> None:
        self._settings = settings
        self._engine = _choose_engine(settings.engine)
        key = _check_correlation(settings)
        self._patterns, self._prefilter = _pattern_rules(settings, self._engine)
        self._hmac_key = key
        self._lock = threading.Lock()
        self._literals: list[tuple[str, bytes]] = []
        self.weak_literals: list[tuple[str, str]] = []  # (rule id, why) for settings.weak=warn
        for rule_id, value in settings.literals:
            self._literals.append(self._checked_literal(value, rule_id))
        self._snapshot = self._build()

    @staticmethod
    def warm_up(settings: MaskSettings) -> None:
        """Start compiling the pattern rules of ``settings`` on a background thread.

        The compiler releases the GIL, so start-up work can go on meanwhile; a Masker built
        later with the same rules takes the result, or waits for it. Problems are left for that
        Masker to report.
        """

        def compile_rules() -> None:
            with contextlib.suppress(Exception):
                _pattern_rules(settings, _choose_engine(settings.engine))

        threading.Thread(target=compile_rules, name="airlock-mask-warm-up", daemon=True).start()

    @property
    def engine_name(self) -> str:
        """The prefilter in use: ``"hyperscan"`` or ``"re2"``."""
        return self._engine

    @property
    def literal_count(self) -> int:
        """How many distinct literal secret values are registered."""
        return self._snapshot.literals.count

    def add_secret(self, value: str | bytes, rule_id: str = "literal") -> None:
        """Register a secret at run time (e.g. a credential just issued); it and its
        encodings are masked from now on, in every stream, including output still held."""
        entry = self._checked_literal(value, rule_id)
        with self._lock:
            self._literals.append(entry)
            self._snapshot = self._build()

    def mask_bytes(self, data: bytes) -> bytes:
        """Mask a complete buffer (the very same object back when nothing needed masking)."""
        return self._snapshot.mask_whole(bytes(data))

    def mask_text(self, text: str) -> str:
        """Mask a complete string (UTF-8; a span cutting a character leaves U+FFFD).

        Bytes that are not UTF-8 may come as surrogate escapes (``os.fsdecode``, argv, the
        environment): they are masked as the bytes they stand for, and the result is always
        clean text (U+FFFD where such a byte is left)."""
        texts = self._snapshot.texts  # before masking: a newer snapshot only masks more
        masked = texts.get(text)
        if masked is None:
            raw, clean = _utf8(text)
            out = self._snapshot.mask_whole(raw)
            masked = text if out is raw and clean else out.decode("utf-8", "replace")
            if len(text) <= _TEXT_MEMO_LEN:
                if len(texts) >= _TEXT_MEMO_SIZE:
                    texts.clear()
                texts[text] = masked
        return masked

    def mask_cut_text(self, text: str) -> str:
        """Mask a string that was cut short (an argument strace truncated): see
        ``Snapshot.mask_cut``. The cut is treated like a chunk boundary, so the prefix of a
        secret the cut went through is masked too."""
        return self._snapshot.mask_cut(_utf8(text)[0]).decode("utf-8", "replace")

    def stream(self) -> StreamMasker:
        """A new stream state: one per output stream (stdout, stderr, a connection)."""
        return StreamMasker(self)

    def _checked_literal(self, value: str | bytes, rule_id: str) -> tuple[str, bytes]:
        _compile.validate_rule_id(rule_id)
        raw = _utf8(value)[0] if isinstance(value, str) else bytes(value)
        if len(raw) < self._settings.min_literal_len:
            raise ConfigError(
                f"secret for {rule_id!r} is shorter than {self._settings.min_literal_len} "
                "bytes and would mask ordinary text",
                hint="register only real secret values; short values cannot be masked safely",
            )
        reason = weak_reason(raw)
        if reason is not None:
            if self._settings.weak == "error":
                raise ConfigError(
                    f"secret for {rule_id!r} {reason} and would mask ordinary text",
                    hint="give it a real secret value, or set `mask: {weak: warn}` to mask it "
                    "anyway",
                )
            self.weak_literals.append((rule_id, reason))
        return rule_id, raw

    def _build(self) -> Snapshot:
        literals = _compile.build_literal_set(self._literals)
        return Snapshot(
            rules=(literals.rule, *self._patterns, literals.canonical),
            literals=literals,
            prefilter=self._prefilter,
            literal_matcher=_compile.build_literal_matcher(self._engine, literals, self._prefilter),
            hmac_key=self._hmac_key,
        )


CONTEXT = MAX_WRAP + 2  # a whole wrapped line, its "\r" and one byte more: see _commit


def _utf8(text: str) -> tuple[bytes, bool]:
    """``text`` as bytes, and whether it was plain UTF-8 (no surrogate escapes)."""
    try:
        return text.encode("utf-8"), True
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape"), False


def _choose_engine(engine: str) -> str:
    if engine == "re2":
        return "re2"
    if engine not in ("auto", "hyperscan"):
        raise ConfigError(f"unknown masking engine {engine!r}", hint="use auto, hyperscan or re2")
    if _compile.hyperscan_available():
        return "hyperscan"
    if engine == "hyperscan":
        raise ConfigError(
            "masking engine hyperscan was asked for but the hyperscan module cannot be imported",
            hint="install airlock-ci[fast] (hyperscan), or use engine auto or re2",
        )
    return "re2"


def _check_correlation(settings: MaskSettings) -> bytes | None:
    if settings.correlate == "none":
        return None
    if settings.correlate != "hmac":
        raise ConfigError(
            f"unknown mask correlation {settings.correlate!r}", hint="use none or hmac"
        )
    if not settings.hmac_key:
        raise ConfigError(
            "mask correlation hmac needs a key",
            hint="pass hmac_key (a per-session random key), or set correlate to none",
        )
    return settings.hmac_key


def _pattern_rules(
    settings: MaskSettings, engine: str
) -> tuple[tuple[CompiledRule, ...], _compile.Prefilter]:
    patterns = _compile_patterns((BUILTIN_RULES if settings.builtin else ()) + settings.patterns)
    prefilter = _compile.build_pattern_prefilter(
        engine, [(i + 1, rule.regex.pattern) for i, rule in enumerate(patterns)]
    )
    return patterns, prefilter


def _compile_patterns(patterns: tuple[PatternRule, ...]) -> tuple[CompiledRule, ...]:
    seen: set[str] = set()
    compiled = []
    for rule in patterns:
        if rule.id in seen:
            raise ConfigError(
                f"mask rule id {rule.id!r} is defined twice",
                hint="give each pattern its own id (built-in ids are listed in docs/masking.md)",
            )
        seen.add(rule.id)
        compiled.append(_compile.compile_rule(rule))
    return tuple(compiled)


class StreamMasker:
    """Masks one stream fed in chunks. Not for concurrent use from several threads.

    The concatenation of everything ``feed`` and ``flush`` return equals
    ``mask_bytes(whole stream)`` for any chunking. ``flush_idle`` trades that equality for
    latency (see its docstring). After ``flush`` the object starts a new stream.
    """

    def __init__(self, masker: Masker) -> None:
        self._masker = masker
        self._snapshot = masker._snapshot
        self._reset()

    def _reset(self) -> None:
        self._buf = b""
        self._base = 0  # absolute offset of _buf[0]
        self._emitted = 0  # absolute offset up to which output was returned
        self._resume = self._snapshot.initial_resume(0)
        self._pending: list[Span] = []
        self._hold_at: int | None = None  # offset a quiet stream holds from (pattern hold)
        self._hold_since = 0.0

    def feed(self, chunk: bytes) -> bytes:
        """Take ``chunk``; return the masked bytes that are final now (possibly empty)."""
        if not chunk:
            return b""
        return self._step(bytes(chunk), final=False)

    def flush(self) -> bytes:
        """End of stream: return everything still held, masked."""
        out = self._step(b"", final=True)
        self._reset()
        return out

    HOLD_WINDOW = 1.0
    """Seconds a quiet stream holds a tail that could begin a pattern secret (see flush_idle)."""

    def flush_idle(self, now: float | None = None) -> bytes:
        """The stream went quiet: return what is held, masked as if the stream ended here,
        except the longest tail that is a proper prefix of a literal secret form (held until
        more bytes come or the stream ends).

        With ``now`` (a monotonic clock reading), a tail that could begin a pattern secret
        (``Snapshot.hold_length``) is held too, until ``HOLD_WINDOW`` seconds after the call
        that first held it from the same offset. So a pattern secret whose pieces all arrive
        within the window of its first byte is masked whatever the pauses between them.
        Without ``now`` such a tail is shown: the part shown is no longer held.
        """
        snapshot = self._sync()
        end = self._base + len(self._buf)
        if end == self._emitted:
            return b""
        spans = list(self._pending)
        snapshot.find(self._buf, self._base, list(self._resume), True, spans)
        tail = self._buf[self._emitted - self._base :]
        literals = snapshot.literals
        held = literals.held(tail)
        if now is not None:
            held = max(held, self._pattern_hold(snapshot, tail, end, now))
        cut = end - held
        out, cut, _ = render(self._buf, self._base, self._emitted, cut, spans, snapshot.replace)
        # Restart matching at the cut: what was shown cannot be masked any more.
        self._resume = snapshot.initial_resume(cut)
        self._pending = []
        self._commit(cut)
        return out

    def pending(self) -> bytes:
        """What the stream holds now, masked as if it were cut here: rules see the end of the
        stream, and a tail that is a proper prefix of a literal form becomes
        ``[MASKED:truncated]``. For a record of output read but not yet final (it does not
        change the stream's state)."""
        snapshot = self._sync()
        end = self._base + len(self._buf)
        if end == self._emitted:
            return b""
        spans = list(self._pending)
        snapshot.find(self._buf, self._base, list(self._resume), True, spans)
        literals = snapshot.literals
        tail = self._buf[self._emitted - self._base :]
        held = literals.held(tail)
        if held:
            spans.append(Span(end - held, end, len(snapshot.rules), TRUNCATED))
        return render(self._buf, self._base, self._emitted, end, spans, snapshot.replace)[0]

    def _pattern_hold(self, snapshot: Snapshot, tail: bytes, end: int, now: float) -> int:
        held = snapshot.hold_length(tail)
        start = end - held
        if not held:
            self._hold_at = None
        elif self._hold_at != start:
            self._hold_at, self._hold_since = start, now
        elif now - self._hold_since >= self.HOLD_WINDOW:
            return 0
        return held

    def _sync(self) -> Snapshot:
        """Pick up secrets added since the last call: re-examine all held output for them."""
        current = self._masker._snapshot
        if current is not self._snapshot:
            self._snapshot = current
            literal_rules = (LITERAL_INDEX, current.canonical_index)
            for index in literal_rules:
                self._resume[index] = self._emitted if current.rules[index] else NEVER
            self._pending = [s for s in self._pending if s.order not in literal_rules]
        return current

    def _step(self, chunk: bytes, final: bool) -> bytes:
        snapshot = self._sync()
        buf = self._buf + chunk if self._buf else chunk
        self._buf = buf
        end = self._base + len(buf)
        spans = self._pending
        snapshot.find(buf, self._base, self._resume, final, spans)
        cut = end if final else snapshot.frontier(self._resume, end)
        out, cut, self._pending = render(
            buf, self._base, self._emitted, cut, spans, snapshot.replace
        )
        self._commit(cut)
        return out

    def _commit(self, cut: int) -> None:
        """Mark ``[.., cut)`` as emitted; keep one byte before it as context for ``\\b``."""
        self._emitted = cut
        keep = max(cut - CONTEXT, self._base)
        if keep > self._base:
            self._buf = self._buf[keep - self._base :]
            self._base = keep
