"""A secret as a terminal shows it, written with bytes that join it on screen: DEL, a backspace
overstrike (`x\\bs`), the UTF-8 C1 CSI (U+009B, bytes c2 9b) and CSI REP (`ESC [ n b`, repeat
the previous character). A small terminal model (`visible`) says what a reader sees; no
rendering of a secret may leave it visible, one-shot, streamed, or with idle flushes."""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tests.mask.helpers import chunks, make, rand

from airlock.mask import Masker, MaskSettings, replacement

MARK = replacement("env:K", b"", None)
CSI = (b"\x1b[", b"\xc2\x9b")
_ESCAPES = (b"\x1b[1;31m", b"\xc2\x9b0m", b"\x1b]0;t\x07", b"\x1b(B")


def visible(data: bytes) -> bytes:
    """What a terminal shows for ``data``, as far as these tests need: escape sequences (7-bit
    and UTF-8 C1 CSI, OSC, two-byte ESC), NUL, CR and DEL show nothing; a backspace moves the
    cursor back one cell, so the next character overstrikes; REP repeats the last character."""
    cells: list[int] = []
    cursor, last, i = 0, None, 0
    while i < len(data):
        byte = data[i]
        csi = next((c for c in CSI if data.startswith(c, i)), None)
        if csi is not None:
            j = i + len(csi)
            while j < len(data) and not 0x40 <= data[j] <= 0x7E:
                j += 1
            params = data[i + len(csi) : j]
            if data[j : j + 1] == b"b" and last is not None:  # REP
                for _ in range(max(1, int(params or b"1"))):
                    cursor = _put(cells, cursor, last)
            i = j + 1
        elif data.startswith(b"\x1b]", i):
            i = data.index(b"\x07", i) + 1
        elif byte == 0x1B:
            i += 3 if data[i + 1 : i + 2] == b"(" else 2
        elif byte in (0x00, 0x0D, 0x7F):
            i += 1
        elif byte == 0x08:
            cursor, i = max(0, cursor - 1), i + 1
        else:
            cursor, last, i = _put(cells, cursor, byte), byte, i + 1
    return bytes(cells)


def _put(cells: list[int], cursor: int, byte: int) -> int:
    if cursor < len(cells):
        cells[cursor] = byte
    else:
        cells.append(byte)
    return cursor + 1


# Printable ASCII without the marker's brackets; runs of one character made likely.
_CHARS = [c for c in range(0x21, 0x7F) if c not in b"[]"]
runs = st.lists(st.tuples(st.sampled_from(_CHARS), st.integers(1, 4)), min_size=3, max_size=12)


