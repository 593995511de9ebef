"""AWS SigV4: the gateway signs the exact outgoing request; moto (with IAM auth on) checks it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from tests.gateway.http.conftest import GatewayFactory, Recorder
from tests.support.moto_server import free_port

from airlock.gateway.tickets import Ticket

pytestmark = pytest.mark.service

# moto checks signatures and IAM policies after this many unauthenticated actions (our setup)
_SETUP_ACTIONS = 4
_POLICY = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'


@pytest.fixture(scope="module")
def moto_iam() -> Iterator[dict[str, str]]:
    """A moto server that verifies SigV4, with one IAM user whose keys the gateway holds."""
    port = free_port()
    env = {
        **os.environ,
        "INITIAL_NO_AUTH_ACTION_COUNT": str(_SETUP_ACTIONS),
        "AWS_ACCESS_KEY_ID": "setup",
        "AWS_SECRET_ACCESS_KEY": "setup",
    }
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url)
        iam = boto3.client(
            "iam",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="gateway")
        key = iam.create_access_key(UserName="gateway")["AccessKey"]
        iam.put_user_policy(UserName="gateway", PolicyName="all", PolicyDocument=_POLICY)
        s3 = boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
        )
        s3.create_bucket(Bucket="airlock-sigv4-test")
        yield {
            "url": url,
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
    finally:
        proc.terminate()
        proc.wait(10)


def _wait(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("moto_server did not start")


def _gateway(make_gateway: GatewayFactory, moto: dict[str, str], service: str, **env: str) -> Any:
    return make_gateway(
        upstream_url=moto["url"],
        credential={"aws_sigv4": {"region": "us-east-1", "service": service}},
        environ={
            "AWS_ACCESS_KEY_ID": moto["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": moto["AWS_SECRET_ACCESS_KEY"],
            **env,
        },
    )


def _auth(ticket: Ticket) -> dict[str, str]:
    return {"Authorization": f"Bearer {ticket.value}"}


def test_list_buckets_signed_by_the_gateway(
    make_gateway: GatewayFactory, moto_iam: dict[str, str], ticket: Ticket, recorder: Recorder
) -> None:
    gw = _gateway(make_gateway, moto_iam, "s3")
    r = httpx.get(f"{gw.url}/", headers=_auth(ticket))
    assert r.status_code == 200, r.text
    assert "<Name>airlock-sigv4-test</Name>" in r.text
    assert moto_iam["AWS_SECRET_ACCESS_KEY"] not in recorder.text()


def test_put_and_get_object_streamed_with_unsigned_payload(
    make_gateway: GatewayFactory, moto_iam: dict[str, str], ticket: Ticket
) -> None:
    gw = _gateway(make_gateway, moto_iam, "s3")
    data = os.urandom(3 * 1024 * 1024)
    put = httpx.put(
        f"{gw.url}/airlock-sigv4-test/blob.bin",
        headers=_auth(ticket),
        content=iter([data[:1000], data[1000:]]),
    )
    assert put.status_code == 200, put.text
    got = httpx.get(f"{gw.url}/airlock-sigv4-test/blob.bin", headers=_auth(ticket))
    assert got.status_code == 200 and got.content == data


def test_client_supplied_aws_auth_is_replaced(
    make_gateway: GatewayFactory, moto_iam: dict[str, str], ticket: Ticket
) -> None:
    gw = _gateway(make_gateway, moto_iam, "s3")
    r = httpx.get(
        f"{gw.url}/",
        headers={
            "Proxy-Authorization": f"Bearer {ticket.value}",
            "Authorization": "AWS4-HMAC-SHA256 Credential=AKIAEVIL/x",
            "X-Amz-Date": "19990101T000000Z",
            "X-Amz-Security-Token": "evil",
        },
    )
    assert r.status_code == 200, r.text


def test_signed_payload_for_a_non_s3_service(
    make_gateway: GatewayFactory, moto_iam: dict[str, str], ticket: Ticket
) -> None:
    gw = _gateway(make_gateway, moto_iam, "sts")
    r = httpx.post(
        f"{gw.url}/",
        headers={**_auth(ticket), "Content-Type": "application/x-www-form-urlencoded"},
        content=b"Action=GetCallerIdentity&Version=2011-06-15",
    )
    assert r.status_code == 200, r.text
    assert ":user/gateway" in r.text


def test_wrong_held_secret_is_refused_by_aws(
    make_gateway: GatewayFactory, moto_iam: dict[str, str], ticket: Ticket
) -> None:
    gw = _gateway(make_gateway, moto_iam, "s3", AWS_SECRET_ACCESS_KEY="not-the-secret-at-all")
    r = httpx.get(f"{gw.url}/", headers=_auth(ticket))
    assert r.status_code == 403 and "SignatureDoesNotMatch" in r.text


@pytest.mark.parametrize("held", [False, True])
def test_signed_payload_hash_is_the_body_sent(
    make_gateway: GatewayFactory, ticket: Ticket, held: bool
) -> None:
    """Against the echo upstream: the X-Amz-Content-SHA256 it receives is the body's hash,
    also when the request was held for approval (and spooled) first."""
    import hashlib

    async def approve(op: object) -> bool:
        return True

    gw = make_gateway(
        credential={"aws_sigv4": {"region": "eu-west-1", "service": "execute-api"}},
        environ={"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s" * 40},
        rules=[{"id": "hold", "http": {"methods": ["POST"]}, "action": "require_approval"}]
        if held
        else [],
        approve=approve,
    )
    body = b'{"deploy": "v2"}'
    r = httpx.post(f"{gw.url}/prod/deploy", headers=_auth(ticket), content=body)
    seen = r.json()["headers"]
    assert seen["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()
    assert seen["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert r.json()["body_size"] == len(body)
