# -*- test-case-name: tests.unit.test_twisted_seam -*-
"""
Every use of a private Twisted attribute or behaviour, in one place.

The connector reaches into Twisted only for speed and for bounded memory, and
only here.  Each function names the Twisted code it relies on (checked
against Twisted 24.10 to 26.10, the range C{pyproject.toml} admits), and
C{tests/unit/test_twisted_seam.py} asserts each assumption directly, so an
upgrade that breaks one fails there first, with a message naming it.  Where an
assumption does not hold, each function falls back to the public API: slower,
never wrong.

Used:
  - L{twisted.internet.abstract.FileDescriptor}: C{dataBuffer}, C{offset},
    C{_tempDataLen} (bytes queued in user space), C{_writeDisconnecting} (a
    half-close is pending), C{bufferSize} (how much C{doRead} asks C{recv} for,
    and the write buffer's high-water mark: the same attribute).
  - L{twisted.internet.tcp.Connection.socket}: the socket, for C{sendmsg}.
  - C{ReactorBase._exitSignal}: twistd re-raises the signal that stopped the
    reactor (L{twisted.application.app.ApplicationRunner.run}).
  - C{TCP4ServerEndpoint._port} (and TCP6's): the port a server endpoint
    description names, to refuse one out of range before twistd's
    C{bind()} raises on it.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from twisted.internet import abstract, tcp

__all__ = [
    "SUPPORTED",
    "clearExitSignal",
    "endpointPort",
    "pendingBytes",
    "sendNow",
    "setReadSize",
]

#: FileDescriptor keeps its write queue in these class attributes, plus
#: _tempDataLen, set per instance (abstract.py: write(), writeSequence(), doWrite()).
_QUEUE_ATTRIBUTES = ("dataBuffer", "offset", "_writeDisconnecting", "bufferSize")
SUPPORTED = all(hasattr(abstract.FileDescriptor, name) for name in _QUEUE_ATTRIBUTES)
_SENDMSG = hasattr(socket.socket, "sendmsg")


def pendingBytes(transport: Any) -> int:
    """
    Bytes written to C{transport} that Twisted still holds in user space.

    For a transport that is not a Twisted file descriptor (a test double, a
    TLS wrapper), 0: such callers then rely on producer pause/resume alone.
    """
    if not SUPPORTED or not isinstance(transport, abstract.FileDescriptor):
        return 0
    return len(transport.dataBuffer) - transport.offset + getattr(transport, "_tempDataLen", 0)


def _idle(transport: Any) -> tcp.Connection | None:
    """
    The TCP connection under C{transport} if nothing is queued on it that a
    direct send could overtake, nor a close or half-close pending.
    """
    if not SUPPORTED or not isinstance(transport, tcp.Connection):
        return None
    if (
        transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnecting
        and not getattr(transport, "TLS", False)
        and getattr(transport, "_tempDataLen", 1) == 0
        and transport.offset == len(transport.dataBuffer)
    ):
        return transport
    return None


def sendNow(transport: Any, pieces: Sequence[bytes | memoryview]) -> None:
    """
    C{transport.writeSequence(pieces)}, except that when nothing is queued the
    socket gets the pieces at once, with one C{sendmsg} (no join).

    Twisted queues every write until the reactor's next turn and then starts
    and stops watching the socket around each burst: three system calls and
    a trip round the reactor per relayed read.  Whatever the socket does not
    take is queued the usual way, so order, back-pressure and half-close are
    unchanged.  Without C{sendmsg} (Windows), one C{send} of the pieces joined.
    """
    connection = _idle(transport)
    if connection is not None:
        try:
            if _SENDMSG:
                sent = connection.socket.sendmsg(pieces)
            else:
                sent = connection.socket.send(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        except OSError:
            # Would block, or broken: Twisted's own write reports a broken connection.
            sent = 0
        if sent:
            rest: list[bytes | memoryview] = []
            for piece in pieces:
                if sent >= len(piece):
                    sent -= len(piece)
                else:
                    rest.append(piece[sent:] if sent else piece)
                    sent = 0
            if not rest:
                return
            pieces = rest
    transport.writeSequence([bytes(piece) if isinstance(piece, memoryview) else piece for piece in pieces])


def setReadSize(transport: Any, size: int) -> None:
    """
    Make C{transport} read up to C{size} bytes per C{recv}.

    C{bufferSize} is also the write high-water mark at which Twisted pauses a
    streaming producer (C{FileDescriptor._isSendBufferFull}); callers that
    use this pace their writes themselves (L{pendingBytes}) and say so.
    """
    if SUPPORTED and isinstance(transport, abstract.FileDescriptor):
        transport.bufferSize = size


def clearExitSignal(reactor: Any) -> None:
    """
    Let a process stopped by SIGTERM/SIGINT exit with status 0 once its drain
    finished: twistd re-raises C{reactor._exitSignal} after the reactor stops.
    """
    if hasattr(reactor, "_exitSignal"):
        reactor._exitSignal = None


def endpointPort(endpoint: Any) -> int | None:
    """
    The port a TCP server endpoint will listen on, as its description named
    it; L{None} for other endpoints (or if Twisted no longer keeps it there).
    """
    port = getattr(endpoint, "_port", None)
    return port if isinstance(port, int) else None
