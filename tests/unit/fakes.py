"""
Test doubles that implement the project's own interfaces (checked with
C{verifyObject} in the tests), so they cannot drift from the real thing.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IProducer
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from incident_connector.tunnel.interfaces import IStreamTransport


@implementer(IStreamTransport)
class FakeChannel:
    """
    A channel that sends at once and records what the stream did.

    @ivar sent: what the stream wrote, in order.
    @ivar eofSent: the stream half-closed.
    @ivar closed: the stream closed (or aborted) the channel.
    @ivar held: the stream holds the relay's window.
    """

    originator = ("127.0.0.1", 50000)
    connectedTo = ("127.0.0.1", 4242)
    label = ""

    def __init__(self) -> None:
        self.sent = b""
        self.eofSent = False
        self.closed = False
        self.aborted = False
        self.held = False
        self.producer: Any = None
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        assert not self.closed and not self.eofSent, "write after close"
        self.sent += data

    def writeSequence(self, data: list[bytes]) -> None:
        for piece in data:
            self.write(piece)

    def loseWriteConnection(self) -> None:
        self.eofSent = True

    def loseConnection(self) -> None:
        self._close()

    def abortConnection(self) -> None:
        self.aborted = True
        self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            from twisted.internet.error import ConnectionDone
            from twisted.python.failure import Failure

            protocol.connectionLost(Failure(ConnectionDone()))

    def whenSent(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        self.held = True

    def resumeProducing(self) -> None:
        self.held = False

    def stopProducing(self) -> None:
        self.abortConnection()


class DestinationTransport(StringTransport):
    """
    A destination's TCP connection as a splice uses it.
    """

    bufferSize = 65536
    shutAfter: bytes | None = None
    closedAfter: bytes | None = None
    aborted = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        self.producer = None

    def loseWriteConnection(self) -> None:
        self.shutAfter = self.value()

    def loseConnection(self) -> None:
        self.closedAfter = self.value()
        super().loseConnection()

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()
