"""The egress proxy's cost: a 200 MB HTTPS download and 1,000 short HTTPS connections, through
the proxy vs direct, in the same run.

Three processes: a local HTTPS server (Python's http.server + TLS, a test CA), the client (curl
for the download; a small Python loop for the short connections), and this process, which runs
the egress proxy in a thread as `airlock run` does. Direct and proxied runs alternate (in
turns); the best of ``--rounds`` counts. Prints MB/s and the ratio proxied/direct (target >= 0.8x), and the
milliseconds the proxy adds to each new connection (target <= 1 ms): wall clock, with direct
and proxied connections alternating one by one, and the proxy's own CPU time per connection,
which a loaded machine does not inflate.

    .venv/bin/python bench/egress_proxy.py [--size-mb 200] [--connections 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.server
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "core"))

from airlock.egress import start_egress_proxy  # noqa: E402
from airlock.policy import parse_policy  # noqa: E402
from tests.support.tls_ca import LocalCA  # noqa: E402

_NAME = "bench.test"

_CLIENT = r"""
import socket, ssl, statistics, sys, time
host, port, proxy_port, count, cafile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
context = ssl.create_default_context(cafile=cafile)
request = f"GET /small HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()

def one(via_proxy):
    start = time.perf_counter()
    if via_proxy:
        sock = socket.create_connection(("127.0.0.1", proxy_port))
        sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\n\r\n".encode())
        answer = b""
        while not answer.endswith(b"\r\n\r\n"):
            answer += sock.recv(1)
        assert answer.startswith(b"HTTP/1.1 200"), answer
    else:
        sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with context.wrap_socket(sock, server_hostname=host) as tls:
        tls.sendall(request)
        body = b""
        while chunk := tls.recv(65536):
            body += chunk
        assert body.endswith(b"ok\n"), body[-40:]
    return time.perf_counter() - start

direct, proxied = [], []
for i in range(count):  # in turns, one connection each, so load drift hits both alike
    first = i % 2 == 0
    a = one(not first)
    b = one(first)
    (proxied if first else direct).append(b)
    (direct if first else proxied).append(a)
print(sum(direct), sum(proxied), statistics.median(direct), statistics.median(proxied))
"""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    big: Path

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        if self.path == "/small":
            self.send_response(200)
            self.send_header("Content-Length", "3")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"ok\n")
            return
        size = self.big.stat().st_size
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        with self.big.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                self.wfile.write(chunk)


def _serve(port_file: str, cert: str, key: str, big: str) -> None:
    import ssl

    _Handler.big = Path(big)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.request_queue_size = 512
    Path(port_file).write_text(str(server.server_address[1]))
    server.serve_forever()


async def _resolve(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]


def _download(port: int, ca: Path, proxy: str | None) -> float:
    argv = ["curl", "-sS", "-o", os.devnull, "--cacert", str(ca)]
    if proxy:
        argv += ["--proxy", proxy]
    else:
        argv += ["--resolve", f"{_NAME}:{port}:127.0.0.1"]
    start = time.perf_counter()
    subprocess.run(
        [*argv, f"https://{_NAME}:{port}/big"], check=True, env={"PATH": "/usr/bin:/bin"}
    )
    return time.perf_counter() - start


def _connections(port: int, ca: Path, proxy_port: int, count: int) -> list[float]:
    done = subprocess.run(
        [sys.executable, "-c", _CLIENT, _NAME, str(port), str(proxy_port), str(count), str(ca)],
        check=True,
        capture_output=True,
        text=True,
    )
    return [float(x) for x in done.stdout.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ca = LocalCA.create(work)
        cert, key = ca.issue([_NAME])
        big = work / "big.bin"
        with big.open("wb") as handle:
            block = os.urandom(1 << 20)
            for _ in range(args.size_mb):
                handle.write(block)
        port_file = work / "port"
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port_file), str(cert), str(key), str(big)]
        )
        try:
            while not port_file.exists() or not port_file.read_text():
                time.sleep(0.05)
            port = int(port_file.read_text())
            _measure(args, port, ca.path)
        finally:
            server.terminate()
            server.wait()


def _measure(args: argparse.Namespace, port: int, ca: Path) -> None:
    policy = parse_policy(
        f"network: {{allow: [{{id: bench, host: {_NAME}, ports: [{port}], local_addresses: true}}]}}"
    )
    assert policy.network is not None
    events: list[str] = []
    proxy = start_egress_proxy(
        policy.network,
        record=lambda kind, data: events.append(kind),
        approve=None,
        resolve=_resolve,
    )
    try:
        rounds, relay_cpu = [], 0.0
        for _ in range(args.rounds):
            plain = _download(port, ca, None)
            cpu = time.process_time()  # this process only runs the proxy meanwhile
            rounds.append((plain, _download(port, ca, proxy.url)))
            relay_cpu += time.process_time() - cpu
        direct, proxied = min(r[0] for r in rounds), min(r[1] for r in rounds)
        size = args.size_mb * (1 << 20)
        print(f"download {args.size_mb} MiB over HTTPS (best of {args.rounds})")
        print(f"  direct (baseline)   {direct:7.3f} s  {size / direct / 1e6:8.1f} MB/s")
        print(f"  through the proxy   {proxied:7.3f} s  {size / proxied / 1e6:8.1f} MB/s")
        print(f"  ratio               {direct / proxied:7.2f}x of direct (target >= 0.8x)")
        gb = size * args.rounds / 1e9
        print(f"  proxy CPU           {relay_cpu / gb:7.2f} s per GB relayed (whatever the load)")
        n = args.connections
        cpu = time.process_time()  # this process only runs the proxy meanwhile
        runs = [_connections(port, ca, proxy.port, n) for _ in range(args.rounds)]
        cpu_each = (time.process_time() - cpu) / (n * args.rounds)
        total_d, total_p, med_d, med_p = min(runs, key=lambda r: r[0] + r[1])
        print(f"{n} short HTTPS connections each way, alternating (best of {args.rounds})")
        print(f"  direct (baseline)   {total_d:7.3f} s  median {med_d * 1000:6.2f} ms each")
        print(f"  through the proxy   {total_p:7.3f} s  median {med_p * 1000:6.2f} ms each")
        print(
            f"  added               {(total_p - total_d) / n * 1000:7.2f} ms per connection "
            f"(mean), {(med_p - med_d) * 1000:.2f} ms (median) (target <= 1 ms)"
        )
        print(f"  proxy CPU           {cpu_each * 1000:7.2f} ms per connection (whatever the load)")
    finally:
        proxy.close()
    print(f"net.connect events recorded: {events.count('net.connect')}")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--serve":
        _serve(*sys.argv[2:])
    else:
        main()
