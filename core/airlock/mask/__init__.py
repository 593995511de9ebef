"""Streaming secret masker used by everything that records or shows data.

Literal secrets (and their base64, base64url, percent and hex forms) and pattern rules (built-in
shapes such as GitHub tokens or private key blocks, plus policy patterns) are replaced by
``[MASKED:<rule-id>]``. Output is the same for every engine and every chunking of a stream; see
docs/masking.md for what is guaranteed and what is not.

    masker = Masker(MaskSettings(literals=(("env:TOKEN", token),)))
    stream = masker.stream()
    shown = stream.feed(chunk) ... + stream.flush()
"""

from __future__ import annotations

from airlock.mask.masker import Masker, MaskSettings, StreamMasker, replacement
from airlock.mask.rules import BUILTIN_RULES, PatternRule

__all__ = [
    "BUILTIN_RULES",
    "MaskSettings",
    "Masker",
    "PatternRule",
    "StreamMasker",
    "replacement",
]
