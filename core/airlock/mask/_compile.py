"""Turn rules and literal secrets into compiled matchers: exact RE2 regexes plus a prefilter.

The prefilter (hyperscan, or an RE2 set) only answers "which rules may match somewhere in this
buffer"; it never decides a span. Spans always come from the RE2 regexes, so the engine choice
changes speed, never output. A prefilter must therefore never miss a rule RE2 would match: rules
whose syntax hyperscan might read differently (non-ASCII, Unicode classes, high-byte escapes) or
cannot compile are not prefiltered and are searched with RE2 on every buffer instead.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import re2

from airlock.errors import ConfigError
from airlock.mask.forms import base64_forms, literal_forms
from airlock.mask.rules import PatternRule

__all__ = [
    "LITERAL_INDEX",
    "CompiledRule",
    "HyperscanLiterals",
    "LiteralSet",
    "Prefilter",
    "build_literal_matcher",
    "build_literal_set",
    "build_pattern_prefilter",
    "compile_rule",
    "hyperscan_available",
    "validate_rule_id",
]

LITERAL_INDEX = 0
"""Rule index of the literal alternation; pattern rules follow from index 1."""

MAX_RULE_LEN = 1 << 16
WRAPPED_LINE = rb"(?:^|\n)[A-Za-z0-9+/_-]{16}[A-Za-z0-9+/_-]*\r?\n[A-Za-z0-9+/_-]"
"""A line wrapped base64 could have made (see airlock.mask._wrapped), then one more character."""
_RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._/@+\-]{0,127}")
_PROBES = (b"", b"a", b" ", b"a b", b"\n", b"_0")
_SECRET_GROUP = b"secret"
_LITERAL_MEM = 512 << 20
_LONE_CR = re.compile(rb"\r(?!\n)")  # a CR that does not start a CRLF (or ends the buffer)


def _options(max_mem: int = 64 << 20) -> Any:
    options = re2.Options()
    options.encoding = re2.Options.Encoding.LATIN1
    options.max_mem = max_mem
    options.log_errors = False
    return options


def _re2(pattern: bytes, max_mem: int = 64 << 20) -> Any:
    """Compile without ``re2.compile``'s LRU cache, which would pin every literal set we
    replace (add_secret recompiles) in memory."""
    regexp_type = getattr(re2, "_Regexp", None)
    if regexp_type is None:  # pragma: no cover - older/newer wrapper without the class
        return re2.compile(pattern, _options(max_mem))
    return regexp_type(pattern, _options(max_mem))


def validate_rule_id(rule_id: str) -> None:
    """Refuse ids that could not be shown inside ``[MASKED:<id>]`` unambiguously."""
    if not _RULE_ID.fullmatch(rule_id):
        raise ConfigError(
            f"mask rule id {rule_id!r} is not valid",
            hint="use 1-128 characters: letters, digits and : . _ / @ + - (starting with a "
            "letter or digit)",
        )


@dataclass(frozen=True)
class CompiledRule:
    """One exact matcher: a pattern rule, or the alternation of every literal form."""

    rule_id: str
    regex: Any  # re2 regexp over bytes
    max_len: int
    secret_group: int | None = None
    names: dict[bytes, str] | None = None  # literal form → rule id (literal set only)
    overlapping: bool = False  # literals: also find occurrences that overlap a previous one
    group_names: tuple[str, ...] = ()  # canonical literals: capture group i + 1 → rule id
    hold: Any = None  # re2 regexp: a tail that may begin a match (PatternRule.hold)
    check: Any = None  # (buf, match) -> bool: False rejects a regex match (wrapped base64)

    def name_for(self, matched: bytes) -> str:
        """The rule id a match is reported under."""
        if self.names is None:
            return self.rule_id
        return self.names.get(matched, self.rule_id)

    def name_of(self, match: Any) -> str:
        """The rule id of a regex match (by its capture group for canonical literals)."""
        for group, name in enumerate(self.group_names, 1):
            if match.start(group) >= 0:
                return name
        return self.name_for(match.group())


def compile_rule(rule: PatternRule) -> CompiledRule:
    """Validate one pattern rule and compile it; every problem is a ConfigError naming it."""
    validate_rule_id(rule.id)
    if not 1 <= rule.max_len <= MAX_RULE_LEN:
        raise ConfigError(
            f"mask rule {rule.id!r}: max_len {rule.max_len} is out of range",
            hint=f"use a max_len between 1 and {MAX_RULE_LEN}",
        )
    regex = _compile_regex(rule.id, rule.regex)
    if _matches_empty(regex):
        raise ConfigError(
            f"mask rule {rule.id!r}: the regex can match an empty string",
            hint="make the regex match at least one character (e.g. use + instead of *)",
        )
    group = regex.groupindex.get(_SECRET_GROUP)
    hold = _compile_regex(rule.id, rule.hold) if rule.hold else None
    return CompiledRule(rule.id, regex, rule.max_len, secret_group=group, hold=hold)


def _compile_regex(rule_id: str, pattern: str) -> Any:
    try:
        return _re2(pattern.encode("utf-8"))
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ConfigError(
            f"mask rule {rule_id!r}: RE2 rejected the regex: {reason}",
            hint="write the regex in RE2 syntax: no backreferences and no lookaround "
            "(see https://github.com/google/re2/wiki/Syntax)",
        ) from exc


def _matches_empty(regex: Any) -> bool:
    return any(m.end() == m.start() for probe in _PROBES for m in regex.finditer(probe))


@dataclass(frozen=True)
class LiteralSet:
    """Every form of every literal secret, ready to match and to test prefixes against."""

    rule: CompiledRule | None
    forms: tuple[bytes, ...]  # sorted bytewise, for the prefix search in flush_idle
    count: int  # literal values, not forms
    canonical: CompiledRule | None = None  # see build_canonical_rule
    values: tuple[bytes, ...] = ()  # the literal values themselves (for canonical_held)
    triggers: tuple[bytes, ...] = ()  # a canonical match holds one of these, or a lone CR
    wrapped: tuple[bytes, ...] = ()  # base64 forms, sorted (for wrapped_held)

    def canonical_may_match(
        self, buf: bytes, wrapped_line: bool | None = None, gate: bool | None = None
    ) -> bool:
        """False when the canonical rule can find nothing the exact forms do not: ``buf`` has
        no trigger byte and no CR outside a CRLF (a CR before LF can only sit inside a value
        that has a newline, and then CR is a trigger) and no line wrapped base64 could have
        made (``wrapped_line``: hyperscan's answer to that, None to ask RE2). ``gate``:
        hyperscan's answer to the trigger and CR questions (:func:`canonical_gate`), None to
        search here."""
        if self.canonical is None:
            return False
        if gate is None:
            gate = any(t in buf for t in self.triggers) or _LONE_CR.search(buf) is not None
        if gate:
            return True
        if not self.wrapped or wrapped_line is False:
            return False
        from airlock.mask._wrapped import may_hold_wrapped

        return wrapped_line or may_hold_wrapped(buf)

    @property
    def max_len(self) -> int:
        return self.rule.max_len if self.rule is not None else 0

    def held(self, tail: bytes) -> int:
        """Length of the longest suffix of ``tail`` that could be the start of a literal secret
        in any form, exact or canonical (a stream cut there must hold it back)."""
        if self.rule is None:
            return 0
        from airlock.mask._canonical import canonical_held
        from airlock.mask._scan import held_suffix
        from airlock.mask._wrapped import wrapped_held

        exact = held_suffix(tail, self.forms, self.max_len)
        reach = self.canonical.max_len if self.canonical is not None else 0
        wrapped = wrapped_held(tail, self.wrapped, reach)
        return max(exact, canonical_held(tail, self.values, reach), wrapped)


def build_literal_set(literals: Sequence[tuple[str, bytes]]) -> LiteralSet:
    """Compile ``(rule_id, value)`` pairs; the first pair to claim a form names it."""
    names: dict[bytes, str] = {}
    for rule_id, value in literals:
        for form in literal_forms(value):
            names.setdefault(form, rule_id)
    if not names:
        return LiteralSet(None, (), 0)
    longest_first = sorted(names, key=lambda f: (-len(f), f))
    pattern = b"|".join(re2.escape(form) for form in longest_first)
    # A big alternation needs a big DFA cache or RE2 thrashes (measured: 4 MB/s with 64 MiB,
    # ~800 MB/s with 256 MiB for 13k forms). The cache grows only as states are built.
    regex = _re2(pattern, max_mem=_LITERAL_MEM if len(names) > 256 else 64 << 20)
    rule = CompiledRule(
        "literal",
        regex,
        len(longest_first[0]),
        names=names,
        overlapping=True,
    )
    from airlock.mask._canonical import build_canonical_rule  # it builds on this module

    canonical, triggers = build_canonical_rule(literals)
    values = {value for _, value in literals}
    wraps = canonical is not None and len(canonical.group_names) > len(values)  # see _wrapped
    return LiteralSet(
        rule,
        tuple(sorted(names)),
        len({value for _, value in literals}),
        canonical=canonical,
        triggers=triggers,
        values=tuple(sorted({value for _, value in literals})),
        wrapped=tuple(sorted({f for _, v in literals for f in base64_forms(v)})) if wraps else (),
    )


class Prefilter(Protocol):
    """Which rules may match somewhere in a buffer (a superset of what RE2 finds)."""

    name: str

    def hits(self, data: bytes) -> set[int]: ...


def hyperscan_available() -> bool:
    """True when the hyperscan module imports on this machine."""
    try:
        import hyperscan  # noqa: F401
    except ImportError:
        return False
    return True


def _hyperscan_safe(regex: bytes) -> bool:
    """True when hyperscan reads ``regex`` as RE2 does (or as a superset of it).

    Outside ASCII, Unicode classes, case folding of Latin-1 letters and byte escapes of
    0x80-0xff can differ between the two; such rules skip the prefilter rather than risk a miss.
    """
    if not regex.isascii():
        return False
    i = 0
    while i < len(regex):
        if regex[i : i + 1] == b"\\":
            escape = regex[i + 1 : i + 2]
            if escape in (b"p", b"P", b"C") or escape.isdigit():
                return False
            if escape == b"x" and not re.match(rb"\\x[0-7][0-9a-fA-F]", regex[i : i + 4]):
                return False
            i += 2
        else:
            i += 1
    return True


class _HyperscanPatterns:
    """Hyperscan block-mode database: one SINGLEMATCH expression per safe pattern rule."""

    name = "hyperscan"

    def __init__(self, rules: Sequence[tuple[int, bytes]]) -> None:
        import hyperscan

        self._hs = hyperscan
        safe = [(i, r) for i, r in rules if _hyperscan_safe(r)]
        self.compiled, self._always, self._db = self._compile_each(safe)
        self._always |= {i for i, r in rules if not _hyperscan_safe(r)}
        self._local = threading.local()

    def _compile_each(
        self, rules: list[tuple[int, bytes]]
    ) -> tuple[list[tuple[int, bytes]], set[int], Any]:
        """Keep the rules hyperscan compiles (and their database); the others are always
        searched with RE2. The common case compiles once. The database is not cached on disk
        on purpose: a cache the agent's user can write would let one job blind the next."""
        if not rules:
            return [], set(), None
        try:
            return rules, set(), self._database([r for _, r in rules], [i for i, _ in rules])
        except self._hs.error:
            good = []
            for index, regex in rules:
                try:
                    self._database([regex], [index])
                    good.append((index, regex))
                except self._hs.error:
                    pass
            db = self._database([r for _, r in good], [i for i, _ in good])
            return good, {i for i, _ in rules} - {i for i, _ in good}, db

    def _database(self, expressions: list[bytes], ids: list[int]) -> Any:
        if not expressions:
            return None
        db = self._hs.Database(mode=self._hs.HS_MODE_BLOCK)
        db.compile(
            expressions=expressions,
            ids=ids,
            elements=len(expressions),
            flags=self._hs.HS_FLAG_SINGLEMATCH,
        )
        return db

    def hits(self, data: bytes) -> set[int]:
        found = self.always()
        if self._db is not None:
            # Scratch space may not be shared by two scans at once: one per thread.
            scratch = getattr(self._local, "scratch", None)
            if scratch is None:
                scratch = self._local.scratch = self._hs.Scratch(self._db)

            def on_match(rule: int, start: int, end: int, flags: int, context: Any) -> None:
                found.add(rule)

            self._db.scan(data, match_event_handler=on_match, scratch=scratch)
        return found

    def always(self) -> set[int]:
        """Rules searched with RE2 on every buffer (hyperscan cannot vouch for them)."""
        return set(self._always)


class HyperscanLiterals:
    """One hyperscan pass over a buffer: every literal occurrence (and, for large literal sets,
    the pattern prefilter too).

    A literal occurrence is fully described by (start, form), so hyperscan reports literal spans
    itself: at each start the longest form wins, exactly what the RE2 alternation (longest
    first, resumed one byte after each match) finds. Forms are written as ``\\xHH`` regexes: the
    Python binding passes pure literals as C strings, which a NUL byte would cut. Distinct ids
    keep compiling fast (hyperscan is very slow with many expressions sharing one id).

    With many forms a second scan costs as much as the first, so the pattern rules are compiled
    into the same database (measured 1.4x faster); with few forms the shared pattern database is
    kept and ``add_secret`` stays cheap.
    """

    MERGE_AT = 1024  # forms
    _BASE = 1 << 24  # literal ids start here; pattern ids are rule indices

    WRAP_GATE = (1 << 24) - 1
    """Reported in ``scan``'s rules when ``wrap_gate`` is on and the buffer has a
    ``WRAPPED_LINE`` (what ``_wrapped.may_hold_wrapped`` asks RE2, in the same pass)."""
    CANONICAL_GATE = (1 << 24) - 2
    """Reported when ``triggers`` is given and the buffer has one of them, or a CR before
    anything but LF (see :func:`canonical_gate`)."""

    def __init__(
        self,
        forms: Sequence[bytes],
        patterns: Prefilter,
        wrap_gate: bool = False,
        triggers: Sequence[bytes] | None = None,
    ) -> None:
        import hyperscan

        self._hs = hyperscan
        self._lengths = [len(form) for form in forms]
        self._patterns = patterns
        expressions = [b"".join(b"\\x%02x" % byte for byte in form) for form in forms]
        ids = [self._BASE + i for i in range(len(forms))]
        flags = [0] * len(forms)
        if wrap_gate:
            expressions.append(WRAPPED_LINE)
            ids.append(self.WRAP_GATE)
            flags.append(hyperscan.HS_FLAG_SINGLEMATCH)
        self.gates_canonical = triggers is not None
        if triggers is not None:
            expressions.append(canonical_gate(triggers))
            ids.append(self.CANONICAL_GATE)
            flags.append(hyperscan.HS_FLAG_SINGLEMATCH)
        self.merged = len(forms) >= self.MERGE_AT and isinstance(patterns, _HyperscanPatterns)
        if self.merged:
            assert isinstance(patterns, _HyperscanPatterns)
            expressions += [regex for _, regex in patterns.compiled]
            ids += [index for index, _ in patterns.compiled]
            flags += [hyperscan.HS_FLAG_SINGLEMATCH] * len(patterns.compiled)
        self._db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        self._db.compile(expressions=expressions, ids=ids, elements=len(ids), flags=flags)
        self._local = threading.local()

    def scan(self, data: bytes) -> tuple[set[int], dict[int, int]]:
        """Pattern rules that may match, and for each start offset where a literal form occurs
        the end of the longest one."""
        if self.merged:
            assert isinstance(self._patterns, _HyperscanPatterns)
            hits = self._patterns.always()
        else:
            hits = self._patterns.hits(data)
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = self._hs.Scratch(self._db)
        lengths, base = self._lengths, self._BASE
        longest: dict[int, int] = {}

        def on_match(match_id: int, _from: int, end: int, flags: int, context: Any) -> None:
            if match_id < base:
                hits.add(match_id)
                return
            start = end - lengths[match_id - base]
            if longest.get(start, -1) < end:
                longest[start] = end

        self._db.scan(data, match_event_handler=on_match, scratch=scratch)
        return hits, longest


def canonical_gate(triggers: Sequence[bytes]) -> bytes:
    """A hyperscan expression that matches where ``LiteralSet.canonical_may_match`` looks for a
    trigger byte or a CR not followed by LF, except a CR that ends the buffer (the caller checks
    that one). In the literal scan it costs a fraction of the ``in`` tests and the regex search
    (measured ~0.1 against ~0.4 ms of CPU per MB)."""
    lone_cr = rb"\x0d[^\x0a]"
    if not triggers:
        return lone_cr
    return b"[" + b"".join(b"\\x%02x" % t[0] for t in triggers) + b"]|" + lone_cr


class _Re2Patterns:
    """An RE2 set over every pattern rule (RE2's many-match DFA does not give up on slow input)."""

    name = "re2"
    _PROBE = b"\x00airlock-mask-probe\x00"

    def __init__(self, rules: Sequence[tuple[int, bytes]]) -> None:
        self._index: list[int] = []
        self._set: Any = None
        if not rules:
            return
        self._set = re2.Set.SearchSet(_options(256 << 20))
        for index, regex in rules:
            self._set.Add(regex)
            self._index.append(index)
        self._set.Add(re2.escape(self._PROBE))
        self._set.Compile()
        if not self._set.Match(self._PROBE):
            raise ConfigError(
                "the RE2 rule set could not be built (out of memory)",
                hint="use fewer or simpler mask patterns, or engine=hyperscan",
            )

    def hits(self, data: bytes) -> set[int]:
        if self._set is None:
            return set()
        matched = self._set.Match(data) or ()
        return {self._index[i] for i in matched if i < len(self._index)}


def build_pattern_prefilter(engine: str, rules: Iterable[tuple[int, bytes]]) -> Prefilter:
    """The prefilter for pattern rules, by engine name ("hyperscan" or "re2").

    Prefilters are immutable, so maskers with the same rules share one (compiling the built-in
    rules with hyperscan takes a noticeable fraction of a second). Two threads asking for the
    same rules at once compile them once: the second waits for the first (see ``warm_up``).
    """
    key = (engine, tuple(rules))
    with _CACHE_LOCK:
        found = _PREFILTERS.get(key)
        if found is not None:
            return found
        building = _BUILDING.setdefault(key, threading.Lock())
    try:
        with building:
            with _CACHE_LOCK:
                found = _PREFILTERS.get(key)
            if found is None:
                found = (
                    _HyperscanPatterns(key[1]) if engine == "hyperscan" else _Re2Patterns(key[1])
                )
                with _CACHE_LOCK:
                    if len(_PREFILTERS) >= _CACHE_SIZE:
                        del _PREFILTERS[next(iter(_PREFILTERS))]
                    _PREFILTERS[key] = found
    finally:
        with _CACHE_LOCK:
            _BUILDING.pop(key, None)
    return found


_CACHE_SIZE = 32
_CACHE_LOCK = threading.Lock()
_PREFILTERS: dict[tuple[str, tuple[tuple[int, bytes], ...]], Prefilter] = {}
_BUILDING: dict[tuple[str, tuple[tuple[int, bytes], ...]], threading.Lock] = {}


def build_literal_matcher(
    engine: str, literals: LiteralSet, patterns: Prefilter
) -> HyperscanLiterals | None:
    """Hyperscan's literal matcher, or None: with RE2 the alternation is searched directly."""
    if engine != "hyperscan" or literals.rule is None:
        return None
    triggers = literals.triggers if literals.canonical is not None else None
    return HyperscanLiterals(
        literals.forms, patterns, wrap_gate=bool(literals.wrapped), triggers=triggers
    )
