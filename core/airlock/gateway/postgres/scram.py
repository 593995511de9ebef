"""The client side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL uses it. Sans-I/O.

PostgreSQL ignores the SCRAM user name (it uses the startup user) and does not use channel
binding here (``n,,``). The server's final signature is verified: a server that does not know
the password cannot pass for the real one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import unicodedata

from airlock.gateway.postgres.messages import ProtocolError

__all__ = ["ScramClient"]

MECHANISM = "SCRAM-SHA-256"


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _saslprep(password: str) -> str:
    # A light SASLprep: NFKC, as PostgreSQL's own client does; invalid input is used as is.
    return unicodedata.normalize("NFKC", password)


class ScramClient:
    """One SCRAM-SHA-256 exchange: ``first()``, ``final(challenge)``, ``verify(outcome)``."""

    def __init__(self, password: str) -> None:
        self._password = _saslprep(password).encode("utf-8")
        self._nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self._first_bare = f"n=,r={self._nonce}"
        self._server_signature = b""

    def __repr__(self) -> str:
        return "ScramClient(<password hidden>)"

    def first(self) -> bytes:
        """SASLInitialResponse body: mechanism, length, client-first-message."""
        message = ("n,," + self._first_bare).encode()
        return MECHANISM.encode() + b"\0" + len(message).to_bytes(4, "big") + message

    def final(self, server_first: bytes) -> bytes:
        """The client-final-message for the server-first-message."""
        attrs = _attributes(server_first)
        nonce, salt_b64, iterations = attrs.get("r", ""), attrs.get("s", ""), attrs.get("i", "")
        if not nonce.startswith(self._nonce) or not salt_b64 or not iterations.isdigit():
            raise ProtocolError("the upstream sent a malformed SCRAM challenge")
        salt = base64.b64decode(salt_b64)
        salted = hashlib.pbkdf2_hmac("sha256", self._password, salt, int(iterations))
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self._first_bare},{server_first.decode()},{without_proof}".encode()
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        """Check the server's signature; ProtocolError if it does not prove the password."""
        attrs = _attributes(server_final)
        try:
            signature = base64.b64decode(attrs.get("v", ""), validate=True)
        except ValueError as exc:
            raise ProtocolError("the upstream sent a malformed SCRAM signature") from exc
        if not self._server_signature or not hmac.compare_digest(signature, self._server_signature):
            raise ProtocolError("the upstream's SCRAM signature is wrong: not the real server")


def _attributes(message: bytes) -> dict[str, str]:
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("the upstream sent a non-UTF-8 SCRAM message") from exc
    return dict(part.split("=", 1) for part in text.split(",") if "=" in part)
