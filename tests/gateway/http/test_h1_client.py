"""The HTTP gateway's upstream client (``gateway/h1/client.py``) against real TLS and plain
servers on 127.0.0.1: certificate verification as before (httpx's context), keep-alive reuse,
chunked bodies, a broken response reported, never retried."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from airlock.gateway.h1.client import Pool, Timeouts, UpstreamError

_CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
)


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def _serve(
    answer: bytes, context: ssl.SSLContext | None, seen: list[bytes]
) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                seen.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)


async def _get(pool: Pool) -> tuple[int, bytes]:
    response = await pool.send(pool.request("GET", "/x?y=1", [], b""))
    try:
        return response.status_code, b"".join([c async for c in response.aiter_raw()])
    finally:
        await response.aclose()


def test_tls_upstream_is_verified_and_connections_are_reused(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)

    async def main() -> None:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)
        seen: list[bytes] = []
        server = await _serve(_CHUNKED, server_ctx, seen)
        origin = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        # the default context (certifi's CAs, verification on) refuses a self-signed upstream
        default = Pool(origin, Timeouts(connect=5, read=5))
        with pytest.raises(UpstreamError, match="CERTIFICATE_VERIFY_FAILED") as refused:
            await _get(default)
        assert type(refused.value).__name__ == "ConnectError"
        trusting = Pool(
            origin, Timeouts(connect=5, read=5), ssl_context=ssl.create_default_context(cafile=cert)
        )
        assert [await _get(trusting) for _ in range(3)] == [(200, b"hello world")] * 3
        assert len(trusting.connections()) == 1  # one connection, kept alive
        assert all(h.startswith(b"GET /x?y=1 HTTP/1.1\r\nhost: 127.0.0.1:") for h in seen)
        response = await trusting.send(trusting.request("GET", "/", [], b""), whole=100)
        assert response.body_now() == b"hello world"  # chunked: not awaited, but it came whole
        await response.aclose()
        await trusting.aclose()
        server.close()

    asyncio.run(main())


@pytest.mark.parametrize("whole", [0, 1000])
def test_a_response_cut_short_is_an_error_and_the_request_is_sent_once(whole: int) -> None:
    """Also when the small body is awaited with the head (``whole``): the head is returned and
    the body's read reports the break."""

    async def main() -> None:
        seen: list[bytes] = []
        cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(cut)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        pool = Pool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", Timeouts(read=5))
        response = await pool.send(pool.request("POST", "/pay", [], b"{}"), whole=whole)
        assert response.status_code == 200 and response.body_now() is None
        with pytest.raises(UpstreamError) as broken:
            async for _ in response.aiter_raw():
                pass
        await response.aclose()
        assert type(broken.value).__name__ == "ReadError"
        assert len(seen) == 1 and b"content-length: 2" in seen[0]
        assert pool.connections() == []  # a broken connection is not reused
        server.close()

    asyncio.run(main())


def test_requests_past_the_connection_limit_wait_in_turn_or_time_out() -> None:
    """One connection allowed: the second request waits for the first to be done with; a
    request that waits longer than the pool timeout fails with PoolTimeout and leaves no trace
    that would hold up the requests after it."""

    async def main() -> None:
        server = await _serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", None, [])
        origin = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        pool = Pool(origin, Timeouts(read=5, pool=0.2), max_connections=1)
        first = await pool.send(pool.request("GET", "/1", [], b""))
        with pytest.raises(UpstreamError) as waited:
            await pool.send(pool.request("GET", "/2", [], b""))
        assert type(waited.value).__name__ == "PoolTimeout"
        await first.aclose()
        assert await _get(pool) == (200, b"ok")  # the request that gave up is gone
        third = await pool.send(pool.request("GET", "/3", [], b""))
        fourth = asyncio.ensure_future(_get(pool))
        await asyncio.sleep(0.05)
        assert not fourth.done()  # waits for the one connection
        await third.aclose()
        assert await fourth == (200, b"ok")
        await pool.aclose()
        server.close()

    asyncio.run(main())
