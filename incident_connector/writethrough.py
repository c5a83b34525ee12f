# -*- test-case-name: tests.test_writethrough -*-
"""
Writing to a TCP connection at once when nothing is queued on it.

Twisted queues every write until the reactor's next turn, then starts and
stops watching the socket for writability around each burst: three system
calls and a trip round the reactor for every read relayed.  When nothing is
queued, sending right away keeps the bytes in order and saves all that
(upload through the tunnel runs about a third faster).  Whatever the socket
does not take is queued the usual way, so back-pressure, half-close and
closing work exactly as before.

This reads attributes of L{twisted.internet.abstract.FileDescriptor} that
are not all public (C{dataBuffer}, C{offset}, C{_tempDataLen}); should they
change, every write is a plain C{write} again (and a test fails).
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet import abstract, tcp
from twisted.internet.interfaces import ITransport

__all__ = ["write", "writeSequence"]

_SUPPORTED = all(hasattr(abstract.FileDescriptor, name) for name in ("dataBuffer", "offset", "_writeDisconnecting"))


def _idle(transport: ITransport) -> tcp.Connection | None:
    """
    The TCP connection under C{transport} if it has nothing queued and
    nothing pending that a direct send could overtake.
    """
    if not _SUPPORTED or not isinstance(transport, tcp.Connection):
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


def write(transport: ITransport, data: bytes) -> None:
    """
    C{transport.write(data)}, sending at once what the socket takes if
    nothing is queued.
    """
    writeSequence(transport, (data,))


def writeSequence(transport: ITransport, pieces: Sequence[bytes]) -> None:
    """
    C{transport.writeSequence(pieces)}, sent with one C{sendmsg} (no join)
    if nothing is queued.
    """
    connection = _idle(transport)
    if connection is not None:
        try:
            sent = connection.socket.sendmsg(pieces)
        except OSError:
            # Would block, or the connection broke: queued, Twisted's own
            # write reports a broken connection.
            sent = 0
        rest: list[bytes] = []
        for piece in pieces:
            if sent >= len(piece):
                sent -= len(piece)
            else:
                rest.append(piece[sent:] if sent else piece)
                sent = 0
        if not rest:
            return
        pieces = rest
    transport.writeSequence(pieces)
