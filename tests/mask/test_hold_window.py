"""The hold window: a secret or built-in shape split across writes is masked whatever the pause
between the pieces, as long as they arrive within StreamMasker.HOLD_WINDOW of its first byte
(docs/masking.md states the rule). A fake clock stands in for the runner's idle calls."""

from __future__ import annotations

import pytest
from tests.mask.helpers import ALNUM, make, rand

from airlock.mask import StreamMasker

WINDOW = StreamMasker.HOLD_WINDOW
IDLE = 0.03  # the runner's idle interval: flush_idle is called this often while quiet


def _shapes() -> dict[str, bytes]:
    """One token of each built-in shape, built at run time."""
    return {
        "github-token": ("gh" + "p_" + rand(36)).encode(),
        "aws-access-key-id": ("AK" + "IA" + rand(16, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")).encode(),
        "aws-secret-access-key": ("aws_secret_access_key = " + rand(40, ALNUM + "/+")).encode(),
        "uri-password": ("postgres://app:" + rand(14) + "@db.internal/app").encode(),
        "jwt": ("eyJ" + rand(20) + ".eyJ" + rand(30) + "." + rand(20)).encode(),
        "gitlab-token": ("gl" + "pat-" + rand(20)).encode(),
        "slack-webhook": ("https://hooks.slack.com/services/" + rand(30)).encode(),
        "stripe-key": ("sk" + "_live_" + rand(24)).encode(),
        "private-key-block": (
            "-----BEGIN RSA PRIVATE KEY-----\n"
            + "\n".join(rand(64, ALNUM + "+/", seed=i) for i in range(4))
            + "\n-----END RSA PRIVATE KEY-----"
        ).encode(),
    }


SHAPES = _shapes()


def _split_with_pause(
    stream: StreamMasker, first: bytes, second: bytes, pause: float
) -> tuple[bytes, bytes]:
    """Feed ``first``, stay quiet for ``pause`` seconds (idle calls every IDLE), feed the rest.
    Returns (shown during the pause, everything shown)."""
    now = 1000.0
    out = [stream.feed(first), stream.flush_idle(now)]
    waited = 0.0
    while waited + IDLE <= pause:
        waited += IDLE
        out.append(stream.flush_idle(now + waited))
    during = b"".join(out)
    out += [stream.feed(second), stream.flush_idle(now + pause), stream.flush()]
    return during, b"".join(out)


@pytest.mark.parametrize("pause", [0.0, 0.005, 0.03, 0.25, WINDOW - IDLE])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_built_in_shape_split_within_the_window_is_masked(
    engine: str, shape: str, pause: float
) -> None:
    masker = make(engine)
    line = b"config: " + SHAPES[shape] + b"\n$ "
    expected = masker.mask_bytes(line)
    assert f"[MASKED:{shape}]".encode() in expected
    for cut in range(9, len(line) - 3, 7):
        during, shown = _split_with_pause(masker.stream(), line[:cut], line[cut:], pause)
        assert shown == expected, (cut, pause)
        assert during == expected[: len(during)]


@pytest.mark.parametrize("pause", [0.005, 0.3, WINDOW - IDLE])
def test_a_literal_split_within_the_window_is_masked(engine: str, pause: float) -> None:
    value = "lit " + rand(20) + " x"  # spaces inside: not one run of non-whitespace
    masker = make(engine, literals=(("env:K", value),))
    line = b"k=" + value.encode() + b" ok"
    for cut in range(1, len(line)):
        _, shown = _split_with_pause(masker.stream(), line[:cut], line[cut:], pause)
        assert shown == b"k=[MASKED:env:K] ok", cut


def test_beyond_the_window_the_first_piece_is_shown() -> None:
    """The stated limit: a piece arriving later than the window cannot hide what was shown."""
    token = SHAPES["github-token"]
    during, shown = _split_with_pause(make().stream(), token[:20], token[20:], WINDOW + IDLE)
    assert during == token[:20]
    assert b"[MASKED:github-token]" not in shown


def test_a_prompt_ending_in_whitespace_is_shown_at_once() -> None:
    stream = make().stream()
    stream.feed(b"Password: ")
    assert stream.flush_idle(1.0) == b"Password: "


def test_a_trailing_word_is_shown_when_the_window_ends() -> None:
    stream = make().stream()
    stream.feed(b"progress: 10%")
    assert stream.flush_idle(1.0) == b"progress: "
    assert stream.flush_idle(1.0 + WINDOW / 2) == b""
    assert stream.flush_idle(1.0 + WINDOW) == b"10%"


def test_a_complete_private_key_block_is_not_held() -> None:
    stream = make().stream()
    stream.feed(SHAPES["private-key-block"] + b"\nnext line")
    assert stream.flush_idle(1.0) == b"[MASKED:private-key-block]\nnext "


@pytest.mark.parametrize(
    "inside",
    [
        b"\x1b[1;34m",
        b"\x1b]0;t\x07",
        b"\x00",
        b"\r",
        b"%",
        b"\x7f",
        b"\xc2\x9b1m",
        b"x\x08",
        b"@\x08",
    ],
    ids=repr,
)
def test_a_literal_with_invisible_bytes_split_anywhere_is_masked(
    engine: str, inside: bytes
) -> None:
    """Found by the leak property test: a literal written with an escape inside, cut inside or
    next to the escape, with a pause; the start must be held like an exact prefix."""
    value = b"4:GDo\nU\x01H\nGRZ8iJo8N5qiWYm"
    masker = make(engine, literals=(("env:K", value),))
    if inside == b"%":  # the first newline percent-encoded
        shown = value[:5] + b"%0a" + value[6:]
    else:
        shown = value[:12] + inside + value[12:]
    line = b"value=" + shown + b" ;\n"
    for cut in range(1, len(line)):
        _, out = _split_with_pause(masker.stream(), line[:cut], line[cut:], 0.05)
        assert out == b"value=[MASKED:env:K] ;\n", cut
