"""The masker's immutable compiled state (``Snapshot``): rules, literal set, prefilters, and
the scans over a buffer that every masking call is made of."""

from __future__ import annotations

import functools
import hashlib
import hmac
import operator
import re
from dataclasses import dataclass, field

from airlock.mask._compile import (
    LITERAL_INDEX,
    CompiledRule,
    HyperscanLiterals,
    LiteralSet,
    Prefilter,
)
from airlock.mask._scan import Span, advance, advance_literals, render

__all__ = ["NEVER", "TRUNCATED", "Snapshot", "replacement"]

TRUNCATED = "truncated"  # rule id of the possible secret start at the end of a cut value
NEVER = 1 << 62  # resume point of a rule that does not exist (no literal secrets yet)
_TRAILING_RUN = re.compile(rb"\S+\Z")


def replacement(rule_id: str, value: bytes, hmac_key: bytes | None) -> bytes:
    """What a masked span becomes: ``[MASKED:<rule-id>]``, or with a key
    ``[MASKED:<rule-id>:<first 12 hex of HMAC-SHA256(key, value)>]`` so that equal secrets can
    be correlated across a log without revealing them."""
    if hmac_key is None:
        return b"[MASKED:" + rule_id.encode() + b"]"
    tag = hmac.new(hmac_key, value, hashlib.sha256).hexdigest()[:12]
    return b"[MASKED:" + rule_id.encode() + b":" + tag.encode() + b"]"


@dataclass(frozen=True)
class Snapshot:
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
        held = max(literals.held(buf), self.hold_length(buf))
        hits, occurrences = self._scan(buf)
        spans: list[Span] = []
        self._advance(buf, 0, self.initial_resume(0), True, spans, hits, occurrences)
        if held:
            spans.append(Span(len(buf) - held, len(buf), len(self.rules), TRUNCATED))
        return render(buf, 0, 0, len(buf), spans, self.replace)[0]

    def _scan(self, buf: bytes) -> tuple[set[int], dict[int, int] | None]:
        """The prefilter's pass: pattern rules that may match, and the literal occurrences
        when hyperscan finds them (None: the literal rule is searched with RE2)."""
        wrapped_line = gate = None
        matcher = self.literal_matcher
        if matcher is not None:
            hits, occurrences = matcher.scan(buf)
            wrapped_line = HyperscanLiterals.WRAP_GATE in hits
            hits.discard(HyperscanLiterals.WRAP_GATE)
            if matcher.gates_canonical:
                gate = HyperscanLiterals.CANONICAL_GATE in hits or buf.endswith(b"\r")
                hits.discard(HyperscanLiterals.CANONICAL_GATE)
        else:
            hits, occurrences = self.prefilter.hits(buf), None
        if self.literals.canonical_may_match(buf, wrapped_line, gate):
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
