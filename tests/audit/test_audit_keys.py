"""Signing keys: created private, refused when exposed, errors that name files only."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from airlock.audit import (
    SigningKey,
    default_key_path,
    key_id_for,
    load_public_keys,
    load_signing_key,
)
from airlock.errors import ConfigError


@pytest.fixture(autouse=True)
def _config_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv("AIRLOCK_KEY", raising=False)
    return home


def test_default_key_is_created_private_and_reused(tmp_path: Path) -> None:
    first = load_signing_key()
    path = tmp_path / "config" / "airlock" / "signing-key.pem"
    assert default_key_path() == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_signing_key().key_id == first.key_id


def test_racing_first_runs_all_get_the_one_complete_key(tmp_path: Path) -> None:
    """Parallel CI jobs sharing a home create the key at once: none may read it half-written."""
    script = (  # a slow PEM encoding holds each process inside the window where they race
        "import sys, time; from airlock.audit.keys import SigningKey, load_signing_key; "
        "pem = SigningKey.private_pem; "
        "SigningKey.private_pem = lambda self: (time.sleep(0.5), pem(self))[1]; "
        "sys.stdout.write(load_signing_key().key_id)"
    )
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    for _ in range(2):
        shutil.rmtree(tmp_path / "config", ignore_errors=True)
        runs = [
            subprocess.Popen(
                [sys.executable, "-c", script],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for _ in range(8)
        ]
        results = [(run.communicate(timeout=60), run.returncode) for run in runs]
        assert all(code == 0 for _, code in results), [err for (_, err), _ in results]
        key_ids = {out.decode() for (out, _), _ in results}
        assert key_ids == {load_signing_key().key_id}
        assert [p.name for p in (tmp_path / "config" / "airlock").iterdir()] == ["signing-key.pem"]


def test_key_id_is_a_hash_of_the_raw_public_key() -> None:
    key = SigningKey.generate()
    raw = key.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key.key_id == "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]
    assert key_id_for(key.public_key) == key.key_id


def test_repr_shows_no_key_material() -> None:
    key = SigningKey.generate()
    assert repr(key) == f"SigningKey(key_id={key.key_id!r})"


def write_key(path: Path, key: SigningKey, mode: int = 0o600) -> Path:
    path.write_bytes(key.private_pem())
    os.chmod(path, mode)
    return path


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = write_key(tmp_path / "k.pem", SigningKey.generate(), 0o644)
    with pytest.raises(ConfigError) as info:
        load_signing_key(path)
    assert str(path) in info.value.message and "0644" in info.value.message
    assert "chmod 600" in info.value.hint


def test_group_readable_default_key_is_refused_too() -> None:
    load_signing_key()
    os.chmod(default_key_path(), 0o640)
    with pytest.raises(ConfigError, match="group or others"):
        load_signing_key()


def test_explicit_and_env_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = SigningKey.generate()
    path = write_key(tmp_path / "k.pem", key)
    assert load_signing_key(path).key_id == key.key_id
    monkeypatch.setenv("AIRLOCK_KEY", str(path))
    assert load_signing_key().key_id == key.key_id
    assert not default_key_path().exists()  # nothing generated when a key is named


def test_named_key_that_is_missing_is_not_generated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRLOCK_KEY", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match=r"missing\.pem"):
        load_signing_key()
    assert not (tmp_path / "missing.pem").exists()


def test_invalid_key_file_error_names_the_path_not_the_content(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_text("-----BEGIN PRIVATE KEY-----\nSUPERSECRETVALUE\n-----END PRIVATE KEY-----\n")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError) as info:
        load_signing_key(path)
    assert str(path) in info.value.message
    assert "SUPERSECRETVALUE" not in info.value.explain()


def test_non_ed25519_key_is_refused(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "rsa.pem"
    path.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        load_signing_key(path)
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        load_public_keys([path])


def test_public_keys_from_public_or_private_pem(tmp_path: Path) -> None:
    key = SigningKey.generate()
    pub = tmp_path / "pub.pem"
    pub.write_bytes(key.public_pem())
    priv = write_key(tmp_path / "priv.pem", key)
    other = SigningKey.generate()
    (tmp_path / "other.pem").write_bytes(other.public_pem())
    keys = load_public_keys([pub, priv, tmp_path / "other.pem"])
    assert set(keys) == {key.key_id, other.key_id}


def test_public_key_file_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(ConfigError, match=r"junk\.pem"):
        load_public_keys([tmp_path / "junk.pem"])
    with pytest.raises(ConfigError, match="could not read"):
        load_public_keys([tmp_path / "absent.pem"])
