# ruff: noqa: PTH100, PTH120, S606
# (os.path, not pathlib: this starts on every `airlock run` and keeps its imports minimal)
"""The sandbox's first process: probe the walls, bridge ports to Unix sockets, then the agent.

Runs INSIDE the sandbox as ``python3 -I -S relay.py``: standard library only, no Airlock
imports (Airlock's code and venv are not in the sandbox), few imports (start-up is on every
``airlock run``).

    relay.py [CHECK] PORT=SOCKET... -- COMMAND...

For each pair, listen on 127.0.0.1:PORT and forward every connection to SOCKET; run COMMAND and
exit as it does. CHECK (``--check RESULTS_FD,GO_FD`` with ``--hidden PATH``, ``--canary-tcp
PORT``, ``--canary-udp PORT``, ``--proxy SOCKET``) first runs the self-check probes, writes
their results as one JSON line to RESULTS_FD, and waits on GO_FD: COMMAND runs only if the host
answers go; otherwise the relay exits 85 and COMMAND never starts. Both fds are closed before
COMMAND runs, so the agent can neither forge results nor answer for the host.
"""

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # `socket` only loads when ports are bridged (start-up is on every run)
    import socket
    from types import ModuleType

_CHUNK = 65536


def _listen(port: int) -> "socket.socket":
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


def _copy(src: "socket.socket", dst: "socket.socket") -> None:
    import socket

    try:
        while True:
            data = src.recv(_CHUNK)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    for sock, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
        try:  # noqa: SIM105 (contextlib is one more import at start-up)
            sock.shutdown(how)
        except OSError:
            pass


def _serve(listener: "socket.socket", path: str, threading: "ModuleType") -> None:
    import socket

    while True:
        conn, _ = listener.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(path)
        except OSError:
            conn.close()
            upstream.close()
            continue
        threading.Thread(target=_copy, args=(conn, upstream), daemon=True).start()
        threading.Thread(target=_copy, args=(upstream, conn), daemon=True).start()


def _parse(args: list[str]) -> tuple[list[int], dict[str, object], list[tuple[int, str]]]:
    check: list[int] = []
    hidden: list[str] = []
    config: dict[str, object] = {"hidden": hidden}
    pairs = []
    it = iter(args)
    for arg in it:
        if arg == "--check":
            check = [int(fd) for fd in next(it).split(",")]
        elif arg == "--hidden":
            hidden.append(next(it))
        elif arg in ("--canary-tcp", "--canary-udp"):
            config[arg[2:].replace("-", "_")] = ["127.0.0.1", int(next(it))]
        elif arg == "--proxy":
            config["proxy"] = next(it)
        else:
            port, _, path = arg.partition("=")
            pairs.append((int(port), path))
    return check, config, pairs


def _self_check(fds: list[int], config: dict[str, object]) -> None:
    results, go = fds
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _probes  # type: ignore[import-not-found]  # next to this file in the sandbox

    line = _probes.encode(_probes.run_all(config))
    view = memoryview(line.encode("utf-8", "backslashreplace"))
    while view:
        view = view[os.write(results, view) :]
    os.close(results)
    answer = os.read(go, 1)
    os.close(go)
    if answer != b"1":
        sys.stderr.write("airlock sandbox: the self-check failed; the command was not started\n")
        os._exit(85)


def _run(pairs: list[tuple[int, str]], argv: list[str]) -> None:
    if not pairs:
        _exec(argv)
    import signal

    # Listeners first (the agent may connect at once); threads only after the fork.
    listeners = [(_listen(port), path) for port, path in pairs]
    pid = os.fork()
    if pid == 0:
        for listener, _ in listeners:
            listener.close()
        _exec(argv)
    import threading

    for listener, path in listeners:
        threading.Thread(target=_serve, args=(listener, path, threading), daemon=True).start()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status))


def _exec(argv: list[str]) -> None:
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        sys.stderr.write(f"airlock sandbox: cannot run {argv[0]}: {exc.strerror}\n")
        os._exit(127 if isinstance(exc, FileNotFoundError) else 126)


def main(args: list[str]) -> None:
    cut = args.index("--")
    check, config, pairs = _parse(args[:cut])
    if check:
        _self_check(check, config)
    _run(pairs, args[cut + 1 :])


if __name__ == "__main__":
    main(sys.argv[1:])
