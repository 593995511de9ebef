"""A throwaway PostgreSQL cluster for tests: initdb + pg_ctl in a temp dir, stopped at teardown.

Usage as a pytest fixture::

    from tests.support.postgres import PostgresCluster, postgres_cluster  # noqa: F401 (fixture)

    def test_x(postgres_cluster: PostgresCluster) -> None:
        with psycopg.connect(postgres_cluster.dsn()) as conn: ...

or directly: ``with PostgresCluster.start() as pg: ...``. The cluster listens on a unix socket in
its own directory and on 127.0.0.1:<free port>. Local (socket) connections are trusted; TCP needs
a password (SCRAM), so tests can check real password logins. The superuser is ``postgres`` with
password :attr:`PostgresCluster.password`. When the tests run as root, the server runs as the
``postgres`` OS user (PostgreSQL refuses to run as root).

Binaries: ``$AIRLOCK_PG_BINDIR``, else ``pg_config --bindir`` if it holds ``initdb``, else the
newest ``/usr/lib/postgresql/*/bin`` (Debian layout).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = ["PostgresCluster", "PostgresUnavailable", "find_bindir", "postgres_cluster"]

_INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found: install them with "
    "`apt-get install -y postgresql` or set AIRLOCK_PG_BINDIR to the directory holding initdb"
)


class PostgresUnavailable(RuntimeError):
    """The cluster could not be created or started."""


def find_bindir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``."""
    explicit = os.environ.get("AIRLOCK_PG_BINDIR")
    candidates: list[Path] = [Path(explicit)] if explicit else []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(out.stdout.strip()))
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(debian)
    for path in candidates:
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    raise PostgresUnavailable(_INSTALL_HINT)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_as() -> str | None:
    """The OS user the server must run as: ``postgres`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable(
            "running as root but there is no `postgres` OS user to run the server as; "
            "`apt-get install -y postgresql` creates it"
        ) from None
    return "postgres"


@dataclass
class PostgresCluster:
    """A running throwaway cluster."""

    root: Path
    bindir: Path
    port: int
    password: str = field(repr=False)
    user: str | None = None
    superuser: str = "postgres"

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def dsn(
        self, user: str | None = None, password: str | None = None, dbname: str = "postgres"
    ) -> str:
        """A TCP libpq DSN; defaults to the superuser and its password."""
        user = user or self.superuser
        password = self.password if password is None and user == self.superuser else password
        parts = [f"host={self.host}", f"port={self.port}", f"dbname={dbname}", f"user={user}"]
        if password is not None:
            parts.append(f"password={password}")
        return " ".join(parts)

    def socket_dsn(self, user: str | None = None, dbname: str = "postgres") -> str:
        """A unix-socket DSN (trusted: no password needed)."""
        return (
            f"host={self.socket_dir} port={self.port} dbname={dbname} user={user or self.superuser}"
        )

    def server_log(self) -> str:
        """The server's log so far (statements are logged: ``log_statement = all``)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @classmethod
    @contextlib.contextmanager
    def start(cls, timeout: float = 30.0) -> Iterator[PostgresCluster]:
        """Create and start a cluster, yield it, stop it and delete its files on exit."""
        cluster = cls._create()
        try:
            cluster._launch(timeout)
            yield cluster
        finally:
            cluster.stop()
            shutil.rmtree(cluster.root, ignore_errors=True)

    @classmethod
    def _create(cls) -> PostgresCluster:
        bindir = find_bindir()
        user = _run_as()
        root = Path(tempfile.mkdtemp(prefix="airlock-pg-"))
        cluster = cls(root, bindir, _free_port(), secrets.token_urlsafe(16), user)
        cluster.socket_dir.mkdir()
        pwfile = root / "pwfile"
        pwfile.write_text(cluster.password + "\n")
        if user is not None:
            entry = pwd.getpwnam(user)
            for path in (root, cluster.socket_dir, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        cluster._initdb(pwfile)
        pwfile.unlink()
        cluster._configure()
        return cluster

    def _run(self, *argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            argv,
            user=self.user,
            capture_output=True,
            text=True,
            check=False,
            cwd=self.root,
            **kwargs,
        )
        if proc.returncode != 0:
            raise PostgresUnavailable(f"{Path(argv[0]).name} failed: {proc.stderr.strip()[-2000:]}")
        return proc

    def _initdb(self, pwfile: Path) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            self.superuser,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-sync",
        )

    def _configure(self) -> None:
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "log_statement": "'all'",
            "logging_collector": "off",
            "max_connections": "50",
        }
        with (self.datadir / "postgresql.conf").open("a") as fh:
            fh.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _launch(self, timeout: float) -> None:
        pg_ctl = str(self.bindir / "pg_ctl")
        self._run(pg_ctl, "-D", str(self.datadir), "-l", str(self.log_path), "-w",
                  "-t", str(int(timeout)), "start")  # fmt: skip
        self._wait_tcp(timeout)

    def _wait_tcp(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 1):
                return
            time.sleep(0.05)
        raise PostgresUnavailable(f"PostgreSQL did not listen on {self.host}:{self.port}")

    def stop(self) -> None:
        """Stop the server at once (no checkpoint: the data is thrown away)."""
        if (self.datadir / "postmaster.pid").exists():
            pg_ctl = str(self.bindir / "pg_ctl")
            with contextlib.suppress(PostgresUnavailable):
                self._run(pg_ctl, "-D", str(self.datadir), "-m", "immediate", "-w", "stop")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throwaway cluster for the whole test session; tests create their own databases/roles."""
    try:
        with PostgresCluster.start() as cluster:
            yield cluster
    except PostgresUnavailable as exc:
        pytest.fail(str(exc))
