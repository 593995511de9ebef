"""What the PostgreSQL gateway's server and its connections share: the held login, the
per-gateway state, refusals, and small wire helpers."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airlock.errors import ConfigError
from airlock.events import EventType
from airlock.gate.interface import Operation
from airlock.gateway.postgres.decode import decode_backend
from airlock.gateway.postgres.encode import encode_error
from airlock.gateway.postgres.guard import SqlGuard
from airlock.gateway.postgres.masking import ColumnMasker, ColumnPlan
from airlock.gateway.postgres.messages import Message, ProtocolError, RowDescription
from airlock.gateway.postgres.native import load as load_io
from airlock.gateway.tickets import TicketCheck
from airlock.mask import Masker
from airlock.policy.gateways import PostgresGatewayConfig

Record = Callable[[str, Mapping[str, Any]], object]
# A result shape's column masking plan, which columns are text, and the masked columns whose
# type has no masked value (they come back NULL, and the client is told so in a notice).
RowPlan = tuple[ColumnPlan | None, tuple[bool, ...], tuple[str, ...]]
Approve = Callable[[Operation], Awaitable[bool] | bool]

STARTUP_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
READ_SIZE = 256 * 1024
COMPONENT = "gateway.postgres"
_MAX_ROW_PLANS = 4096


@dataclass(frozen=True)
class UpstreamLogin:
    """The held credential: user name and password (never shown)."""

    user: str
    password: str | None = field(default=None, repr=False)


def resolve_login(config: PostgresGatewayConfig, environ: Mapping[str, str]) -> UpstreamLogin:
    """The upstream login the policy names, read from ``environ``; ConfigError if missing."""
    cred = config.credential
    if cred.env is not None:
        return UpstreamLogin(
            _env(environ, cred.env.user, config.name), _env(environ, cred.env.password, config.name)
        )
    if cred.user is not None:
        password = _env(environ, cred.password_env, config.name) if cred.password_env else None
        return UpstreamLogin(cred.user, password)
    raise ConfigError(
        f"gateway {config.name}: credential grant {cred.grant!r} needs the broker, which this "
        "session does not use",
        hint="use credential: {env: {user: VAR, password: VAR}} until broker grants are wired",
    )


def _env(environ: Mapping[str, str], name: str, gateway: str) -> str:
    value = environ.get(name)
    if not value:
        raise ConfigError(
            f"gateway {gateway}: environment variable {name} is not set",
            hint=f"export {name} in the environment airlock runs in (the agent never sees it)",
        )
    return value


class Refused(Exception):
    """The client connection must end with this ErrorResponse (already encoded)."""

    def __init__(self, error: bytes, what: str) -> None:
        super().__init__(what)
        self.error = error
        self.what = what


@dataclass
class Shared:
    """What every connection of one gateway uses."""

    config: PostgresGatewayConfig
    login: UpstreamLogin
    masker: Masker
    record: Record
    approve: Approve
    ticket: TicketCheck
    guard: SqlGuard
    columns: ColumnMasker
    startup_timeout: float
    cancel_keys: dict[tuple[int, bytes], tuple[int, bytes]] = field(default_factory=dict)
    # RowDescription bytes -> (column masking plan, which columns are text): a result shape
    # seen before is not decoded again.
    row_plans: dict[tuple[bytes, tuple[int, ...] | None], RowPlan] = field(default_factory=dict)
    # The compiled I/O loop (native.py), made for the first relayed connection; False: none.
    io: Any = None

    def io_loop(self) -> Any:
        """The gateway's compiled I/O loop, or None (not built or turned off)."""
        if self.io is None:
            module = load_io()
            self.io = False if module is None else module.Loop()
        return self.io or None

    def close_io(self) -> None:
        """Stop the I/O loop's thread (the gateway is closing; its connections are gone)."""
        io, self.io = self.io, False
        if io:
            io.close()

    def row_plan(self, raw: bytes, formats: tuple[int, ...] | None = None) -> RowPlan:
        """The masking plan and the text columns of results described by RowDescription
        ``raw``, in the Bind result ``formats`` when given (a described *statement* says text
        for every column; the Bind decides what comes)."""
        known = self.row_plans.get((raw, formats))
        if known is None:
            message = decode_backend(raw)
            assert isinstance(message, RowDescription)
            fields = message.fields
            if formats is not None:
                fields = tuple(
                    dataclasses.replace(f, format=_format(formats, i)) for i, f in enumerate(fields)
                )
            plan = self.columns.plan(fields)
            nulled = tuple(
                f.name for f, (masked, value) in zip(fields, plan or (), strict=False)
                if masked and value is None
            )  # fmt: skip
            known = (plan, tuple(f.format == 0 for f in fields), nulled)
            if len(self.row_plans) >= _MAX_ROW_PLANS:
                self.row_plans.clear()
            self.row_plans[(raw, formats)] = known
        return known

    def event(self, type_: str, data: dict[str, Any]) -> object:
        return self.record(type_, {"gateway": self.config.name, **data})

    def error_event(self, what: str, **data: Any) -> None:
        self.event(EventType.ERROR, {"component": COMPONENT, "error": what, **data})


def _format(formats: tuple[int, ...], index: int) -> int:
    """Column ``index``'s format from Bind result-format codes (none: text; one: all)."""
    if not formats:
        return 0
    return formats[0] if len(formats) == 1 else (formats[index] if index < len(formats) else 0)


def cstring(raw: bytes, what: str) -> str:
    """The one NUL-terminated string that is the whole body of message ``raw``."""
    if raw.find(b"\0", 5) != len(raw) - 1:
        raise ProtocolError(f"{what} message is malformed")
    return raw[5:-1].decode("utf-8", "replace")


def take_buffered(reader: asyncio.StreamReader) -> bytes:
    """Empty ``reader``'s buffer without waiting (StreamReader has no public call for it)."""
    held = getattr(reader, "_buffer", None)
    if not isinstance(held, bytearray):  # never drop what a peer sent: refuse to relay instead
        raise RuntimeError("asyncio.StreamReader keeps no _buffer in this Python: cannot relay")
    data = bytes(held)
    held.clear()
    return data


def refusal_token(message: str) -> str | None:
    start = message.find('"airlock_refused_')
    if start < 0:
        return None
    end = message.find('"', start + 1)
    return message[start + 1 : end] if end > start else None


def rows_of(tag: str | None, counted: int) -> int:
    if tag:
        last = tag.rsplit(" ", 1)[-1]
        if last.isdigit():
            return int(last)
    return counted


def md5_password(login: UpstreamLogin, salt: bytes) -> bytes:
    assert login.password is not None
    inner = hashlib.md5((login.password + login.user).encode(), usedforsecurity=False).hexdigest()
    outer = hashlib.md5(inner.encode() + salt, usedforsecurity=False).hexdigest()
    return b"md5" + outer.encode() + b"\0"


def fatal(sqlstate: str, message: str, *, hint: str | None = None) -> bytes:
    return encode_error(sqlstate, message, severity="FATAL", hint=hint)


async def read_one(reader: asyncio.StreamReader, parser: Any) -> Message:
    while True:
        message = parser.next_message()
        if message is not None:
            return message  # type: ignore[no-any-return]
        data = await reader.read(READ_SIZE)
        if not data:
            raise ConnectionError("peer closed the connection")
        parser.feed(data)
