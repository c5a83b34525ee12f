# -*- test-case-name: tests.unit.test_stream -*-
"""
The splice: a stream's channel joined to its destination's TCP connection,
once the SOCKS handshake succeeded.  It owns back-pressure, half-close, the
idle and half-close timers, and letting go.

Back-pressure is Twisted's producer/consumer pairing, both ways:
  - the destination's transport is the consumer of the channel: while its
    buffer is full the channel holds the relay's window;
  - the channel is the consumer of the destination (through this splice):
    while too much waits for the relay, the destination is not read.
Half-close maps SSH EOF to TCP write shutdown and back.  However a stream
ends, both sides are closed, and whatever does not flush within
L{FLUSH_DEADLINE} seconds is aborted: descriptors and buffers always go.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import interfaces, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import _twisted
from .budget import Budget
from .results import StreamRecord, StreamResult
from .tunnel.interfaces import IStreamTransport, Payload

__all__ = [
    "FIRST_READ",
    "FLUSH_DEADLINE",
    "PAUSED_READ",
    "READ_SIZE",
    "ReadSizer",
    "Splice",
    "SpliceSettings",
    "TargetProtocol",
]

#: The most read from a destination at a time: a reactor turn and a system
#: call cost about as much as sealing 64 KiB, so bulk is read (and sent) in
#: large pieces.
READ_SIZE = 256 * 1024
#: The least, and the first read's size (see L{ReadSizer}).
FIRST_READ = 16 * 1024
#: ... and while the relay cannot take more.  Twisted still reads a paused
#: destination whose readiness came in the same poll (it dispatches the
#: whole batch): keep such a late read small, or a thousand of them fill
#: memory.  (The same attribute is the destination's write high-water mark:
#: while it is not read, it also holds the channel's window sooner.)
PAUSED_READ = 4096
#: Seconds a closing side may take to flush before it is aborted.
FLUSH_DEADLINE = 5.0

_log = Logger(namespace="incident_connector.stream")


class ReadSizer:
    """
    How much the next read from a destination asks for.

    C{recv(n)} allocates n bytes before it knows how many arrive.  A burst of
    streams whose destinations all answer in the same reactor turn is read
    before the relay's congestion pauses any of them, one read each: at
    256 KiB apiece, a thousand answers of 64 KiB once queued 20 MB against
    a cap of 8 MiB.  So a destination is read in L{FIRST_READ} pieces until a read
    fills one; then four times larger, up to L{READ_SIZE}; and half the size
    again after two reads in a row that used under a quarter of theirs
    (Netty's adaptive receive buffer, simplified).  Bulk reaches
    L{READ_SIZE} within two reads.

    The same C{bufferSize} is Twisted's write high-water mark for the
    destination, so one that only listens holds its channel's window once
    L{FIRST_READ} (not 256 KiB) wait in user space; its kernel buffer
    still takes what it can first.

    @ivar size: bytes the next read asks for.
    """

    __slots__ = ("_small", "size")

    def __init__(self) -> None:
        self.size = FIRST_READ
        self._small = 0

    def got(self, count: int) -> bool:
        """
        A read of L{size} bytes brought C{count}; returns whether L{size} changed.
        """
        size = self.size
        if count >= size:
            self._small = 0
            self.size = min(size * 4, READ_SIZE)
        elif count < size // 4 and size > FIRST_READ:
            self._small += 1
            if self._small == 2:
                self._small = 0
                self.size = max(size // 2, FIRST_READ)
        else:
            self._small = 0
        return self.size != size


class SpliceSettings:
    """
    What every splice shares.

    @ivar clock: keeps time.
    @ivar idleTimeout: seconds without a byte either way before closing; 0 is never.
    @ivar halfCloseTimeout: seconds without a byte after either side's EOF
        before closing; 0 is never.
    @ivar budget: bytes buffered towards destinations, over every stream.
    """

    def __init__(self, clock: Any, idleTimeout: float, halfCloseTimeout: float, budget: Budget) -> None:
        self.clock = clock
        self.idleTimeout = idleTimeout
        self.halfCloseTimeout = halfCloseTimeout
        self.budget = budget


@implementer(interfaces.IHalfCloseableProtocol)
class TargetProtocol(protocol.Protocol):
    """
    The destination side of a stream.

    @ivar splice: the splice it feeds, once the stream is spliced.
    """

    splice: Splice | None = None

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.setTcpNoDelay(True)

    def dataReceived(self, data: bytes) -> None:
        if self.splice is not None:
            self.splice.fromDestination(data)

    def readConnectionLost(self) -> None:
        if self.splice is not None:
            self.splice.destinationEOF()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.splice is not None:
            self.splice.destinationLost()


@implementer(interfaces.IPushProducer)
class Splice:
    """
    One spliced stream; also the producer feeding its channel.

    @ivar channel: the stream's channel.
    @ivar tcp: the destination's TCP transport.
    @ivar record: counts bytes into the stream's record.
    @ivar onEnd: told how the stream ended, once.
    """

    __slots__ = (
        "_channelEOF",
        "_channelGone",
        "_charged",
        "_deadline",
        "_destinationEOF",
        "_destinationGone",
        "_ending",
        "_lastActivity",
        "_paused",
        "_reads",
        "_timer",
        "channel",
        "onEnd",
        "record",
        "settings",
        "tcp",
    )

    def __init__(
        self,
        channel: IStreamTransport,
        target: TargetProtocol,
        settings: SpliceSettings,
        record: StreamRecord,
        onEnd: Callable[[StreamResult], None],
    ) -> None:
        self.channel = channel
        tcp: Any = target.transport
        self.tcp = tcp
        self.settings = settings
        self.record = record
        self.onEnd = onEnd
        self._channelEOF = self._destinationEOF = False
        self._channelGone = self._destinationGone = False
        self._ending = False
        self._charged = 0
        self._deadline: Any = None
        self._timer: Any = None
        self._lastActivity = 0.0
        self._paused = False
        self._reads = ReadSizer()
        target.splice = self
        _twisted.setReadSize(self.tcp, self._reads.size)
        self.tcp.registerProducer(channel, True)
        channel.registerProducer(self, True)
        if settings.idleTimeout > 0:
            self._lastActivity = settings.clock.seconds()
            # One delayed call per stream, moved at most once per period
            # (activity only updates a timestamp), so the reactor's own timers
            # suffice even for thousands of streams: txaio's batched timers,
            # the part of txaio that could earn a place here, would not.
            self._timer = settings.clock.callLater(settings.idleTimeout, self._checkIdle)

    @property
    def _tracksActivity(self) -> bool:
        # Read the clock per chunk only when a timer needs it.
        return self._timer is not None

    # Channel to destination.

    def fromChannel(self, data: Payload) -> None:
        self.record.up += len(data)
        if self._tracksActivity:
            self._lastActivity = self.settings.clock.seconds()
        _twisted.sendNow(self.tcp, (data,))
        self._charge()

    def fromChannelSequence(self, pieces: Sequence[Payload]) -> None:
        self.record.up += sum(map(len, pieces))
        if self._tracksActivity:
            self._lastActivity = self.settings.clock.seconds()
        _twisted.sendNow(self.tcp, pieces)
        self._charge()

    def channelEOF(self) -> None:
        """
        The client will send no more: shut the destination's write side once
        what it buffers is written.
        """
        self._channelEOF = True
        if self._destinationGone or self._ending:
            # Closed or closing already; a closed connection's
            # loseWriteConnection would register fd -1 with the reactor.
            return
        # A transport whose buffer drains while its streaming producer is
        # paused resumes the producer *instead of* finishing a pending
        # half-close (abstract.FileDescriptor.doWrite): unregister first.
        self.tcp.unregisterProducer()
        self.tcp.loseWriteConnection()
        self._halfClosed()

    def channelLost(self, relayLost: bool) -> None:
        """
        The channel is gone: we closed it, the relay closed it, or the relay
        connection ended.
        """
        self._channelGone = True
        if self._ending:
            self._cancelDeadlineIfDone()
        else:
            self._end(StreamResult.RELAY_LOST if relayLost else StreamResult.OK)

    # Destination to channel.

    def fromDestination(self, data: bytes) -> None:
        self.record.down += len(data)
        # A paused destination's late reads are PAUSED_READ, not a measure.
        if not self._paused and self._reads.got(len(data)):
            _twisted.setReadSize(self.tcp, self._reads.size)
        if self._tracksActivity:
            self._lastActivity = self.settings.clock.seconds()
        self.channel.write(data)

    def destinationEOF(self) -> None:
        """
        The destination will send no more: EOF to the client after what is queued.
        """
        self._destinationEOF = True
        self.channel.loseWriteConnection()
        self._halfClosed()

    def destinationLost(self) -> None:
        self._destinationGone = True
        self._uncharge()
        if self._ending:
            self._cancelDeadlineIfDone()
            return
        # What the destination sent still goes out, then EOF and close.
        self.channel.unregisterProducer()
        self.channel.loseConnection()
        self._destinationEOF = True
        self._halfClosed()

    # IPushProducer, for the channel: the relay cannot take more.

    def pauseProducing(self) -> None:
        self._paused = True
        self.tcp.pauseProducing()
        _twisted.setReadSize(self.tcp, PAUSED_READ)

    def resumeProducing(self) -> None:
        self._paused = False
        _twisted.setReadSize(self.tcp, self._reads.size)
        self.tcp.resumeProducing()

    def stopProducing(self) -> None:
        pass

    # Timers.

    def _halfClosed(self) -> None:
        """
        One side sent EOF: the other has --half-close-timeout seconds of
        silence left (and both EOFs end the stream).
        """
        if self._channelEOF and self._destinationEOF and not self._destinationGone:
            self.tcp.loseConnection()
        timeout = self.settings.halfCloseTimeout
        if timeout > 0 and not self._ending:
            self._lastActivity = self.settings.clock.seconds()
            if self._timer is None:
                self._timer = self.settings.clock.callLater(timeout, self._checkIdle)
            elif self._timer.getTime() > self._lastActivity + timeout:
                # The idle timer is due later than the half-close deadline.
                self._timer.reset(timeout)

    def _checkIdle(self) -> None:
        self._timer = None
        if self._ending:
            return
        settings = self.settings
        halfClosed = self._channelEOF or self._destinationEOF
        timeouts = [t for t in (settings.idleTimeout, settings.halfCloseTimeout if halfClosed else 0) if t > 0]
        if not timeouts:
            return
        timeout = min(timeouts)
        idle = settings.clock.seconds() - self._lastActivity
        if idle >= timeout:
            halfCloseOnly = halfClosed and timeout == settings.halfCloseTimeout and timeout != settings.idleTimeout
            _log.info(
                "stream {destination} {what} for {idle:.0f} s: closing",
                destination=self.record.requested,
                what="half-closed and silent" if halfCloseOnly else "idle",
                idle=idle,
            )
            self._end(StreamResult.HALF_CLOSE_TIMEOUT if halfCloseOnly else StreamResult.IDLE)
        else:
            self._timer = settings.clock.callLater(timeout - idle, self._checkIdle)

    # Letting go.

    def end(self, result: StreamResult) -> None:
        """
        End the stream now (drain expiry, shutdown): close both sides.
        """
        self._end(result)

    def _end(self, result: StreamResult) -> None:
        if self._ending:
            return
        self._ending = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.onEnd(result)
        self.channel.unregisterProducer()
        if not self._channelGone:
            self.channel.loseConnection()
        if not self._destinationGone:
            self.tcp.unregisterProducer()
            self.tcp.loseConnection()
        if not (self._channelGone and self._destinationGone):
            self._deadline = self.settings.clock.callLater(FLUSH_DEADLINE, self._abort)

    def _abort(self) -> None:
        """
        The flush deadline passed: whatever is still open goes now.
        """
        self._deadline = None
        if not self._channelGone:
            self.channel.abortConnection()
        if not self._destinationGone:
            self.tcp.abortConnection()

    def _cancelDeadlineIfDone(self) -> None:
        if self._channelGone and self._destinationGone and self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    # Bytes buffered towards the destination, for the global budget.

    def _charge(self) -> None:
        pending = _twisted.pendingBytes(self.tcp)
        if pending or self._charged:
            self.settings.budget.update(self, pending)
            self._charged = pending

    def _uncharge(self) -> None:
        if self._charged:
            self.settings.budget.remove(self)
            self._charged = 0

    def buffered(self) -> int:
        """
        Bytes the destination's transport still holds (the budget recounts).
        """
        if self._destinationGone:
            return 0
        self._charged = _twisted.pendingBytes(self.tcp)
        return self._charged
