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

    def _scan(self, buf: bytes) -> tuple[set[int], dict[int, int] | None]:
        """The prefilter's pass: pattern rules that may match, and the literal occurrences
        when hyperscan finds them (None: the literal rule is searched with RE2)."""
        if self.literal_matcher is not None:
            return self.literal_matcher.scan(buf)
        return self.prefilter.hits(buf), None

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

    def frontier(self, resume: list[int], end: int) -> int:
        """Everything before this offset is settled for every rule."""
        return min(end, *resume)


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
            rules=(literals.rule, *self._patterns),
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

    def flush_idle(self) -> bytes:
        """The stream went quiet: return what is held, masked as if the stream ended here,
        except the longest tail that is a proper prefix of a literal secret form.

        A literal secret written in slow pieces is still masked. A pattern secret cut by the
        pause (say half a private key block) may not be: the part shown is no longer held.
        """
        snapshot = self._sync()
        end = self._base + len(self._buf)
        if end == self._emitted:
            return b""
        spans = list(self._pending)
        snapshot.find(self._buf, self._base, list(self._resume), True, spans)
        tail = self._buf[self._emitted - self._base :]
        literals = snapshot.literals
        cut = end - held_suffix(tail, literals.forms, literals.max_len)
        out, cut, _ = render(self._buf, self._base, self._emitted, cut, spans, snapshot.replace)
        # Restart matching at the cut: what was shown cannot be masked any more.
        self._resume = snapshot.initial_resume(cut)
        self._pending = []
        self._commit(cut)
        return out

    def _sync(self) -> _Snapshot:
        """Pick up secrets added since the last call: re-examine all held output for them."""
        current = self._masker._snapshot
        if current is not self._snapshot:
            self._snapshot = current
            self._resume[LITERAL_INDEX] = self._emitted
            self._pending = [s for s in self._pending if s.order != LITERAL_INDEX]
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
