"""Request paths, normalised once: what the guardrails judge is exactly what goes upstream.

Tricks that make a path look different to a glob than to the upstream are undone here:
percent-escapes are decoded (``%2e%2e`` is ``..``), dot segments are resolved, repeated slashes
are collapsed. The result is re-encoded for the upstream, so the upstream receives the path that
was judged. An escaped slash (``%2F``) stays inside its segment, as GitLab's ``projects/a%2Fb``
needs, and is shown as ``%2F`` to the globs, so ``*`` still never crosses a real ``/``.

Upstreams disagree on two points, so the guardrails judge every reading and the strictest
decision wins (:attr:`NormalPath.candidates`): a trailing slash usually names the same resource
(``DELETE /items/1/`` is ``DELETE /items/1``), and many servers decode ``%2F`` (and ``%5C``, a
backslash) into a separator before routing (``/items%2F1`` is ``/items/1`` there).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote_from_bytes, unquote_to_bytes

__all__ = ["NormalPath", "join_upstream", "normalize_path"]

# RFC 3986 pchar minus "%" (always escaped) and "/" (the separator): kept literal upstream.
_SAFE = "-._~!$&'()*+,;=:@"


@dataclass(frozen=True)
class NormalPath:
    """``judged``: text the guardrails match (decoded, ``%2F`` kept); ``wire``: sent upstream."""

    judged: str
    wire: str

    @property
    def candidates(self) -> tuple[str, ...]:
        """The readings of this path the guardrails judge: without a trailing slash, and, when
        an escaped slash or backslash is present, with it decoded into a separator."""
        first = _without_trailing_slash(self.judged)
        if "%2F" not in self.wire and "%5C" not in self.wire:
            return (first,)
        split = normalize_path(self.wire.replace("%2F", "/").replace("%5C", "/")).judged
        second = _without_trailing_slash(split)
        return (first,) if second == first else (first, second)


def normalize_path(raw: str | bytes) -> NormalPath:
    """Normalise the request target's path (no query). A path always starts with ``/``."""
    data = raw.encode("latin-1") if isinstance(raw, str) else raw
    trailing = data.endswith(b"/") and data.strip(b"/") != b""
    segments: list[bytes] = []
    for part in data.split(b"/"):
        segment = unquote_to_bytes(part)
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
    return NormalPath(judged=judged, wire=wire)


def _without_trailing_slash(path: str) -> str:
    return path.rstrip("/") or "/"


def _judged(segment: bytes) -> str:
    return segment.decode("utf-8", "replace").replace("/", "%2F")


def join_upstream(base_path: str, wire: str) -> str:
    """The upstream path: the upstream URL's own path prefix, then the normalised path."""
    prefix = base_path.rstrip("/")
    return prefix + wire if wire != "/" or not prefix else prefix + "/"
