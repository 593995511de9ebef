# ruff: noqa: PTH100, PTH120, S606
# (os.path, not pathlib: this starts on every `airlock run` and keeps its imports minimal)
"""The sandbox's first process: bridge ports to Unix sockets, or probe the walls, then the agent.

Runs INSIDE the sandbox as ``python3 -I -S relay.py``: standard library only, no Airlock
imports (Airlock's code and venv are not in the sandbox), few imports (start-up is on every
``airlock run``).

    relay.py PORT=SOCKET... -- COMMAND...   listen on 127.0.0.1:PORT for each pair, forward
                                            every connection to SOCKET, run COMMAND, exit as it
    relay.py --probe JSON [PORT=SOCKET...]  run the self-check probes, print one JSON line
"""

from __future__ import annotations

import os
import socket
import sys
from types import ModuleType

_CHUNK = 65536


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


def _copy(src: socket.socket, dst: socket.socket) -> None:
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


def _serve(listener: socket.socket, path: str, threading: ModuleType) -> None:
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


def _start_bridges(pairs: list[tuple[int, str]]) -> None:
    listeners = [(_listen(port), path) for port, path in pairs]
    if not listeners:
        return
    import threading

    for listener, path in listeners:
        threading.Thread(target=_serve, args=(listener, path, threading), daemon=True).start()


def _parse_pairs(args: list[str]) -> list[tuple[int, str]]:
    pairs = []
    for arg in args:
        port, _, path = arg.partition("=")
        pairs.append((int(port), path))
    return pairs


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
    if args[:1] == ["--probe"]:
        import json

        config = json.loads(args[1])
        _start_bridges(_parse_pairs(args[2:]))
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import _probes  # type: ignore[import-not-found]  # next to this file in the sandbox

        sys.stdout.write(json.dumps(_probes.run_all(config)) + "\n")
        sys.stdout.flush()
        os._exit(0)
    cut = args.index("--")
    _run(_parse_pairs(args[:cut]), args[cut + 1 :])


if __name__ == "__main__":
    main(sys.argv[1:])
