"""Helpers for the masker tests: run-time token builders and chunked streaming."""

from __future__ import annotations

import random
import string
from collections.abc import Iterable, Sequence

from airlock.mask import Masker, MaskSettings

ENGINES = ("re2", "hyperscan")
ALNUM = string.ascii_letters + string.digits


def rand(n: int, alphabet: str = ALNUM, seed: int = 7) -> str:
    """Deterministic filler for test tokens, built at run time (nothing secret-looking is
    committed to the repository)."""
    r = random.Random(seed * 1000 + n)
    return "".join(r.choice(alphabet) for _ in range(n))


def stream_through(masker: Masker, data: bytes, cuts: Iterable[int]) -> bytes:
    """Feed ``data`` split at ``cuts`` through one stream and flush."""
    stream = masker.stream()
    out = []
    prev = 0
    for cut in sorted(set(cuts)):
        if 0 < cut < len(data):
            out.append(stream.feed(data[prev:cut]))
            prev = cut
    out.append(stream.feed(data[prev:]))
    out.append(stream.flush())
    return b"".join(out)


def chunks(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    """Split ``data`` into pieces of the given sizes (cycled), at least one byte each."""
    pieces, i, k = [], 0, 0
    while i < len(data):
        n = max(1, sizes[k % len(sizes)])
        pieces.append(data[i : i + n])
        i += n
        k += 1
    return pieces


def make(engine: str = "re2", **kwargs: object) -> Masker:
    return Masker(MaskSettings(engine=engine, **kwargs))  # type: ignore[arg-type]
