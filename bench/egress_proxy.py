"""The egress proxy's cost: a 200 MB HTTPS download and 1,000 short HTTPS connections, direct,
through the proxy as it was (``--before``, a git ref, default ``main``) and as it is, in one run.

Processes: a local HTTPS server (Python's http.server + TLS, a test CA), the clients (curl for
the download; a small Python loop for the short connections), and two egress proxies, each in a
process of its own (``before`` runs the sources of ``--before``, with its compiled relay built
when it has one; ``after`` this tree's), so their CPU time (user+sys from /proc/<pid>/stat) is
theirs alone. Modes take turns: downloads rotate
direct/before/after each round; short connections rotate one by one. Prints MB/s and the ratio
to direct (target >= 0.8x), ms added per connection (target <= 1 ms), and each proxy's CPU per
GB and per connection, which a loaded machine inflates far less than wall time.

    .venv/bin/python bench/egress_proxy.py [--size-mb 200] [--connections 1000] [--rounds 3]
        [--before main] [--only download|connections]
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.tls_ca import LocalCA  # noqa: E402

_NAME = "bench.test"

_CLIENT = r"""
import json, socket, ssl, sys, time
host, port, count, cafile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
proxies = [int(p) for p in sys.argv[5:]]  # 0: direct
context = ssl.create_default_context(cafile=cafile)
request = f"GET /small HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()

def one(proxy_port):
    start = time.perf_counter()
    if proxy_port:
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

times = {p: [] for p in proxies}
for i in range(count):  # in turns, one connection each, so load drift hits all alike
    for k in range(len(proxies)):
        p = proxies[(i + k) % len(proxies)]
        times[p].append(one(p))
print(json.dumps([times[p] for p in proxies]))
"""

_PROXY = """
import sys
from pathlib import Path
core, server_port, port_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.path.insert(0, core)
from airlock.egress import start_egress_proxy
from airlock.policy import parse_policy

async def resolve(host, port):
    return ["127.0.0.1"]

policy = parse_policy(
    f"network: {{allow: [{{id: bench, host: bench.test, ports: [{server_port}], "
    "local_addresses: true}]}"
)
events = []
proxy = start_egress_proxy(
    policy.network, record=lambda kind, data: events.append(kind), approve=None, resolve=resolve
)
relay = "compiled" if getattr(proxy, "native", None) is not None else "python"
Path(port_file).write_text(f"{proxy.port} {relay}")
sys.stdin.read()  # until the bench closes our stdin
proxy.close()
print(events.count("net.connect"))
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


def _connections(port: int, ca: Path, proxies: list[int], count: int) -> list[list[float]]:
    argv = [sys.executable, "-c", _CLIENT, _NAME, str(port), str(count), str(ca)]
    done = subprocess.run([*argv, *map(str, proxies)], check=True, capture_output=True, text=True)
    result: list[list[float]] = json.loads(done.stdout)
    return result