@st.composite
def rendered(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A secret and one way a terminal could be made to show it."""
    pieces = [b"k9-"]  # never a weak value (strength.py), at least 4 bytes
    value = b"k9-"
    for char, count in draw(runs):
        value += bytes((char,)) * count
        piece = bytes((char,))
        left = count - 1
        while left:
            kind = draw(st.integers(0, 2))
            if kind == 0:  # a REP stands for some copies
                n = draw(st.integers(1, left))
                param = b"" if n == 1 and draw(st.booleans()) else str(n).encode()
                piece += draw(st.sampled_from(CSI)) + param + b"b"
                left -= n
            else:
                piece += bytes((char,))
                left -= 1
        pieces.append(piece)
    out = pieces[0]
    for piece in pieces[1:]:
        gap = draw(st.lists(st.sampled_from(["del", "bs", "esc", "none"]), max_size=3))
        for kind in gap:
            if kind == "del":
                out += b"\x7f"
            elif kind == "bs":
                out += bytes((draw(st.sampled_from([*_CHARS, 0x20])),)) + b"\x08"
            elif kind == "esc":
                out += draw(st.sampled_from(_ESCAPES))
        out += piece
    return value, out


TERMINAL = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_MASKERS: dict[tuple[str, bytes], Masker] = {}


def _masker(engine: str, value: bytes) -> Masker:
    if (engine, value) not in _MASKERS:
        _MASKERS[(engine, value)] = Masker(
            MaskSettings(engine=engine, literals=(("env:K", value),))
        )  # type: ignore[arg-type]
    return _MASKERS[(engine, value)]


@TERMINAL
@given(case=rendered(), cuts=st.lists(st.integers(1, 200), min_size=1, max_size=6))
def test_no_terminal_rendering_of_a_secret_is_left_visible(
    case: tuple[bytes, bytes], cuts: list[int]
) -> None:
    value, shown = case
    assert value in visible(shown)  # the model agrees the rendering shows the secret
    data = b"$ echo it\r\nvalue: " + shown + b" (done)\r\n"
    outputs = set()
    for engine in ("re2", "hyperscan"):
        masker = _masker(engine, value)
        one_shot = masker.mask_bytes(data)
        assert value not in visible(one_shot)
        assert one_shot == b"$ echo it\r\nvalue: " + MARK + b" (done)\r\n"
        stream = masker.stream()
        streamed = b"".join(stream.feed(c) for c in chunks(data, cuts)) + stream.flush()
        assert streamed == one_shot
        outputs.add(one_shot)
    assert len(outputs) == 1


@TERMINAL
@given(case=rendered(), cuts=st.lists(st.integers(1, 40), min_size=1, max_size=6))
def test_idle_flushes_never_show_a_terminal_rendering(
    case: tuple[bytes, bytes], cuts: list[int]
) -> None:
    value, shown = case
    stream = _masker("hyperscan", value).stream()
    out = []
    for piece in chunks(b"value: " + shown + b" ok\n", cuts):
        out += [stream.feed(piece), stream.flush_idle()]
    out.append(stream.flush())
    assume(b"".join(out).count(b"[MASKED:") <= 1)  # a cut can split it in two markers: fine
    assert value not in visible(b"".join(out))


def test_backspace_semantics(engine: str) -> None:
    """`ab\\bc` shows `ac`: a printable character followed by a backspace is overstruck by the
    next one. A secret `ac` written that way is masked; a secret `abc` is not what it shows."""
    ac = ("a" + rand(12) + "c").encode()
    masker = make(engine, literals=(("env:K", ac),))
    assert masker.mask_bytes(ac[:-1] + b"b\x08" + ac[-1:]) == MARK
    abc = ("tok-" + rand(12)).encode()
    masker = make(engine, literals=(("env:K", abc),))
    shown = abc[:6] + b"\x08" + abc[6:]  # abc[5] overstruck: the reader never sees it
    assert visible(shown) != abc and masker.mask_bytes(shown) == shown
    # Bold and underline as nroff/man write them (`x\bx`, `_\bx`) are masked too.
    bold = b"".join(bytes((c,)) + b"\x08" + bytes((c,)) for c in abc)
    assert visible(masker.mask_bytes(bold)).count(abc) == 0


def test_a_rep_inside_a_run_is_masked_whatever_its_count(engine: str) -> None:
    """`z ESC[2b` shows `zzz`. The REP's count is not checked (RE2 cannot count it): any REP
    inside a run of the secret masks it, a longer or shorter run too; a run written short
    without a REP is not the secret and is left alone."""
    value = ("k-" + rand(6) + "zzz" + rand(6)).encode()
    masker = make(engine, literals=(("env:K", value),))
    run = value.index(b"zzz")
    for rep in (b"\x1b[2b", b"\x1b[b\x1b[b", b"\xc2\x9b2b", b"\x1b[1b", b"\x1b[5b"):
        assert masker.mask_bytes(value[: run + 1] + rep + value[run + 3 :]) == MARK, rep
    short = value[: run + 2] + value[run + 3 :]
    assert masker.mask_bytes(short) == short


def test_ordinary_terminal_text_is_left_alone(engine: str) -> None:
    value = ("tok-" + rand(16)).encode()
    masker = make(engine, literals=(("env:K", value),))
    text = (
        b"progress \x7f|\x08/\x08-\x08\\ done \xc2\x9b32mOK\xc2\x9b0m caf\xc3\xa9 \xc2\xa0 "
        b"===\x1b[10b tok-" + value[4:10] + b"\x08X"
    )
    assert masker.mask_bytes(text) == text
    assert masker.mask_bytes(value) == MARK
