# ruff: noqa: PTH108, PTH110, PTH112, PTH118, PTH123, PTH208, S606
# (os.path, not pathlib: see _relay.py)
"""Self-check probes, run INSIDE the sandbox by ``_relay.py --check`` before the agent starts.

Standard library only (see ``_relay.py``). Each probe tries one thing a hostile agent would and
reports ``{"id", "ok", "detail"}``; ``ok`` means the wall held. Some walls are also checked from
outside (the host canaries must have received nothing): the host merges that in.
"""

# No `from __future__` (one more import: annotations that need the names below are strings).
# `_socket`, not `socket` (which pulls in enum, selectors, collections...), and no `typing` at
# run time: the probes run before every sandboxed agent, and these imports were half their cost.
import _socket
import errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Result = dict[str, Any]
_TEST_NET = "192.0.2.1"  # RFC 5737 documentation address: nothing real is ever there
_PTRACE_ATTACH = 16


def _result(pid: str, ok: bool, detail: str) -> "Result":
    return {"id": pid, "ok": ok, "detail": detail}


def _err(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def identity(_config: "dict[str, Any]") -> "Result":
    status = {}
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    uid = os.getuid()
    ok = (
        uid != 0
        and int(status.get("CapEff", "1"), 16) == 0
        and status.get("NoNewPrivs") == "1"
        and status.get("Seccomp") == "2"
    )
    detail = (
        f"uid {uid}, CapEff {status.get('CapEff')}, NoNewPrivs {status.get('NoNewPrivs')}, "
        f"Seccomp {status.get('Seccomp')}"
    )
    return _result("identity", ok, detail)


def interfaces(_config: "dict[str, Any]") -> "Result":
    with open("/proc/net/dev", encoding="ascii") as fh:
        names = [line.split(":")[0].strip() for line in fh.readlines()[2:]]
    return _result("net.interfaces", names == ["lo"], "interfaces: " + ", ".join(names))


def tcp_out(config: "dict[str, Any]") -> "Result":
    targets = [(_TEST_NET, 443)]
    if config.get("canary_tcp"):
        targets.append(tuple(config["canary_tcp"]))
    details = []
    ok = True
    for host, port in targets:
        sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        sock.settimeout(2.0)
        try:
            sock.connect((host, port))
            ok = False
            details.append(f"{host}:{port} connected")
        except OSError as exc:
            details.append(f"{host}:{port} {_err(exc) if exc.errno else 'timeout'}")
        finally:
            sock.close()
    return _result("net.tcp_out", ok, "; ".join(details))


def udp_out(config: "dict[str, Any]") -> "Result":
    targets = [(_TEST_NET, 53)]
    if config.get("canary_udp"):
        targets.append(tuple(config["canary_udp"]))
    details = []
    for host, port in targets:
        sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
        try:
            sock.sendto(b"airlock-probe", (host, port))
            details.append(f"{host}:{port} sent (host side checks it never arrived)")
        except OSError as exc:
            details.append(f"{host}:{port} {_err(exc)}")
        finally:
            sock.close()
    return _result("net.udp_out", True, "; ".join(details))


def dns(_config: "dict[str, Any]") -> "Result":
    try:
        _socket.getaddrinfo(b"example.com", 443, 0, 0, _socket.IPPROTO_TCP)  # bytes: no idna
    except OSError as exc:
        return _result("net.dns", True, f"example.com does not resolve ({exc})")
    return _result("net.dns", False, "example.com resolved inside the sandbox")


def hidden(config: "dict[str, Any]") -> "Result":
    exposed = []
    for path in config.get("hidden", []):
        try:
            if os.path.isdir(path):
                if os.listdir(path):
                    exposed.append(path)
            else:
                with open(path, "rb") as fh:
                    if fh.read(1):
                        exposed.append(path)
        except OSError:
            continue  # absent or unreadable: hidden
    count = len(config.get("hidden", []))
    detail = f"exposed: {', '.join(exposed)}" if exposed else f"{count} paths hidden"
    return _result("fs.hidden", not exposed, detail)


def write_outside(config: "dict[str, Any]") -> "Result":
    written = []
    for target in ("/usr", "/etc", "/", *config.get("outside", [])):
        path = os.path.join(target, f".airlock-probe-{os.getpid()}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            continue
        os.close(fd)
        os.unlink(path)
        written.append(target)
    detail = f"writable: {', '.join(written)}" if written else "system paths read-only"
    return _result("fs.write_outside", not written, detail)


def processes(_config: "dict[str, Any]") -> "Result":
    mine = {os.getpid(), os.getppid(), 1}
    foreign = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in mine:
            try:
                with open(f"/proc/{entry}/comm", encoding="utf-8", errors="replace") as fh:
                    foreign.append(f"{entry}:{fh.read().strip()}")
            except OSError:
                continue
    detail = f"visible: {', '.join(foreign)}" if foreign else "only the sandbox's own processes"
    return _result("proc.isolated", not foreign, detail)


def ptrace(_config: "dict[str, Any]") -> "Result":
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.ptrace(_PTRACE_ATTACH, os.getppid(), None, None)
    if rc == 0:
        return _result("ptrace", False, "PTRACE_ATTACH to the parent succeeded")
    return _result("ptrace", True, f"PTRACE_ATTACH refused ({errno.errorcode[ctypes.get_errno()]})")


def tiocsti(_config: "dict[str, Any]") -> "Result":
    import fcntl
    import termios

    try:
        master, slave = os.openpty()
    except OSError as exc:
        return _result("tty.tiocsti", True, f"no pty to test ({_err(exc)})")
    try:
        fcntl.ioctl(slave, termios.TIOCSTI, b"x")
    except OSError as exc:
        return _result("tty.tiocsti", True, f"TIOCSTI refused ({_err(exc)})")
    finally:
        os.close(master)
        os.close(slave)
    return _result("tty.tiocsti", False, "TIOCSTI injected a character")


def sudo(_config: "dict[str, Any]") -> "Result":
    path = next(
        (p for p in ("/usr/bin/sudo", "/bin/sudo", "/usr/sbin/sudo") if os.path.exists(p)), None
    )
    if path is None:
        return _result("sudo", True, "no sudo in the sandbox")
    pid = os.fork()
    if pid == 0:
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        try:
            os.execv(path, [path, "-n", "true"])
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return _result("sudo", code != 0, f"sudo -n true exited {code}")


def proxy_denied(config: "dict[str, Any]") -> "Result | None":
    proxy = config.get("proxy")  # the egress proxy's bridged Unix socket
    if not proxy:
        return None
    host = config.get("denied_host", "airlock-denied.invalid")
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(5.0)
    try:
        sock.connect(proxy)
        sock.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
        line = sock.recv(256).split(b"\r\n", 1)[0].decode("latin-1")
    except OSError as exc:
        line = f"error {_err(exc)}"
    finally:
        sock.close()
    refused = " 200 " not in f"{line} "
    return _result("net.proxy_denied", refused, f"CONNECT {host}:443 -> {line!r}")


PROBES: "tuple[Callable[[dict[str, Any]], Result | None], ...]" = (
    identity,
    interfaces,
    tcp_out,
    udp_out,
    dns,
    hidden,
    write_outside,
    processes,
    ptrace,
    tiocsti,
    sudo,
    proxy_denied,
)


def run_all(config: "dict[str, Any]") -> "list[Result]":
    results = []
    for probe in PROBES:
        try:
            result = probe(config)
        except Exception as exc:  # a probe that cannot run is a failed probe, never a pass
            result = _result(probe.__name__, False, f"probe failed: {type(exc).__name__}: {exc}")
        if result is not None:
            results.append(result)
    return results


def _quote(text: str) -> str:
    out = ['"']
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char < " " or char == "\x7f":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def encode(results: "list[Result]") -> str:
    """One JSON line (by hand: importing json costs more start-up than all the probes)."""
    items = [
        f'{{"id": {_quote(r["id"])}, "ok": {"true" if r["ok"] else "false"}, '
        f'"detail": {_quote(r["detail"])}}}'
        for r in results
    ]
    return "[" + ", ".join(items) + "]\n"
