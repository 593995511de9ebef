"""Request paths, normalised once: what the guardrails judge is exactly what goes upstream.

Tricks that make a path look different to a glob than to the upstream are undone here:
percent-escapes are decoded (``%2e%2e`` is ``..``), dot segments are resolved, repeated slashes
are collapsed. The result is re-encoded for the upstream, so the upstream receives the path that
was judged. An escaped slash (``%2F``) stays inside its segment, as GitLab's ``projects/a%2Fb``
needs, and is shown as ``%2F`` to the globs, so ``*`` still never crosses a real ``/``.

Upstreams disagree on two points, so the guardrails judge every reading and the strictest
decision wins (:attr:`NormalPath.candidates`): a trailing slash usually names the same resource
(``DELETE /items/1/`` is ``DELETE /items/1``), and many servers decode ``%2F`` (and ``%5C``, a
backslash) into a separator before routing (``/items%2F1`` is ``/items/1`` there). Java servlet
containers drop ``;params`` from each segment (``/items;x/1`` is ``/items/1``, ``/x/..;/items``
is ``/items``), and some servers and proxies decode twice (``%252F`` is ``/``): those readings
are judged as well. A path whose decoded bytes are not UTF-8 (overlong ``%c0%af``) or hold a
control character (``%00``) is refused (:attr:`NormalPath.invalid`): upstreams disagree on them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote_from_bytes, unquote_to_bytes

__all__ = ["NormalPath", "join_upstream", "normalize_path"]

# RFC 3986 pchar minus "%" (always escaped) and "/" (the separator): kept literal upstream.
_SAFE = "-._~!$&'()*+,;=:@"
_ESCAPED_SEPARATOR = re.compile("%2F|%5C", re.IGNORECASE)
_SEGMENT_PARAMS = re.compile(";[^/]*")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class NormalPath:
    """``judged``: text the guardrails match (decoded, ``%2F`` kept); ``wire``: sent upstream."""

    judged: str
    wire: str
    invalid: str = ""  # why the path is refused, when it is

    @property
    def candidates(self) -> tuple[str, ...]:
        """The readings of this path the guardrails judge (see the module doc): as it is, with
        ``;params`` dropped, decoded once more, and each with escaped separators decoded; all
        without a trailing slash."""
        wires = [self.wire]
        if ";" in self.wire:
            wires.append(_SEGMENT_PARAMS.sub("", self.wire))
        if "%25" in self.wire:
            wires += [w.replace("%25", "%") for w in wires]
        wires += [_ESCAPED_SEPARATOR.sub("/", w) for w in wires if _ESCAPED_SEPARATOR.search(w)]
        readings = [self.judged] + [normalize_path(w).judged for w in wires[1:]]
        return tuple(dict.fromkeys(_without_trailing_slash(r) for r in readings))


def normalize_path(raw: str | bytes) -> NormalPath:
    """Normalise the request target's path (no query). A path always starts with ``/``."""
    data = raw.encode("latin-1") if isinstance(raw, str) else raw
    trailing = data.endswith(b"/") and data.strip(b"/") != b""
    segments: list[bytes] = []
    invalid = ""
    for part in data.split(b"/"):
        segment = unquote_to_bytes(part)
        invalid = invalid or _invalid(segment)
        if segment in (b"", b"."):
            continue
        if segment == b"..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    judged = "/" + "/".join(_judged(s) for s in segments)
    wire = "/" + "/".join(quote_from_bytes(s, safe=_SAFE) for s in segments)
    if trailing and segments:
        judged += "/"
        wire += "/"
    return NormalPath(judged=judged, wire=wire, invalid=invalid)


def _invalid(segment: bytes) -> str:
    if _CONTROL.search(segment):
        return "the path holds a control character (such as %00)"
    try:
        segment.decode("utf-8")
    except UnicodeDecodeError:
        return "the path is not UTF-8 once decoded"
    return ""


def _without_trailing_slash(path: str) -> str:
    return path.rstrip("/") or "/"


def _judged(segment: bytes) -> str:
    return segment.decode("utf-8", "replace").replace("/", "%2F")


def join_upstream(base_path: str, wire: str) -> str:
    """The upstream path: the upstream URL's own path prefix, then the normalised path."""
    prefix = base_path.rstrip("/")
    return prefix + wire if wire != "/" or not prefix else prefix + "/"
