# -*- test-case-name: tests.unit.test_connection -*-
"""
One C{forwarded-tcpip} channel (RFC 4254 section 5): its two windows, the
bytes waiting for the relay's window, and EOF and close in each direction.
It is the transport of the stream it carries (L{IStreamTransport}).

The window rule lives here alone: the relay's window is topped up to the
connection's window size (at most L{LOCAL_WINDOW}, less on a link where the
relay's queue grows: C{tunnel/window.py}) once half of it is used, unless
the stream asked us to hold it (its destination is not keeping up) or the
connection is holding every window (too much is buffered towards
destinations overall).
"""

from __future__ import annotations

from collections import deque

from twisted.internet import defer, error
from twisted.internet.interfaces import IProducer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from .interfaces import IChannelOwner, IStreamProtocol, IStreamTransport, Payload

__all__ = ["LEVELS", "LEVEL_STEP", "LOCAL_MAX_PACKET", "LOCAL_WINDOW", "OPENING_WINDOW", "ForwardedChannel"]

#: Our largest receive window per channel: large enough to keep a fast
#: relay busy (OpenSSH's own size).
LOCAL_WINDOW = 2 * 1024 * 1024
#: The largest channel data we accept in one packet (OpenSSH's size).
LOCAL_MAX_PACKET = 32768
#: The window a channel opens with: room for any SOCKS handshake and a
#: first packet.  The stream holds it until its destination accepts, then
#: the window grows to the connection's size; so what the relay can make
#: us keep for destinations not yet connected is at most this per stream
#: (2 MiB each would be 2 GiB over a thousand streams).
OPENING_WINDOW = 64 * 1024
#: The largest channel data we send in one packet, whatever the relay allows.
MAX_SEND_PACKET = 65536
#: Queued bytes past which the stream's producer is paused, and below which
#: it is resumed.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
#: ... and while the connection is congested: a stream keeps reading while
#: less than this waits, so it holds about one read, and an interactive
#: stream (a byte, a query) is never held back by bulk transfers' queues.
CONGESTED_WATER = 16 * 1024
#: Channels are served in order of the bytes they have sent, in steps of
#: this many: a handshake or an interactive stream goes ahead of bulk
#: transfers, and a transfer that starts while others run catches up with
#: them instead of finishing last by their head start...
LEVEL_STEP = 64 * 1024
#: ... over this many steps (1 MiB); past them all channels take plain turns,
#: so newer streams cannot hold back a long transfer for ever.
LEVELS = 16


