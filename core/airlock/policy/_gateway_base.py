"""What every gateway model shares (name, listen address, the section base), apart from
gateways.py so that agent_gateways.py can build on it whichever of the two is imported first
(the package's ``__init__`` imports names lazily, so there is no fixed first one)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

GATEWAY_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,31}$"
GRANT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_GATEWAY_NAME_RE = re.compile(GATEWAY_NAME_PATTERN)
_GRANT_NAME_RE = re.compile(GRANT_NAME_PATTERN)
_COLUMN_GLOB_RE = re.compile(r"^[^\s.]+(\.[^\s.]+)?$")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# The same shape as mask.env names (policy.model), repeated so that model.py can import us.
_ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
_ENV_NAME_RE = re.compile(_ENV_NAME_PATTERN)


def _check_env_name(value: str) -> str:
    if _ENV_NAME_RE.match(value):
        return value
    if "=" in value:
        raise PydanticCustomError(
            "airlock_env_assignment",
            "looks like NAME=value: give only the variable name, never its value "
            "(and rotate that secret if this file was shared)",
        )
    raise PydanticCustomError(
        "airlock_env_name",
        "not an environment variable name (letters, digits and _, not starting with a digit)",
    )


EnvName = Annotated[
    str,
    AfterValidator(_check_env_name),
    WithJsonSchema({"type": "string", "pattern": _ENV_NAME_PATTERN}),
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) into ``(host, port)``; ValueError if bad."""
    if listen.startswith("["):
        host, sep, port = listen[1:].partition("]:")
    else:
        host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or (":" in host and not listen.startswith("[")):
        raise ValueError("listen must be HOST:PORT, e.g. 127.0.0.1:0 or [::1]:6432")
    number = int(port)
    if number > 65535:
        raise ValueError("the port must be 0-65535 (0 picks a free port)")
    return host, number


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_grant(value: str) -> str:
    if not _GRANT_NAME_RE.match(value):
        raise PydanticCustomError(
            "airlock_grant_name",
            "grant name must be 1-64 of A-Z a-z 0-9 _ . - (a grant of the broker config)",
        )
    return value


class _Gateway(_Section):
    name: str = Field(
        description="Gateway name, unique in the policy; used in events, env vars and rules.",
        json_schema_extra={"pattern": GATEWAY_NAME_PATTERN},
    )
    listen: str = Field(
        default="127.0.0.1:0",
        description="HOST:PORT to listen on. Loopback only unless central is true; port 0 picks "
        "a free port (printed and exported to the agent).",
    )
    central: StrictBool = Field(
        default=False,
        description="Central mode (off the runner): allows a non-loopback listen address.",
    )

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not _GATEWAY_NAME_RE.match(value):
            raise PydanticCustomError(
                "airlock_gateway_name",
                "gateway name must be 1-32 of a-z 0-9 -, starting with a letter",
            )
        return value

    @field_validator("listen")
    @classmethod
    def _listen_shape(cls, value: str) -> str:
        try:
            parse_listen(value)
        except ValueError as exc:
            raise PydanticCustomError("airlock_listen", str(exc)) from None
        return value

    @model_validator(mode="after")
    def _loopback_unless_central(self) -> _Gateway:
        host, _ = parse_listen(self.listen)
        if not self.central and not _is_loopback(host):
            raise PydanticCustomError(
                "airlock_listen_exposed",
                "listen host {host} is not loopback: use 127.0.0.1 (the agent connects locally), "
                "or set central: true for a gateway that runs off the runner",
                {"host": host},
            )
        return self

    @property
    def listen_host(self) -> str:
        """The host part of ``listen``."""
        return parse_listen(self.listen)[0]

    @property
    def listen_port(self) -> int:
        """The port part of ``listen`` (0: pick a free one)."""
        return parse_listen(self.listen)[1]
