"""The masker: settings, the shared ``Masker`` and one ``StreamMasker`` per output stream.

A ``Masker`` holds an immutable compiled snapshot (rules, literal set, prefilters). ``add_secret``
builds a new snapshot under a lock and swaps it in; masking never takes the lock, and a stream
notices the new snapshot at its next call and re-examines everything it still holds.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import operator
import re
import threading
from dataclasses import dataclass, field
from typing import Literal

from airlock.errors import ConfigError
from airlock.mask import _compile
from airlock.mask._compile import (
    LITERAL_INDEX,
    CompiledRule,
    HyperscanLiterals,
    LiteralSet,
    Prefilter,
)
from airlock.mask._scan import Span, advance, advance_literals, held_suffix, render
from airlock.mask.rules import BUILTIN_RULES, PatternRule

__all__ = ["MaskSettings", "Masker", "StreamMasker", "replacement"]

Engine = Literal["auto", "hyperscan", "re2"]
TRUNCATED = "truncated"  # rule id of the possible secret start at the end of a cut value
NEVER = 1 << 62  # resume point of a rule that does not exist (no literal secrets yet)


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


def replacement(rule_id: str, value: bytes, hmac_key: bytes | None) -> bytes:
    """What a masked span becomes: ``[MASKED:<rule-id>]``, or with a key
    ``[MASKED:<rule-id>:<first 12 hex of HMAC-SHA256(key, value)>]`` so that equal secrets can
    be correlated across a log without revealing them."""
    if hmac_key is None:
        return b"[MASKED:" + rule_id.encode() + b"]"
    tag = hmac.new(hmac_key, value, hashlib.sha256).hexdigest()[:12]
    return b"[MASKED:" + rule_id.encode() + b":" + tag.encode() + b"]"


@dataclass(frozen=True)
class _Snapshot:
    rules: tuple[CompiledRule | None, ...]  # index 0: literal set (None when empty)
    literals: LiteralSet
    prefilter: Prefilter
    literal_matcher: HyperscanLiterals | None
    hmac_key: bytes | None
    # mask_text results under this snapshot (argv words repeat: `sh`, `git`, paths). Tied to
    # the snapshot, so a secret added later is never missed by an answer computed before it.
    texts: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def replace(self, rule_id: str, value: bytes) -> bytes:
        return replacement(rule_id, value, self.hmac_key)

    @functools.cached_property
    def reach(self) -> list[int]:
        """Per rule: how far past a start the bytes that decide it go (max_len + 1)."""
        return [rule.max_len + 1 if rule is not None else 0 for rule in self.rules]

    def initial_resume(self, at: int) -> list[int]:
        """Resume points for a stream (re)starting at offset ``at``."""
        return [at if rule is not None else NEVER for rule in self.rules]

    def find(
        self, buf: bytes, base: int, resume: list[int], final: bool, spans: list[Span]
    ) -> None:
        """Advance every rule over ``buf`` (updating ``resume``), appending spans found."""
        end = base + len(buf)
        if not final and min(map(operator.add, resume, self.reach)) > end:
            return  # no rule can settle a start yet: skip the scan
        hits, occurrences = self._scan(buf)
        self._advance(buf, base, resume, final, spans, hits, occurrences)

    def mask_whole(self, buf: bytes) -> bytes:
        """``buf`` masked as a whole stream: what a fresh StreamMasker's feed and flush
        return, in one scan, and ``buf`` itself when no rule can match in it."""
        hits, occurrences = self._scan(buf)
        if not hits and not occurrences:
            literal = self.rules[LITERAL_INDEX]
            if occurrences is not None or literal is None or literal.regex.search(buf) is None:
                return buf
        spans: list[Span] = []
        resume = self.initial_resume(0)
        self._advance(buf, 0, resume, True, spans, hits, occurrences)
        return render(buf, 0, 0, len(buf), spans, self.replace)[0]

    def mask_cut(self, buf: bytes) -> bytes:
        """``buf`` masked as a stream cut short after its last byte: like ``mask_whole``, and
        the tail that could be the start of a secret (a literal prefix, or what a quiet stream
        would hold for pattern rules) becomes ``[MASKED:truncated]``."""
        literals = self.literals
        held = max(held_suffix(buf, literals.forms, literals.max_len), self.hold_length(buf))
        hits, occurrences = self._scan(buf)
        spans: list[Span] = []
        self._advance(buf, 0, self.initial_resume(0), True, spans, hits, occurrences)
        if held:
            spans.append(Span(len(buf) - held, len(buf), len(self.rules), TRUNCATED))
        return render(buf, 0, 0, len(buf), spans, self.replace)[0]

    def _scan(self, buf: bytes) -> tuple[set[int], dict[int, int] | None]:
        """The prefilter's pass: pattern rules that may match, and the literal occurrences
        when hyperscan finds them (None: the literal rule is searched with RE2)."""
        if self.literal_matcher is not None:
            hits, occurrences = self.literal_matcher.scan(buf)
        else:
            hits, occurrences = self.prefilter.hits(buf), None
        if any(t in buf for t in self.literals.triggers):
            hits.add(self.canonical_index)
        return hits, occurrences

    @property
    def canonical_index(self) -> int:
        """Rule index of the canonical literal matcher: the last one."""
        return len(self.rules) - 1

    def _advance(
        self,
        buf: bytes,
        base: int,
        resume: list[int],
        final: bool,
        spans: list[Span],
        hits: set[int],
        occurrences: dict[int, int] | None,
    ) -> None:
        end = base + len(buf)
        old = list(resume)
        literal = self.rules[LITERAL_INDEX]
        # Rules the prefilter did not see settle every start they can: no match anywhere.
        if final:
            resume[:] = [max(r, end + 1) for r in old]
        else:
            resume[:] = [max(r, end + 1 - n) for r, n in zip(old, self.reach, strict=True)]
        if literal is not None:
            if occurrences is not None:
                resume[0] = advance_literals(literal, occurrences, buf, base, old[0], final, spans)
            else:
                resume[0] = advance(literal, LITERAL_INDEX, buf, base, old[0], final, spans)
        for index in sorted(hits):
            rule = self.rules[index]
            if index != LITERAL_INDEX and rule is not None:
                resume[index] = advance(rule, index, buf, base, old[index], final, spans)

    @functools.cached_property
    def hold_reach(self) -> int:
        """The longest tail a quiet stream may hold for pattern rules."""
        return max([rule.max_len for rule in self.rules[1:-1] if rule is not None] or [0])

    def hold_length(self, tail: bytes) -> int:
        """How much of the tail of a quiet stream could be the start of a pattern secret: its
        trailing run of non-whitespace bytes, or further back where a rule's ``hold`` says so.
        """
        window = tail[-self.hold_reach :] if self.hold_reach else b""
        run = _TRAILING_RUN.search(window)
        held = len(window) - run.start() if run else 0
        for rule in self.rules[1:-1]:
            if rule is not None and rule.hold is not None:
                found = rule.hold.search(window)
                if found is not None:
                    held = max(held, len(window) - found.start())
        return held

    def frontier(self, resume: list[int], end: int) -> int:
        """Everything before this offset is settled for every rule."""
        return min(end, *resume)


_TRAILING_RUN = re.compile(rb"\S+\Z")
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
        """Mask a complete string (UTF-8; a span cutting a character leaves U+FFFD)."""
        texts = self._snapshot.texts  # before masking: a newer snapshot only masks more
        masked = texts.get(text)
        if masked is None:
            raw = text.encode("utf-8")
            out = self._snapshot.mask_whole(raw)
            masked = text if out is raw else out.decode("utf-8", "replace")
            if len(text) <= _TEXT_MEMO_LEN:
                if len(texts) >= _TEXT_MEMO_SIZE:
                    texts.clear()
                texts[text] = masked
        return masked

    def mask_cut_text(self, text: str) -> str:
        """Mask a string that was cut short (an argument strace truncated): see
        ``_Snapshot.mask_cut``. The cut is treated like a chunk boundary, so the prefix of a
        secret the cut went through is masked too."""
        return self._snapshot.mask_cut(text.encode("utf-8")).decode("utf-8", "replace")

    def stream(self) -> StreamMasker:
        """A new stream state: one per output stream (stdout, stderr, a connection)."""
        return StreamMasker(self)

    def _checked_literal(self, value: str | bytes, rule_id: str) -> tuple[str, bytes]:
        _compile.validate_rule_id(rule_id)
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        if len(raw) < self._settings.min_literal_len:
            raise ConfigError(
                f"secret for {rule_id!r} is shorter than {self._settings.min_literal_len} "
                "bytes and would mask ordinary text",
                hint="register only real secret values; short values cannot be masked safely",
            )
        return rule_id, raw

    def _build(self) -> _Snapshot:
        literals = _compile.build_literal_set(self._literals)
        return _Snapshot(
            rules=(literals.rule, *self._patterns, literals.canonical),
            literals=literals,
            prefilter=self._prefilter,
            literal_matcher=_compile.build_literal_matcher(self._engine, literals, self._prefilter),
            hmac_key=self._hmac_key,
        )


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
        (``_Snapshot.hold_length``) is held too, until ``HOLD_WINDOW`` seconds after the call
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
        held = held_suffix(tail, literals.forms, literals.max_len)
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
        held = held_suffix(tail, literals.forms, literals.max_len)
        if held:
            spans.append(Span(end - held, end, len(snapshot.rules), TRUNCATED))
        return render(self._buf, self._base, self._emitted, end, spans, snapshot.replace)[0]

    def _pattern_hold(self, snapshot: _Snapshot, tail: bytes, end: int, now: float) -> int:
        held = snapshot.hold_length(tail)
        start = end - held
        if not held:
            self._hold_at = None
        elif self._hold_at != start:
            self._hold_at, self._hold_since = start, now
        elif now - self._hold_since >= self.HOLD_WINDOW:
            return 0
        return held

    def _sync(self) -> _Snapshot:
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
        keep = max(cut - 1, self._base)
        if keep > self._base:
            self._buf = self._buf[keep - self._base :]
            self._base = keep