@implementer(IStreamTransport)
class ForwardedChannel:
    """
    One channel of a relay connection.

    @ivar connection: the connection carrying it.
    @ivar localId: our channel number; C{remoteId} the relay's.
    @ivar protocol: the stream on it.
    @ivar originator: the relay-side client's C{(host, port)}, as reported.
    @ivar connectedTo: the C{(host, port)} the relay accepted it on.
    @ivar remoteWindow: bytes we may still send.
    @ivar remoteMaxPacket: the largest data the relay accepts in one packet.
    @ivar localWindowLeft: bytes the relay may still send us.
    @ivar sent: payload bytes sent so far (channels that sent less are served
        first, up to L{LEVELS} steps of L{LEVEL_STEP}).
    @ivar producer: the stream's producer, paused while too much is queued.
    """

    __slots__ = (
        "_closeAfterDrain",
        "_closeReceived",
        "_closeSent",
        "_ended",
        "_eofAfterDrain",
        "_eofReceived",
        "_eofSent",
        "_held",
        "_inbox",
        "_producerPaused",
        "_queue",
        "_queued",
        "_waiters",
        "connectedTo",
        "connection",
        "localId",
        "localWindowLeft",
        "originator",
        "producer",
        "protocol",
        "remoteId",
        "remoteMaxPacket",
        "remoteWindow",
        "sent",
    )

    def __init__(
        self,
        connection: IChannelOwner,
        localId: int,
        remoteId: int,
        remoteWindow: int,
        remoteMaxPacket: int,
        originator: tuple[str, int],
        connectedTo: tuple[str, int],
    ) -> None:
        self.connection = connection
        self.localId = localId
        self.remoteId = remoteId
        self.remoteWindow = remoteWindow
        self.remoteMaxPacket = min(remoteMaxPacket, MAX_SEND_PACKET)
        self.originator = originator
        self.connectedTo = connectedTo
        self.localWindowLeft = min(connection.windowSize, OPENING_WINDOW)
        self.protocol: IStreamProtocol | None = None
        self.producer: IPushProducer | None = None
        self.sent = 0
        # Made when first needed: an empty deque costs 600 bytes a channel.
        self._queue: deque[bytes | memoryview] | None = None
        self._queued = 0
        self._inbox: list[Payload] | None = None
        self._waiters: list[defer.Deferred[None]] | None = None
        self._held = False
        self._producerPaused = False
        self._eofSent = self._eofReceived = self._closeSent = self._closeReceived = False
        self._eofAfterDrain = self._closeAfterDrain = False
        self._ended = False

    def __repr__(self) -> str:
        return f"<ForwardedChannel {self.localId}/{self.remoteId}>"

    @property
    def label(self) -> str:
        return self.connection.label

    # IStreamTransport: what the stream calls.

    def write(self, data: bytes) -> None:
        if not data or self._eofSent or self._eofAfterDrain or self._closeSent or self._closeAfterDrain:
            return
        if self._queue is None:
            self._queue = deque()
        self._queue.append(data)
        self._queued += len(data)
        self.connection.queued(self, len(data))
        self._maybePauseProducer()

    def writeSequence(self, data: list[bytes]) -> None:
        for piece in data:
            self.write(piece)

    def loseWriteConnection(self) -> None:
        if self._eofSent or self._closeSent:
            return
        if self._queued:
            self._eofAfterDrain = True
        else:
            self._sendEOF()

    def loseConnection(self) -> None:
        if self._closeSent:
            return
        if self._queued:
            self._closeAfterDrain = True
        else:
            self._sendEOF()
            self._sendClose()

    def abortConnection(self) -> None:
        if self._closeSent:
            return
        self._discard()
        self._sendClose()

    def whenSent(self) -> defer.Deferred[None]:
        if not self._queued:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        return waiter

    def getPeer(self) -> tuple[str, int]:
        return self.originator

    def getHost(self) -> tuple[str, int]:
        return self.connectedTo

    # IConsumer

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self.producer = producer  # type: ignore[assignment]
        self._producerPaused = False
        self._maybePauseProducer()

    def unregisterProducer(self) -> None:
        self.producer = None
        self._producerPaused = False

    # IPushProducer: the stream's consumer (its destination) asks us to
    # stop or restart what the relay sends.

    def pauseProducing(self) -> None:
        self._held = True

    def resumeProducing(self) -> None:
        self._held = False
        self.updateWindow()

    def stopProducing(self) -> None:
        self.abortConnection()

    # What the connection calls.

    def updateWindow(self) -> None:
        """
        Top up the relay's window to the connection's L{windowSize} once half
        of that is used, unless held.
        """
        if self._held or self._closeSent or self._eofReceived or self.connection.windowsHeld:
            return
        size = self.connection.windowSize
        if self.localWindowLeft < size // 2:
            self.connection.sendWindowAdjust(self, size - self.localWindowLeft)
            self.localWindowLeft = size

    def dataReceived(self, data: Payload, gathering: bool) -> None:
        """
        Channel data from the relay, already counted against the window.

        @param gathering: the connection is in the middle of one read: keep
            the data until L{deliver}, so the stream gets it in one call.
        """
        if self._closeAfterDrain or self._closeSent or self.protocol is None:
            return
        if gathering:
            if self._inbox is None:
                self._inbox = [data]
                self.connection.gathered.append(self)
            else:
                self._inbox.append(data)
        else:
            self.protocol.dataReceived(data)

    def deliver(self) -> None:
        """
        Hand over what arrived during one read.
        """
        inbox, self._inbox = self._inbox, None
        if inbox and self.protocol is not None and not self._closeSent:
            if len(inbox) == 1:
                self.protocol.dataReceived(inbox[0])
            else:
                self.protocol.dataSequenceReceived(inbox)

    def eofReceived(self) -> None:
        if self._eofReceived:
            return
        self.deliver()
        self._eofReceived = True
        if self.protocol is not None and not self._closeSent:
            self.protocol.readConnectionLost()

    def closeReceived(self) -> None:
        self.deliver()
        self._closeReceived = True
        # What waits can never be sent: the relay takes no more.
        self._discard()
        if not self._closeSent:
            self._sendClose()
        self.connection.channelEnded(self)
        self._stop(Failure(error.ConnectionDone("the relay closed the channel")))

    def windowAdjusted(self, amount: int) -> None:
        self.remoteWindow += amount
        if self._queued:
            self.connection.markSendable(self)

    @property
    def sendable(self) -> bool:
        return bool(self._queued) and self.remoteWindow > 0 and not self._closeSent

    def take(self, limit: int, into: list[tuple[int, bytes | memoryview]]) -> int:
        """
        Append queued data to C{into}, cut to packets as the relay's window
        and maximum packet size allow: one packet at least, then more while
        under C{limit} bytes (only while L{sendable}).  Returns the bytes taken.
        """
        queue = self._queue
        assert queue is not None
        maxPacket = self.remoteMaxPacket
        budget = min(self.remoteWindow, max(limit, 1))
        remote = self.remoteId
        taken = 0
        while queue and taken < budget:
            size = min(maxPacket, self.remoteWindow - taken)
            head = queue[0]
            if len(head) <= size:
                queue.popleft()
                piece: bytes | memoryview = head
            else:
                view = head if isinstance(head, memoryview) else memoryview(head)
                piece = view[:size]
                queue[0] = view[size:]
            into.append((remote, piece))
            taken += len(piece)
        if not queue:
            self._queue = None
        self._queued -= taken
        self.remoteWindow -= taken
        self.sent += taken
        self.connection.queued(self, -taken)
        return taken

    def packetsSent(self) -> None:
        """
        Called after the packets L{take} gave were written: now EOF or
        close may follow them, and the producer may resume.
        """
        if self._queued:
            self._maybeResumeProducer()
            return
        if self._waiters:
            waiters, self._waiters = self._waiters, None
            for waiter in waiters:
                waiter.callback(None)
        if self._closeAfterDrain:
            self._closeAfterDrain = False
            self._sendEOF()
            self._sendClose()
        elif self._eofAfterDrain:
            self._eofAfterDrain = False
            self._sendEOF()
        self._maybeResumeProducer()

    def connectionLost(self, reason: Failure) -> None:
        """
        The relay connection ended: so does the channel.
        """
        self._discard()
        self._stop(reason)

    def congestionChanged(self) -> None:
        """
        The connection's total queue crossed its cap one way or the other.
        """
        self._maybePauseProducer()
        self._maybeResumeProducer()

    # Internals.

    def _maybePauseProducer(self) -> None:
        if (
            self.producer is not None
            and not self._producerPaused
            and (self._queued > HIGH_WATER or (self._queued >= CONGESTED_WATER and self.connection.congested))
        ):
            self._producerPaused = True
            self.producer.pauseProducing()

    def _maybeResumeProducer(self) -> None:
        if (
            self.producer is not None
            and self._producerPaused
            and self._queued <= LOW_WATER
            and (self._queued < CONGESTED_WATER or not self.connection.congested)
        ):
            self._producerPaused = False
            self.producer.resumeProducing()

    def _discard(self) -> None:
        if self._queued:
            self.connection.queued(self, -self._queued)
        self._queue = None
        self._queued = 0
        self._inbox = None
        self._eofAfterDrain = self._closeAfterDrain = False

    def _sendEOF(self) -> None:
        if not self._eofSent and not self._closeSent:
            self._eofSent = True
            self.connection.sendEOF(self)

    def _sendClose(self) -> None:
        """
        Our CLOSE: the stream is done with the channel.  The channel number
        stays taken (and counts against the stream limit) until the relay's
        CLOSE comes back.
        """
        if not self._closeSent:
            self._closeSent = True
            self.connection.sendClose(self)
            self._stop(Failure(error.ConnectionDone("channel closed")))

    def _stop(self, reason: Failure) -> None:
        """
        Tell the stream the channel is gone, once.
        """
        if self._ended:
            return
        self._ended = True
        if self._waiters:
            waiters, self._waiters = self._waiters, None
            for waiter in waiters:
                waiter.callback(None)
        protocol, self.protocol = self.protocol, None
        self.producer = None
        if protocol is not None:
            protocol.connectionLost(reason)

    @property
    def eofSeen(self) -> bool:
        """
        The relay sent EOF.
        """
        return self._eofReceived

    @property
    def closeSeen(self) -> bool:
        """
        The relay sent CLOSE.
        """
        return self._closeReceived

    @property
    def closeSent(self) -> bool:
        """
        We sent CLOSE.
        """
        return self._closeSent

    @property
    def closed(self) -> bool:
        """
        Both sides sent CLOSE: the channel number may be reused.
        """
        return self._closeSent and self._closeReceived