class _Proxy:
    """One egress proxy in a process of its own, running the sources under ``core``."""

    def __init__(self, core: Path, server_port: int, work: Path, name: str) -> None:
        port_file = work / f"{name}.port"
        self.process = subprocess.Popen(
            [sys.executable, "-c", _PROXY, str(core), str(server_port), str(port_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        port, _, self.relay = port_file.read_text().partition(" ")
        self.port = int(port)
        self.url = f"http://127.0.0.1:{self.port}"

    def cpu(self) -> float:
        """User + system seconds the proxy process has used so far."""
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) seconds the proxy process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    def close(self) -> int:
        out, _ = self.process.communicate("", timeout=60)
        return int(out.strip() or 0)


def _before_sources(ref: str, work: Path) -> Path:
    """The ``core`` directory of git ref ``ref``, unpacked under ``work``."""
    target = work / "before"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "core"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    core = target / "core"
    if (core / "airlock" / "egress" / "build_relay.py").exists():  # its compiled relay, if any
        env = {**os.environ, "PYTHONPATH": str(core)}
        command = [sys.executable, "-m", "airlock.egress.build_relay"]
        subprocess.run(command, env=env, cwd=core, check=False, capture_output=True)
    return core


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", default="main", help="git ref of the proxy to compare with")
    parser.add_argument(
        "--only", choices=("download", "connections"), help="run one of the two measures"
    )
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
            cores = {"before": _before_sources(args.before, work), "after": ROOT / "core"}
            proxies = {name: _Proxy(core, port, work, name) for name, core in cores.items()}
            try:
                _measure(args, port, ca.path, proxies)
            finally:
                counts = {name: proxy.close() for name, proxy in proxies.items()}
            print(f"net.connect events recorded: {counts}")
        finally:
            server.terminate()
            server.wait()


def _measure(args: argparse.Namespace, port: int, ca: Path, proxies: dict[str, _Proxy]) -> None:
    relays = ", ".join(f"{name}: {proxy.relay} relay" for name, proxy in proxies.items())
    print(f"load average {os.getloadavg()[0]:.1f}; before = {args.before}; {relays}")
    modes: list[str] = ["direct", *proxies]
    if args.only != "connections":
        _measure_downloads(args, port, ca, proxies, modes)
    if args.only != "download":
        _measure_connections(args, port, ca, proxies, modes)


def _measure_downloads(
    args: argparse.Namespace, port: int, ca: Path, proxies: dict[str, _Proxy], modes: list[str]
) -> None:
    walls: dict[str, list[float]] = {mode: [] for mode in modes}
    cpu = dict.fromkeys(proxies, 0.0)
    for turn in range(args.rounds):
        for k in range(len(modes)):
            mode = modes[(turn + k) % len(modes)]
            proxy = proxies.get(mode)
            start_cpu = proxy.cpu() if proxy else 0.0
            walls[mode].append(_download(port, ca, proxy.url if proxy else None))
            if proxy:
                cpu[mode] += proxy.cpu() - start_cpu
    size = args.size_mb * (1 << 20)
    gb = size * args.rounds / 1e9
    direct = statistics.median(walls["direct"])
    print(f"download {args.size_mb} MiB over HTTPS, median of {args.rounds} (in turns)")
    for mode in modes:
        wall = statistics.median(walls[mode])
        line = f"  {mode:8} {wall:7.3f} s {size / wall / 1e6:8.1f} MB/s"
        if mode in proxies:
            line += f"  {direct / wall:5.2f}x of direct (target >= 0.8x)"
            line += f"  proxy CPU {cpu[mode] / gb:5.2f} s/GB"
        print(line)


def _measure_connections(
    args: argparse.Namespace, port: int, ca: Path, proxies: dict[str, _Proxy], modes: list[str]
) -> None:
    n = args.connections
    ports = [0, *(p.port for p in proxies.values())]
    start = {name: p.cpu_split() for name, p in proxies.items()}
    runs = [_connections(port, ca, ports, n) for _ in range(args.rounds)]
    split = {
        name: tuple(b - a for a, b in zip(start[name], p.cpu_split(), strict=True))
        for name, p in proxies.items()
    }
    times = {mode: [t for run in runs for t in run[i]] for i, mode in enumerate(modes)}
    med = {mode: statistics.median(t) for mode, t in times.items()}
    mean = {mode: statistics.fmean(t) for mode, t in times.items()}
    print(f"{n} short HTTPS connections per mode x {args.rounds}, rotating one by one")
    for mode in modes:
        line = f"  {mode:8} median {med[mode] * 1000:6.2f} ms  mean {mean[mode] * 1000:6.2f} ms"
        if mode in proxies:
            line += f"  added: median {(med[mode] - med['direct']) * 1000:5.2f} ms"
            line += f", mean {(mean[mode] - mean['direct']) * 1000:5.2f} ms (target <= 1 ms)"
            user, system = (t / (n * args.rounds) * 1000 for t in split[mode])
            line += f"  proxy CPU {user + system:5.2f} ms/conn"
            line += f" ({user:.2f} user + {system:.2f} sys)"
        print(line)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--serve":
        _serve(*sys.argv[2:])
    else:
        main()
