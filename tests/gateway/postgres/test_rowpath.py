"""The compiled row path (``_rows.c``) gives the same results as its pure-Python twin: for
any stream of messages, any run of DataRows, any masked column; malformed rows are refused by
both. The extension is built into a temporary directory when it is not built already (skipped
when there is no C compiler: then only the Python path exists, and it is what runs)."""

from __future__ import annotations

import importlib.util
import shutil
import struct
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airlock.gateway.postgres import rowpath
from airlock.gateway.postgres.build_rows import build
from airlock.gateway.postgres.encode import encode_data_row, encode_message
from airlock.gateway.postgres.framing import BACKEND_TYPES
from airlock.gateway.postgres.messages import ProtocolError


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    try:
        built = importlib.import_module("airlock.gateway.postgres._rows")
    except ImportError:
        pass
    else:
        if rowpath._current(built):
            return built
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the pure-Python row path is the only one")
    path = build(Path(tmp_path_factory.mktemp("rows")))
    spec = importlib.util.spec_from_file_location("_rows", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert rowpath._current(module)
    return module


values = st.one_of(st.none(), st.binary(max_size=12))
rows = st.lists(st.lists(values, min_size=1, max_size=5), min_size=1, max_size=8)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _run(data: bytes) -> list[rowpath.Frame]:
    frames, pos = rowpath.py_split(data, rowpath.type_table(b"D"), 1 << 20)
    assert pos == len(data)
    return frames


def _same(python: object, fast: object, *args: object) -> None:
    """Both return the same, or both refuse (ProtocolError)."""
    try:
        expected = python(*args)  # type: ignore[operator]
    except ProtocolError:
        with pytest.raises(ProtocolError):
            fast(*args)  # type: ignore[operator]
        return
    assert fast(*args) == expected  # type: ignore[operator]


@SETTINGS
@given(rows=rows, cut=st.integers(0, 200), extra=st.binary(max_size=8))
def test_split_is_the_same(compiled: ModuleType, rows: list, cut: int, extra: bytes) -> None:
    stream = b"".join(encode_data_row(r) for r in rows) + encode_message(b"C", b"SELECT 1\0")
    stream = stream[: max(0, len(stream) - cut)] + extra  # an unfinished tail, or garbage
    table = rowpath.type_table(BACKEND_TYPES)
    _same(rowpath.py_split, rowpath._compiled_split(compiled), stream, table, 1 << 20)


@SETTINGS
@given(rows=rows)
def test_joined_values_are_the_same(compiled: ModuleType, rows: list) -> None:
    data = b"".join(encode_data_row(r) for r in rows)
    run = _run(data)
    expected = b"\0".join(v for r in rows for v in r if v)
    assert rowpath.py_join_values(data, run) == expected
    assert rowpath._compiled_join(compiled)(data, run) == expected


@SETTINGS
@given(rows=rows, index=st.integers(0, 5), replacement=st.binary(max_size=10))
def test_masking_one_column_is_the_same(
    compiled: ModuleType, rows: list, index: int, replacement: bytes
) -> None:
    data = b"".join(encode_data_row(r) for r in rows)
    run = _run(data)
    prefixed = struct.pack("!i", len(replacement)) + replacement
    fast = rowpath._compiled_mask(compiled)
    _same(rowpath.py_mask_one_column, fast, data, run, index, prefixed)
    if all(len(r) > index for r in rows):  # what decode -> replace -> encode gives
        expected = b"".join(
            encode_data_row([replacement if i == index and v is not None else v
                             for i, v in enumerate(r)])
            for r in rows
        )  # fmt: skip
        assert fast(data, run, index, prefixed) == expected


@SETTINGS
@given(rows=rows, at=st.integers(0, 400), byte=st.integers(0, 255), index=st.integers(0, 4))
def test_malformed_rows_are_refused_by_both(
    compiled: ModuleType, rows: list, at: int, byte: int, index: int
) -> None:
    data = bytearray(b"".join(encode_data_row(r) for r in rows))
    run = _run(bytes(data))
    position = at % len(data)
    if not any(s <= position < s + 5 for _, s, _e in run):
        data[position] = byte  # a column count or a value length, not the frame header
    corrupted = bytes(data)
    _same(rowpath.py_join_values, rowpath._compiled_join(compiled), corrupted, run)
    prefixed = struct.pack("!i", 3) + b"***"
    fast = rowpath._compiled_mask(compiled)
    _same(rowpath.py_mask_one_column, fast, corrupted, run, index, prefixed)


LIMITS = st.sampled_from([-(2**31), -2, -1, 0, 1, 4, 2**15, 2**16 - 1, 2**31 - 5, 2**31 - 1])


@SETTINGS
@given(
    rows=rows, at=st.integers(0, 400), field=LIMITS, cut=st.integers(0, 3), index=st.integers(0, 4)
)
def test_length_fields_at_their_limits_are_the_same(
    compiled: ModuleType, rows: list, at: int, field: int, cut: int, index: int
) -> None:
    """An int32 (a value length) or, cut to 2 bytes, an int16 (a column count) set to a limit
    anywhere after a frame header: equal results or equal refusals."""
    data = bytearray(b"".join(encode_data_row(r) for r in rows))
    run = _run(bytes(data))
    position = at % len(data)
    if not any(s <= position < s + 5 for _, s, _e in run):
        data[position : position + 4 - min(cut, 2)] = struct.pack("!i", field)[min(cut, 2) :]
    corrupted = bytes(data)  # (a field at the very end makes it longer: the frames stay inside)
    _same(rowpath.py_join_values, rowpath._compiled_join(compiled), corrupted, run)
    prefixed = struct.pack("!i", 3) + b"***"
    fast = rowpath._compiled_mask(compiled)
    _same(rowpath.py_mask_one_column, fast, corrupted, run, index, prefixed)


def test_the_gateway_says_which_row_path_runs() -> None:
    assert rowpath.ROW_PATH in ("compiled", "python")


# ------------------------------------------------------ regressions found by fuzzing _rows.c
# (tests/gateway/postgres/fuzz_rowpath.py, against an ASan/UBSan build)

ROW = encode_data_row([b"abc", None])


@pytest.mark.parametrize(
    "frame",
    [
        (68, 2**62, -(2**63)),  # end - start overflowed to a positive "length": a segfault
        (68, 2**62, -(2**63) + 1),
        (68, -1, len(ROW)),  # before the buffer
        (68, 0, len(ROW) + 1),  # past it
        (68, len(ROW), 0),  # backwards
        (68, 2**64, 2**64 + 9),  # not even a Py_ssize_t
    ],
)
def test_a_frame_outside_the_buffer_is_refused_by_both(
    compiled: ModuleType, frame: rowpath.Frame
) -> None:
    for python, fast in (
        (rowpath.py_join_values, rowpath._compiled_join(compiled)),
        (lambda b, r: rowpath.py_mask_one_column(b, r, 0, b""), lambda b, r: rowpath._compiled_mask(compiled)(b, r, 0, b"")),
    ):  # fmt: skip
        with pytest.raises(ProtocolError):
            python(ROW, [frame])
        with pytest.raises(ProtocolError):
            fast(ROW, [frame])


@pytest.mark.parametrize("index", [-1, 2**31, 2**40, 2**63])
def test_a_column_index_out_of_range_is_refused_by_both(compiled: ModuleType, index: int) -> None:
    run = _run(ROW)  # -1 masked column 0 in Python; 2**31 was an OverflowError in C
    with pytest.raises(ProtocolError):
        rowpath.py_mask_one_column(ROW, run, index, b"\0\0\0\0")
    with pytest.raises(ProtocolError):
        rowpath._compiled_mask(compiled)(ROW, run, index, b"\0\0\0\0")


@pytest.mark.parametrize("size", [-(2**31), -2, 0, 2**31 - 1, 2**31 - 5, 4, 5])
@pytest.mark.parametrize("column", [0, 1])
def test_value_lengths_at_their_limits_give_equal_results(
    compiled: ModuleType, size: int, column: int
) -> None:
    data = bytearray(encode_data_row([b"abcd", b"ef", None]))
    data[7 + 8 * column : 11 + 8 * column] = struct.pack("!i", size)  # columns 0 and 1's lengths
    corrupted, run = bytes(data), _run(bytes(data))
    _same(rowpath.py_join_values, rowpath._compiled_join(compiled), corrupted, run)
    for index in (0, 1, 2):
        _same(
            rowpath.py_mask_one_column,
            rowpath._compiled_mask(compiled),
            corrupted,
            run,
            index,
            b"\0\0\0\x01*",
        )


def test_a_length_past_the_buffer_in_a_multi_column_mask_is_a_protocol_error() -> None:
    """Two masked columns take the per-row Python loop of results.py: a value length that
    points past the end of what was read is refused as a protocol error, not a struct.error."""
    from airlock.gateway.postgres.results import _mask_columns

    row = b"D" + struct.pack("!iH", 4 + 2 + 4 + 2 + 4, 3) + struct.pack("!i", 2) + b"ok"
    row += struct.pack("!i", 1 << 20)  # column 1 says a MiB follows; the buffer ends here
    frames = [(ord("D"), 0, len(row))]
    with pytest.raises(ProtocolError):
        _mask_columns(row, frames, (None, b"masked", b"masked"))
