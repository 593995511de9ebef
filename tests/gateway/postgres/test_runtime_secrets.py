"""Only real secrets of the held credentials are registered with the masker (issue 12, item 8)."""

from __future__ import annotations

from airlock.gateway.runtime import start_gateways
from airlock.mask import Masker, MaskSettings
from airlock.policy import parse_policy

POLICY = parse_policy(
    """
gateways:
  - name: appdb
    kind: postgres
    listen: 127.0.0.1:0
    upstream: {host: 127.0.0.1, port: 1, database: app, tls: disable}
    credential: {env: {user: UP_USER, password: UP_PASSWORD}}
"""
)


def test_the_upstream_user_name_is_not_a_secret_but_its_password_is() -> None:
    masker = Masker(MaskSettings())
    password = "pw-" + "Z" * 20
    running = start_gateways(
        POLICY,
        session_id="sess-1",
        masker=masker,
        record=lambda *_: None,
        approve=lambda _: False,
        environ={"UP_USER": "postgres", "UP_PASSWORD": password},
    )
    try:
        assert masker.mask_text("ls /usr/lib/postgresql/15/bin") == "ls /usr/lib/postgresql/15/bin"
        assert password not in masker.mask_text(f"password={password}")
        assert running.env["PGPASSWORD"] not in masker.mask_text(running.env["PGPASSWORD"])
    finally:
        running.close()
