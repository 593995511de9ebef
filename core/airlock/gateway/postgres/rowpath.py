"""The hot loops of the PostgreSQL relay, per message and per row: delimiting messages, joining
the values of a run of DataRows (for one masker scan), and splicing one masked column into
each row. Each has a pure-Python version here and an optional compiled twin (``_rows.c``, a
small C extension of our own, built by ``python -m airlock.gateway.postgres.build_rows``;
``./dev setup`` builds it when a C compiler is there). :data:`ROW_PATH` says which one runs
(``gateway.started`` records it); ``AIRLOCK_PG_ROWS=python`` forces the pure-Python path.
A property test checks that both give equal results (and that malformed rows raise in both).
"""

from __future__ import annotations

import importlib
import os
import struct
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Literal

from airlock.gateway.postgres.messages import ProtocolError

__all__ = [
    "ROW_PATH",
    "SOURCE",
    "Frame",
    "join_values",
    "mask_one_column",
    "py_join_values",
    "py_mask_one_column",
    "py_split",
    "split",
    "type_table",
]

Frame = tuple[int, int, int]
"""A whole message inside a buffer: (type byte, start, end)."""

_LENGTH = struct.Struct("!i")


def type_table(types: bytes) -> bytes:
    """The 256-byte table of allowed type bytes :func:`split` takes."""
    return bytes(1 if i in types else 0 for i in range(256))


# ------------------------------------------------------------------------ pure Python


def py_split(buf: bytes, table: bytes, limit: int) -> tuple[list[Frame], int]:
    """The whole messages in ``buf`` and where the unfinished rest starts."""
    frames: list[Frame] = []
    pos, size = 0, len(buf)
    while size - pos >= 5:
        kind = buf[pos]
        length = int.from_bytes(buf[pos + 1 : pos + 5], "big", signed=True)
        if not table[kind]:
            raise ProtocolError(f"unknown message type {chr(kind)!r}")
        if length < 4 or length > limit:
            raise ProtocolError(f"message {chr(kind)!r} has length {length}, outside 4..{limit}")
        end = pos + 1 + length
        if end > size:
            break
        frames.append((kind, pos, end))
        pos = end
    return frames, pos


def py_join_values(buf: bytes, run: list[Frame]) -> bytes:
    """The non-empty values of the DataRows in ``run``, joined by NUL."""
    unpack = _LENGTH.unpack_from
    values: list[bytes] = []
    append = values.append
    limit = len(buf)
    for _, start, end in run:
        if start < 0 or end > limit or end - start < 7:  # a frame inside buf, as in _rows.c
            raise ProtocolError("a DataRow is shorter than its columns say")
        pos = start + 7
        for _ in range(int.from_bytes(buf[start + 5 : start + 7], "big")):
            if pos + 4 > end:
                raise ProtocolError("a DataRow is shorter than its columns say")
            size = unpack(buf, pos)[0]
            if size > 0:
                append(buf[pos + 4 : pos + 4 + size])
                pos += 4 + size
            else:
                pos += 4
        if pos > end:
            raise ProtocolError("a DataRow is shorter than its columns say")
    return b"\0".join(values)


def py_mask_one_column(buf: bytes, run: list[Frame], index: int, replacement: bytes) -> bytes:
    """The DataRows of ``run`` with column ``index`` replaced by ``replacement`` (its length
    prefix included); NULLs stay NULL. (The per-row loop of a big result: kept flat.)"""
    unpack, pack = _LENGTH.unpack_from, _LENGTH.pack
    width, limit = len(replacement), len(buf)
    if index < 0:
        raise ProtocolError("negative column index")
    out: list[bytes] = []
    append = out.append
    for _, start, end in run:
        if start < 0 or end > limit or end - start < 7:  # a frame inside buf, as in _rows.c
            raise ProtocolError("a DataRow is shorter than its columns say")
        if int.from_bytes(buf[start + 5 : start + 7], "big") <= index:
            raise ProtocolError("a DataRow has fewer columns than its RowDescription")
        pos = start + 7
        for _ in range(index):
            if pos + 4 > end:
                raise ProtocolError("a DataRow is shorter than its columns say")
            size = unpack(buf, pos)[0]
            pos += 4 + size if size > 0 else 4
        if pos + 4 > end:
            raise ProtocolError("a DataRow is shorter than its columns say")
        size = unpack(buf, pos)[0]
        if size < 0:  # NULL stays NULL
            append(buf[start:end])
            continue
        after = pos + 4 + size
        if after > end:
            raise ProtocolError("a DataRow is shorter than its columns say")
        append(b"D" + pack(end - start - 1 + width - 4 - size) + buf[start + 5 : pos])
        append(replacement)
        append(buf[after:end])
    return b"".join(out)


# -------------------------------------------------------------------------- compiled

SOURCE = Path(__file__).with_name("_rows.c")
_VERSION = 2  # _rows.c's VERSION: a build of another version is not used


def _current(module: ModuleType) -> bool:
    return getattr(module, "VERSION", None) == _VERSION


def _load() -> ModuleType | None:
    if os.environ.get("AIRLOCK_PG_ROWS", "").strip().lower() == "python":
        return None
    try:
        module = importlib.import_module("airlock.gateway.postgres._rows")
    except ImportError:
        return None
    return module if _current(module) else None


def _compiled_split(rows: ModuleType) -> Callable[[bytes, bytes, int], tuple[list[Frame], int]]:
    fast = rows.split

    def split(buf: bytes, table: bytes, limit: int) -> tuple[list[Frame], int]:
        try:
            result: tuple[list[Frame], int] = fast(buf, table, limit)
        except ValueError:  # the Python loop says precisely what is wrong
            return py_split(buf, table, limit)
        return result

    return split


def _compiled_join(rows: ModuleType) -> Callable[[bytes, list[Frame]], bytes]:
    fast = rows.join_values

    def join_values(buf: bytes, run: list[Frame]) -> bytes:
        try:
            joined: bytes = fast(buf, run)
        except (ValueError, OverflowError) as exc:  # OverflowError: a position past 2**63
            raise ProtocolError(str(exc)) from None
        return joined

    return join_values


def _compiled_mask(rows: ModuleType) -> Callable[[bytes, list[Frame], int, bytes], bytes]:
    fast = rows.mask_one_column

    def mask_one_column(buf: bytes, run: list[Frame], index: int, replacement: bytes) -> bytes:
        try:
            masked: bytes = fast(buf, run, index, replacement)
        except (ValueError, OverflowError) as exc:  # OverflowError: a position past 2**63
            raise ProtocolError(str(exc)) from None
        return masked

    return mask_one_column


_compiled = _load()
ROW_PATH: Literal["compiled", "python"] = "python" if _compiled is None else "compiled"
split = py_split if _compiled is None else _compiled_split(_compiled)
join_values = py_join_values if _compiled is None else _compiled_join(_compiled)
mask_one_column = py_mask_one_column if _compiled is None else _compiled_mask(_compiled)
