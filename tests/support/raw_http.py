"""A raw HTTP/1.1 upstream for the gateway attack tests: it answers each request it parses
with bytes the test chooses (a buggy or hostile server: extra bytes, wrong lengths, pieces sent
apart) and keeps every request it received."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httptools

Answer = Callable[[int, dict[str, Any]], "bytes | list[bytes]"]


class Parsed:
    """What an httptools parser saw: messages with their heads and bodies."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.parser: Any = None

    def on_headers_complete(self) -> None:
        if isinstance(self.parser, httptools.HttpResponseParser):
            self.messages[-1]["status"] = self.parser.get_status_code()

    def on_message_begin(self) -> None:
        self.messages.append({"url": b"", "headers": [], "body": b"", "complete": False})

    def on_url(self, url: bytes) -> None:
        self.messages[-1]["url"] += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.messages[-1]["headers"].append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.messages[-1]["body"] += body

    def on_message_complete(self) -> None:
        self.messages[-1]["complete"] = True


class RawUpstream:
    """An upstream that answers each request it parses with ``answer(n, request)`` raw bytes
    (``n`` counts requests across connections; a list is sent piece by piece, 50 ms apart, as
    separate segments after the gateway's read); records every request it received."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        seen = Parsed()
        parser = httptools.HttpRequestParser(seen)
        seen.parser = parser
        done = 0
        conn.settimeout(0.2)
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                try:
                    parser.feed_data(data)
                except httptools.HttpParserError:
                    return
                for message in seen.messages[done:]:
                    if not message["complete"]:
                        break
                    done += 1
                    message["method"] = parser.get_method()
                    with self._lock:
                        n = len(self.requests)
                        self.requests.append(message)
                    reply = self.answer(n, message)
                    pieces = [reply] if isinstance(reply, bytes) else reply
                    for i, piece in enumerate(pieces):
                        if i:
                            time.sleep(0.05)
                        conn.sendall(piece)
                    head = b"".join(pieces).partition(b"\r\n\r\n")[0].lower() + b"\r\n"
                    if b"\r\nconnection: close\r\n" in head:
                        return  # a response that ends with the connection

    def urls(self) -> list[bytes]:
        return [m["url"] for m in self.requests]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()
