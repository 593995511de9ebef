"""Whether a client has closed its end of a TCP connection, asked of the socket itself.

A connection whose reading is paused (flow control, a request pipelined behind the one being
answered) is not told by the event loop that its peer sent FIN or RST until reading resumes. A
gateway that holds an operation for approval asks this before it acts for a client that may be
gone (holds die with their client).
"""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["peer_closed"]

# Linux TCP states (include/net/tcp_states.h) in which the peer has closed: CLOSE, CLOSE_WAIT,
# LAST_ACK.
_PEER_CLOSED = frozenset({7, 8, 9})


def peer_closed(sock: Any) -> bool:
    """True when ``sock`` (a socket, or uvloop's stand-in for one) is TCP and its peer has
    closed; False when that cannot be told (no socket, not TCP, not Linux)."""
    if sock is None or not hasattr(socket, "TCP_INFO"):
        return False
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except (OSError, TypeError, ValueError):  # not a TCP socket (a test's socket pair)
        return False
    return state in _PEER_CLOSED
