"""The span-finding core shared by one-shot and streaming masking.

Semantics (engine- and chunking-independent). For each rule, matches are found left to right:
from a resume position, the leftmost start ``p`` where the rule matches inside the window
``[p, p + max_len)`` (RE2 sees the byte after the window as context, so ``\\b`` and ``$`` are
not fooled by it); the match is RE2's preferred one in that window; the search resumes at its
end (patterns) or at ``p + 1`` (literals, so overlapping occurrences are all found). Masked spans
of every rule are merged where they overlap; a merged span is replaced once, named by its
leftmost match.

Why streaming gives the same bytes: whether rule ``r`` matches at ``p``, and how, depends only on
the bytes ``[p - 1, p + max_len]``. A feed decides every start ``p <= end - max_len - 1`` (the
window and its context byte are in the buffer) and nothing after it; ``flush`` decides the rest
with the true end of the stream. Positions before every rule's resume point are settled.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from airlock.mask._compile import LITERAL_INDEX as LITERAL
from airlock.mask._compile import CompiledRule

__all__ = ["Span", "advance", "advance_literals", "held_suffix", "render"]


@dataclass(frozen=True, slots=True)
class Span:
    """A masked byte range ``[start, end)`` in absolute stream offsets."""

    start: int
    end: int
    order: int  # rule index: breaks ties between spans that start together
    rule_id: str


def advance(
    rule: CompiledRule,
    order: int,
    buf: bytes,
    base: int,
    resume: int,
    final: bool,
    out: list[Span],
) -> int:
    """Find ``rule``'s matches that start in ``[resume, limit]``; return the new resume point.

    ``buf`` holds the stream from offset ``base``; ``limit`` is the last start decidable now.
    """
    end = base + len(buf)
    limit = end if final else end - rule.max_len - 1
    pos = resume
    search, match = rule.regex.search, rule.regex.match
    while pos <= limit:
        m = search(buf, pos - base)
        if m is None or m.start() + base > limit:
            return max(pos, limit + 1)
        start = m.start() + base
        if m.end() - m.start() > rule.max_len:
            m = match(buf, start - base, start - base + rule.max_len)
            if m is None:
                pos = start + 1
                continue
        if m.end() == m.start() or (rule.check is not None and not rule.check(buf, m)):
            pos = start + 1
            continue
        out.append(_span_of(rule, order, m, base))
        pos = start + 1 if rule.overlapping else m.end() + base
    return pos


def advance_literals(
    rule: CompiledRule,
    longest_at: dict[int, int],
    buf: bytes,
    base: int,
    resume: int,
    final: bool,
    out: list[Span],
) -> int:
    """``advance`` for the literal rule from precomputed occurrences (start → longest end,
    offsets in ``buf``): the same spans the RE2 alternation would give, without searching."""
    end = base + len(buf)
    limit = end if final else end - rule.max_len - 1
    if resume > limit:
        return resume
    for start in sorted(longest_at):
        if resume <= start + base <= limit:
            stop = longest_at[start]
            out.append(Span(start + base, stop + base, LITERAL, rule.name_for(buf[start:stop])))
    return limit + 1


def _span_of(rule: CompiledRule, order: int, m: object, base: int) -> Span:
    group = rule.secret_group
    s, e = m.span(group) if group is not None else (-1, -1)  # type: ignore[attr-defined]
    if s < 0 or s == e:
        s, e = m.span()  # type: ignore[attr-defined]
    return Span(s + base, e + base, order, rule.name_of(m))


def render(
    buf: bytes,
    base: int,
    emitted: int,
    cut: int,
    spans: Sequence[Span],
    replace: Callable[[str, bytes], bytes],
) -> tuple[bytes, int, list[Span]]:
    """Masked bytes for ``[emitted, cut)``, the cut actually used, and the spans held back.

    A merged span that straddles ``cut`` could still grow, so the cut moves back to its start.
    """
    if not spans:
        return buf[emitted - base : cut - base], cut, []
    groups = _merge(spans)
    for start, end, _ in groups:
        if start < cut < end:
            cut = start
            break
    parts: list[bytes] = []
    pos = emitted
    for start, end, rule_id in groups:
        if end > cut:
            break
        parts.append(buf[pos - base : start - base])
        parts.append(replace(rule_id, buf[start - base : end - base]))
        pos = end
    parts.append(buf[pos - base : cut - base])
    return b"".join(parts), cut, [s for s in spans if s.start >= cut]


def _merge(spans: Sequence[Span]) -> list[tuple[int, int, str]]:
    ordered = sorted(spans, key=lambda s: (s.start, -s.end, s.order))
    groups: list[tuple[int, int, str]] = []
    for span in ordered:
        if groups and span.start < groups[-1][1]:
            start, end, rule_id = groups[-1]
            groups[-1] = (start, max(end, span.end), rule_id)
        else:
            groups.append((span.start, span.end, span.rule_id))
    return groups


def held_suffix(tail: bytes, forms: Sequence[bytes], longest: int) -> int:
    """Length of the longest suffix of ``tail`` that is a proper prefix of a form in ``forms``
    (sorted bytewise), i.e. a literal secret that may be cut mid-way by a slow writer."""
    for k in range(min(len(tail), longest - 1), 0, -1):
        suffix = tail[-k:]
        i = bisect_left(forms, suffix)
        while i < len(forms) and forms[i].startswith(suffix):
            if len(forms[i]) > k:
                return k
            i += 1
    return 0
