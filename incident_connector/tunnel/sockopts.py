# -*- test-case-name: tests.unit.test_sockopts -*-
"""
TCP options on the socket to the relay, each skipped where the OS lacks it.

The socket comes from C{ITCPTransport.getHandle}, the public way to it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

__all__ = ["NOTSENT_LOWAT", "quickAcker", "relaySocket", "setNotSentLowWater"]

#: Unsent bytes the kernel may hold (TCP_NOTSENT_LOWAT), so that the queue
#: that matters stays in user space where it can be reordered.
NOTSENT_LOWAT = 128 * 1024


def relaySocket(transport: Any) -> socket.socket | None:
    """
    The socket under C{transport}, or L{None} if it is not a TCP connection
    (a test's in-memory transport, a proxy wrapper).
    """
    getHandle = getattr(transport, "getHandle", None)
    handle = getHandle() if getHandle is not None else None
    return handle if isinstance(handle, socket.socket) else None


def setNotSentLowWater(sock: socket.socket | None, limit: int = NOTSENT_LOWAT) -> None:
    """
    Keep at most C{limit} unsent bytes in the kernel (Linux, macOS), so that
    what waits, waits in our queue where control messages can overtake it.
    """
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if option is None or sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, limit)
    except OSError:
        pass


def quickAcker(sock: socket.socket | None) -> Callable[[], None] | None:
    """
    A function to call after every read from the relay that makes the kernel
    acknowledge what was read at once (Linux's C{TCP_QUICKACK}, which the
    kernel clears again by itself), or L{None} where there is no such option.

    Why: sshd sets no C{TCP_NODELAY} on a session without a terminal, so
    Nagle's algorithm holds its small packets (a KEXINIT at a re-key, a
    reply) until what it sent before is acknowledged; a receiver with nothing
    to send back lets the kernel delay that ACK by up to 40 ms, on every
    re-key of an upload.  Measured in C{docs/performance.md}.
    """
    option = getattr(socket, "TCP_QUICKACK", None)
    if option is None or sock is None:
        return None
    level = socket.IPPROTO_TCP

    def ackNow() -> None:
        try:
            sock.setsockopt(level, option, 1)
        except OSError:
            pass

    return ackNow
