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


def test_the_gateway_says_which_row_path_runs() -> None:
    assert rowpath.ROW_PATH in ("compiled", "python")
