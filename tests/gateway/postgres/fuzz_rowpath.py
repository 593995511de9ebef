"""A fuzz loop for the compiled row path (``_rows.c``) against its pure-Python twin: random and
mutated DataRow streams, truncated messages, length fields and column counts at their limits,
forged frames. Every result of the compiled path must equal the Python path's (or both refuse).
Not collected by pytest (it runs for minutes); run it against a sanitizer build:

    CC="gcc -fsanitize=address,undefined -fno-sanitize-recover=undefined -g" \\
      python -c "from airlock.gateway.postgres.build_rows import build; \\
                 from pathlib import Path; print(build(Path('/tmp/asan')))"
    LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \\
      python tests/gateway/postgres/fuzz_rowpath.py /tmp/asan/_rows*.so 300

(arguments: the built module, and seconds to run; it prints the number of cases).
"""

from __future__ import annotations

import importlib.util
import random
import struct
import sys
import time
from collections.abc import Callable
from types import ModuleType

from airlock.gateway.postgres import rowpath
from airlock.gateway.postgres.encode import encode_data_row, encode_message
from airlock.gateway.postgres.framing import BACKEND_TYPES
from airlock.gateway.postgres.messages import ProtocolError

LIMITS = (-(2**31), -2, -1, 0, 1, 2, 3, 4, 5, 2**31 - 1, 2**31 - 5, 2**30, 0x7FFF, 0xFFFF)
"""int32 values a length field is set to: NULL, the other negatives, the edges, the huge."""


def _load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("_rows", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(rng: random.Random) -> list[list[bytes | None]]:
    def value() -> bytes | None:
        return None if rng.random() < 0.2 else rng.randbytes(rng.choice((0, 1, 3, 8, 40)))

    return [[value() for _ in range(rng.randint(0, 6))] for _ in range(rng.randint(1, 6))]


def _mutate(rng: random.Random, data: bytearray) -> None:
    """One mutation: a byte, an int32 or int16 field set to a limit, a cut, an insertion."""
    if not data:
        return
    at = rng.randrange(len(data))
    kind = rng.randrange(6)
    if kind == 0:
        data[at] = rng.randrange(256)
    elif kind == 1:
        data[at : at + 4] = struct.pack("!i", rng.choice(LIMITS))
    elif kind == 2:
        data[at : at + 2] = struct.pack("!H", rng.choice((0, 1, 0x7FFF, 0x8000, 0xFFFF)))
    elif kind == 3:
        del data[at:]
    elif kind == 4:
        data[at:at] = rng.randbytes(rng.randint(1, 6))
    else:
        del data[at : at + rng.randint(1, 6)]


def _outcome(function: Callable[..., object], *args: object) -> object:
    try:
        return function(*args)
    except ProtocolError:
        return ProtocolError


def _check(
    name: str, python: Callable[..., object], fast: Callable[..., object], *args: object
) -> None:
    expected, got = _outcome(python, *args), _outcome(fast, *args)
    if expected != got:
        raise AssertionError(f"{name} differs for {args!r}: python {expected!r}, compiled {got!r}")


def _frames(rng: random.Random, data: bytes) -> list[rowpath.Frame]:
    """The DataRow frames of ``data`` as the relay would see them, or forged ones in bounds."""
    try:
        frames, _ = rowpath.py_split(data, rowpath.type_table(b"D"), 1 << 20)
    except ProtocolError:
        frames = []
    if not frames or rng.random() < 0.3:
        frames = [_forged(rng, len(data)) for _ in range(rng.randint(0, 4))]
    return frames


POSITIONS = (-(2**63), -(2**62), -1, 2**62, 2**63 - 1)
"""Positions a forged frame may hold outside the buffer (where ``end - start`` overflows)."""


def _forged(rng: random.Random, size: int) -> rowpath.Frame:
    start = rng.randint(0, size)
    if rng.random() < 0.2:
        return (68, rng.choice((*POSITIONS, start)), rng.choice((*POSITIONS, size, size + 1)))
    return (68, start, rng.randint(start, size))


def one_case(rng: random.Random, compiled: ModuleType) -> None:
    data = bytearray(b"".join(encode_data_row(r) for r in _rows(rng)))
    if rng.random() < 0.5:
        data += encode_message(b"C", b"SELECT 1\0")
    pristine = bytes(data)
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        _mutate(rng, data)
    stream = bytes(data)
    table = rowpath.type_table(rng.choice((BACKEND_TYPES, b"D")))
    limit = rng.choice((1 << 20, 4, 5, 64, 2**31 - 1, 2**62))
    split = rowpath._compiled_split(compiled)
    _check("split", rowpath.py_split, split, stream, table, limit)
    # the row functions take frames from the intact stream over the mutated bytes (a length
    # field inside a row changed, the frame as split found it), or frames of the mutated one
    frames = _frames(rng, pristine if len(pristine) == len(stream) else stream)
    join = rowpath._compiled_join(compiled)
    _check("join_values", rowpath.py_join_values, join, stream, frames)
    index = rng.choice((0, 0, 1, 2, 5, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31, 2**40, -1))
    value = rng.randbytes(rng.choice((0, 3, 30)))
    replacement = rng.choice((struct.pack("!i", len(value)) + value, b""))
    mask = rowpath._compiled_mask(compiled)
    _check("mask_one_column", rowpath.py_mask_one_column, mask, stream, frames, index, replacement)


def main(path: str, seconds: float) -> int:
    compiled = _load(path)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    cases, stop = 0, time.monotonic() + seconds
    while time.monotonic() < stop:
        for _ in range(1000):
            one_case(rng, compiled)
        cases += 1000
    print(f"{cases} cases, seed {seed}: compiled == python for all")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 60.0))
