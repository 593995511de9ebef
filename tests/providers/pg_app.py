"""A PostgreSQL database prepared like a real application's, for the provider tests."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from tests.support.postgres import PostgresCluster

__all__ = ["ADMIN_PASSWORD", "AppDatabase", "create_app_database"]

ADMIN_PASSWORD = "adm1n-Pass-for-tests"


@dataclass(frozen=True)
class AppDatabase:
    """A database prepared like a real app: roles, tables, and a non-superuser admin."""

    cluster: PostgresCluster
    name: str = "appdb"
    admin: str = "airlock_admin_user"

    @property
    def admin_dsn(self) -> str:
        return self.cluster.dsn(self.admin, ADMIN_PASSWORD, self.name)

    def superuser(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.cluster.socket_dsn(dbname=self.name), autocommit=True)

    def provider_config(self, **extra: object) -> dict[str, object]:
        return {
            "admin_dsn": self.admin_dsn,
            "host": "127.0.0.1",
            "port": self.cluster.port,
            **extra,
        }


_SETUP = """
CREATE ROLE airlock_admin_user LOGIN CREATEROLE PASSWORD '{pw}';
CREATE ROLE app_ro NOLOGIN;
CREATE ROLE app_rw NOLOGIN;
CREATE ROLE danger NOLOGIN BYPASSRLS;
CREATE TABLE items (id int PRIMARY KEY, name text);
INSERT INTO items VALUES (1, 'one'), (2, 'two');
CREATE TABLE payroll (id int, salary int);
INSERT INTO payroll VALUES (1, 100);
GRANT SELECT ON items TO app_ro;
GRANT SELECT, INSERT ON items TO app_rw;
GRANT USAGE, CREATE ON SCHEMA public TO app_rw;
GRANT CONNECT ON DATABASE appdb TO app_ro, app_rw, airlock_admin_user;
"""


def create_app_database(cluster: PostgresCluster) -> AppDatabase:
    """Create ``appdb`` with roles app_ro/app_rw/danger, tables items/payroll and an admin."""
    db = AppDatabase(cluster)
    with psycopg.connect(cluster.socket_dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE appdb")
        conn.execute("REVOKE CONNECT ON DATABASE appdb FROM PUBLIC")
    with db.superuser() as conn:
        for statement in _SETUP.format(pw=ADMIN_PASSWORD).split(";"):
            if statement.strip():
                conn.execute(statement)
    return db
