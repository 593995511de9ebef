"""Sans-I/O reading of a TLS ClientHello's server name (SNI), without decrypting anything.

    reader = ClientHelloReader()
    hello = reader.feed(data)      # None while more bytes are needed; then a ClientHello

The ClientHello may span several TLS records; at most 64 KiB are read. Anything that is not a
TLS handshake starting with a ClientHello gives ``ClientHello(tls=False)``; a hello without a
host_name entry gives ``sni=None``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_HELLO_BYTES", "ClientHello", "ClientHelloReader"]

MAX_HELLO_BYTES = 64 * 1024
_HANDSHAKE = 22
_CLIENT_HELLO = 1
_SERVER_NAME = 0
_HOST_NAME = 0


@dataclass(frozen=True)
class ClientHello:
    """What the proxy learned: is this TLS, and the host name the client asks for."""

    tls: bool
    sni: str | None = None
    malformed: bool = False


class _Short(Exception):
    """Ran out of bytes inside a structure that claimed more."""


class ClientHelloReader:
    """Feed the first bytes a client sends inside a CONNECT tunnel."""

    def __init__(self) -> None:
        self._raw = bytearray()
        self._pos = 0  # the records before it are in _handshake: each is read once, not per feed
        self._handshake = bytearray()

    def feed(self, data: bytes) -> ClientHello | None:
        self._raw += data
        handshake = self._handshake
        while True:
            pos = self._pos
            if len(self._raw) - pos < 5:
                return self._need_more()
            ctype, major, length = self._raw[pos], self._raw[pos + 1], _u16(self._raw, pos + 3)
            if ctype != _HANDSHAKE or major != 3:
                return ClientHello(tls=False)
            if len(self._raw) - pos - 5 < length:
                return self._need_more()
            handshake += self._raw[pos + 5 : pos + 5 + length]
            self._pos = pos + 5 + length
            if len(handshake) >= 4:
                if handshake[0] != _CLIENT_HELLO:
                    return ClientHello(tls=False)
                body_len = int.from_bytes(handshake[1:4], "big")
                if len(handshake) >= 4 + body_len:
                    return _parse_hello(bytes(handshake[4 : 4 + body_len]))

    def _need_more(self) -> ClientHello | None:
        if len(self._raw) > MAX_HELLO_BYTES:
            return ClientHello(tls=True, malformed=True)
        return None


def _u16(data: bytes | bytearray, at: int) -> int:
    if at + 2 > len(data):
        raise _Short
    return int.from_bytes(data[at : at + 2], "big")


def _parse_hello(body: bytes) -> ClientHello:
    try:
        return ClientHello(tls=True, sni=_sni(body))
    except (_Short, UnicodeDecodeError, ValueError):
        return ClientHello(tls=True, malformed=True)


def _skip_vector(body: bytes, at: int, size_bytes: int) -> int:
    if at + size_bytes > len(body):
        raise _Short
    length = int.from_bytes(body[at : at + size_bytes], "big")
    if at + size_bytes + length > len(body):
        raise _Short
    return at + size_bytes + length


def _sni(body: bytes) -> str | None:
    at = 2 + 32  # legacy_version, random
    at = _skip_vector(body, at, 1)  # legacy_session_id
    at = _skip_vector(body, at, 2)  # cipher_suites
    at = _skip_vector(body, at, 1)  # legacy_compression_methods
    if at == len(body):
        return None  # no extensions at all
    end = _skip_vector(body, at, 2)
    at += 2
    while at < end:
        ext_type, ext_len = _u16(body, at), _u16(body, at + 2)
        data = body[at + 4 : at + 4 + ext_len]
        if len(data) != ext_len:
            raise _Short
        if ext_type == _SERVER_NAME:
            return _host_name(data)
        at += 4 + ext_len
    return None


def _host_name(data: bytes) -> str | None:
    end = _skip_vector(data, 0, 2)
    at = 2
    while at < end:
        name_type = data[at]
        next_at = _skip_vector(data, at + 1, 2)
        if name_type == _HOST_NAME:
            name = data[at + 3 : next_at].decode("ascii")
            if not name or any(not (c.isalnum() or c in "-._") for c in name):
                raise ValueError("bad host_name")
            return name.lower().rstrip(".")
        at = next_at
    return None
