# -*- test-case-name: tests.unit.test_relay_forwards -*-
"""
One stream: a connection the platform made to a connector's port, carried
over a C{forwarded-tcpip} channel on one of that connector's sessions.

Until a channel is open the platform's bytes wait here (the SOCKS request; at
most L{PENDING_LIMIT} before reading pauses).  If the session refuses the
channel (its connector is draining, or at its stream limit) or its connection
dies first, the stream is offered to the next forwarding session, so the
platform never sees it.  Once open, channel and socket are spliced with
back-pressure both ways (the SSH window is held while the platform reads
slowly; the socket is paused while the connector's window is shut) and
half-close.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.conch.error import ConchError
from twisted.conch.ssh import forwarding
from twisted.conch.ssh.channel import SSHChannel
from twisted.internet import protocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

if TYPE_CHECKING:
    from .forwards import Forwards, Session

__all__ = ["PENDING_LIMIT", "Stream", "StreamFactory"]

_log = Logger()

PENDING_LIMIT = 64 * 1024
"""
Bytes from the platform held while no channel is open yet; reading pauses beyond.
"""

WINDOW = 2 * 1024 * 1024
"""
Our receive window on each channel: what one stream may have in flight towards the platform.
"""


def _describe(reason: object) -> str:
    if isinstance(reason, ConchError):
        text = reason.value
        return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return "its connection was lost"


@implementer(IPushProducer)
class _Channel(SSHChannel):
    """
    The channel side of a L{Stream}.  It is also the producer for the
    platform's socket: while that socket cannot take more, it holds back our
    window (L{windowHeld}, which C{RelayConnection.adjustWindow} honours).

    @ivar stream: the platform's side.
    @ivar session: the connector session the channel was opened on.
    @ivar windowHeld: no window adjustments are sent while true.
    """

    name = b"forwarded-tcpip"

    def __init__(self, stream: Stream, session: Session) -> None:
        super().__init__(localWindow=WINDOW, conn=session.conn)
        self.stream = stream
        self.session = session
        self.windowHeld = False
        self._eofAfterBuffer = False

    def channelOpen(self, specificData: bytes) -> None:
        self.session.streams += 1
        self.stream.channelOpened(self)

    def openFailed(self, reason: Any) -> None:
        self.stream.channelRefused(self, reason)

    def dataReceived(self, data: bytes) -> None:
        assert self.stream.transport is not None
        self.stream.transport.write(data)

    def eofReceived(self) -> None:
        self.stream.connectorFinished()

    def closed(self) -> None:
        """
        Called once both sides closed the channel, or its connection is gone.
        """
        self.session.streams -= 1
        self.stream.channelClosed()

    def stopWriting(self) -> None:
        """
        Called when the connector's window is shut: stop reading the platform.
        """
        self.stream.transport.pauseProducing()  # type: ignore[union-attr]

    def startWriting(self) -> None:
        """
        Called when the connector's window opens again.
        """
        self.stream.transport.resumeProducing()  # type: ignore[union-attr]

    def addWindowBytes(self, data: int) -> None:
        super().addWindowBytes(data)
        if self._eofAfterBuffer and not self.buf:
            self._eofAfterBuffer = False
            self.conn.sendEOF(self)  # type: ignore[union-attr]

    def writeEOF(self) -> None:
        """
        Send EOF after everything written so far (Conch's C{sendEOF} would
        overtake data still waiting for window).
        """
        if self.buf:
            self._eofAfterBuffer = True
        else:
            self.conn.sendEOF(self)  # type: ignore[union-attr]

    def pauseProducing(self) -> None:
        self.windowHeld = True

    def resumeProducing(self) -> None:
        self.windowHeld = False
        missing = self.localWindowSize - self.localWindowLeft
        if missing:
            self.conn.adjustWindow(self, missing)  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        self.loseConnection()


@implementer(IHalfCloseableProtocol)
class Stream(protocol.Protocol):
    """
    A connection from the platform to a connector's port.

    @ivar channel: the open channel carrying it, or L{None} before.
    """

    def __init__(self, forwards: Forwards, connectorId: str) -> None:
        self.forwards = forwards
        self.connectorId = connectorId
        self.channel: _Channel | None = None
        self._pending: list[bytes] = []
        self._pendingSize = 0
        self._tried: set[Session] = set()
        self._readClosed = False
        self._connectorFinished = False
        self._lost = False

    def connectionMade(self) -> None:
        self._offer()

    def _offer(self) -> None:
        """
        Open a channel on the next forwarding session not tried yet.
        """
        assert self.transport is not None
        session = self.forwards.pick(self.connectorId, self._tried)
        if session is None:
            _log.warn(
                "connector {id}: no connection could take a stream ({tried} tried); closing it",
                id=self.connectorId,
                tried=len(self._tried),
            )
            self.transport.loseConnection()
            return
        self._tried.add(session)
        peer = self.transport.getPeer()
        port = self.transport.getHost().port  # type: ignore[attr-defined]
        session.conn.openChannel(
            _Channel(self, session),
            forwarding.packOpen_forwarded_tcpip((session.bindAddress, port), (peer.host, peer.port)),  # type: ignore[attr-defined]
        )

    def channelOpened(self, channel: _Channel) -> None:
        """
        Called when the connector accepted the channel.
        """
        if self._lost:
            channel.loseConnection()
            return
        assert self.transport is not None
        self.channel = channel
        self.transport.registerProducer(channel, True)  # type: ignore[attr-defined]
        self.transport.resumeProducing()  # type: ignore[attr-defined]
        pending, self._pending = b"".join(self._pending), []
        if pending:
            channel.write(pending)
        if self._readClosed:
            channel.writeEOF()

    def channelRefused(self, channel: _Channel, reason: object) -> None:
        """
        Called when the session refused the channel or its connection died
        before answering: try the next one.
        """
        if self._lost:
            return
        _log.info(
            "connector {id}: {peer} did not take a stream ({reason}); offering it to the next connection",
            id=self.connectorId,
            peer=channel.session.peer,
            reason=_describe(reason),
        )
        self._offer()

    def channelClosed(self) -> None:
        assert self.transport is not None
        self.transport.unregisterProducer()  # type: ignore[attr-defined]
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.channel is not None:
            self.channel.write(data)
            return
        self._pending.append(data)
        self._pendingSize += len(data)
        if self._pendingSize >= PENDING_LIMIT:
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        """
        The platform will send no more: pass the EOF on.
        """
        self._readClosed = True
        if self.channel is not None:
            self.channel.writeEOF()
            self._closeIfFinished()

    def connectorFinished(self) -> None:
        """
        The connector will send no more (its destination closed): shut the
        platform's write side.
        """
        assert self.transport is not None
        self._connectorFinished = True
        self.transport.loseWriteConnection()  # type: ignore[attr-defined]
        self._closeIfFinished()

    def _closeIfFinished(self) -> None:
        # Both ways are done: as OpenSSH does, the side that sees this closes
        # the channel (after what is still buffered for the connector).
        if self._readClosed and self._connectorFinished and self.channel is not None:
            self.channel.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: object = None) -> None:
        self._lost = True
        if self.channel is not None:
            self.channel.loseConnection()


class StreamFactory(protocol.Factory):
    """
    Builds a L{Stream} for every connection to one connector's port.
    """

    noisy = False

    def __init__(self, forwards: Forwards, connectorId: str) -> None:
        self.forwards = forwards
        self.connectorId = connectorId

    def buildProtocol(self, addr: Any) -> Stream:
        return Stream(self.forwards, self.connectorId)
