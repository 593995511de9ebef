"""Ed25519 signing keys for session seals.

The default key lives in ``<XDG_CONFIG_HOME or ~/.config>/airlock/signing-key.pem`` and is created
on first use (0600 in a 0700 directory). Like ssh, a private key file that group or others can
access is refused. Errors name the file, never its content.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from airlock.audit.files import read_limited
from airlock.errors import ConfigError

__all__ = [
    "SigningKey",
    "default_key_path",
    "key_id_for",
    "load_public_keys",
    "load_signing_key",
]

_KEY_ENV = "AIRLOCK_KEY"
_MAX_KEY_FILE = 64 * 1024


def key_id_for(public_key: Ed25519PublicKey) -> str:
    """``ed25519:`` + the first 16 hex of SHA-256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


class SigningKey:
    """An Ed25519 private key that signs seals. Its repr shows the key id only."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self.public_key: Ed25519PublicKey = private_key.public_key()
        self.key_id: str = key_id_for(self.public_key)

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh random key (kept in memory only)."""
        return cls(Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return self._private.sign(data)

    def public_pem(self) -> bytes:
        """The public key as PEM (SubjectPublicKeyInfo), to hand to verifiers."""
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM, for writing a 0600 key file."""
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"


def default_key_path() -> Path:
    """``<XDG_CONFIG_HOME or ~/.config>/airlock/signing-key.pem`` (not created here)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "airlock" / "signing-key.pem"


def load_signing_key(path: Path | None = None) -> SigningKey:
    """Load the signing key from ``path``, else ``$AIRLOCK_KEY``, else the default key file.

    Only the default key file is generated when missing; a key named by ``path`` or
    ``$AIRLOCK_KEY`` must exist. Raises ConfigError when the file is missing, unreadable,
    accessible by group/others, or not an unencrypted PEM Ed25519 private key.
    """
    if path is None and os.environ.get(_KEY_ENV):
        path = Path(os.environ[_KEY_ENV])
    if path is None:
        path = default_key_path()
        if not path.exists():
            return _create_key_file(path)
    return SigningKey(_read_private_key(path))


def load_public_keys(paths: Iterable[Path]) -> dict[str, Ed25519PublicKey]:
    """Key id → public key for each PEM file (a public key, or a private key's public half)."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        public = _parse_public(_read_key_bytes(path), path)
        keys[key_id_for(public)] = public
    return keys


def _create_key_file(path: Path) -> SigningKey:
    """Create the default key so that no reader ever sees it half-written.

    The PEM is written and synced under a private temporary name, then hard-linked to ``path``:
    link() is atomic and fails when the name exists, so two first runs racing (parallel CI jobs
    sharing a home) end up with one complete key, and the loser reads the winner's.
    """
    key = SigningKey.generate()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".signing-key-", dir=path.parent)
    except OSError as exc:
        raise _cannot_create(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as handle:  # mkstemp: 0600, O_EXCL
            handle.write(key.private_pem())
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temporary, path)
    except FileExistsError:  # another process created it first: use theirs
        return SigningKey(_read_private_key(path))
    except OSError as exc:
        raise _cannot_create(path, exc) from exc
    finally:
        Path(temporary).unlink()
    return key


def _cannot_create(path: Path, exc: OSError) -> ConfigError:
    return ConfigError(
        f"could not create the signing key {path}: {exc.strerror}",
        hint="make the directory writable, or point AIRLOCK_KEY at an existing key",
    )


def _read_key_bytes(path: Path) -> bytes:
    hint = "check the path (--key / --key-file / AIRLOCK_KEY) and its permissions"
    return read_limited(path, _MAX_KEY_FILE, label="key file", hint=hint)


def _check_private_mode(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(
            f"could not read key file {path}: {exc.strerror}",
            hint="check the path (--key / AIRLOCK_KEY), or unset it to use the default key",
        ) from exc
    if mode & 0o077:
        raise ConfigError(
            f"signing key {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); refusing to use it",
            hint=f"run `chmod 600 {path}`",
        )


def _read_private_key(path: Path) -> Ed25519PrivateKey:
    _check_private_mode(path)
    data = _read_key_bytes(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            f"{path} is not an unencrypted PEM private key",
            hint="use a PKCS#8 PEM Ed25519 key, e.g. `openssl genpkey -algorithm ed25519`",
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            f"{path} holds a {type(key).__name__}, not an Ed25519 key",
            hint="generate one with `openssl genpkey -algorithm ed25519`",
        )
    return key


def _parse_public(data: bytes, path: Path) -> Ed25519PublicKey:
    key: object
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ConfigError(
                f"{path} is not a PEM public or private key",
                hint="pass the signer's public key, e.g. from `openssl pkey -pubout`",
            ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 key", hint="seals are signed with Ed25519")
    return key
