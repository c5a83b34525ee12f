# -*- test-case-name: tests.test_stream -*-
"""
One forwarded stream: the SOCKS handshake on a C{forwarded-tcpip} channel, the
allowlist decision, the dial, and then the splice between the channel and the
destination's TCP connection.

Back-pressure both ways keeps memory per stream bounded by the SSH windows:
  - the destination not reading: its transport pauses us (we are its
    producer) and we hold back the channel's window adjustments;
  - the relay's window shut: Conch calls C{stopWriting} and we pause reading
    from the destination until C{startWriting};
  - the relay connection's send buffer full (shared by every stream): the
    connection pauses reading from every destination until it drains.
Half-close maps SSH EOF to TCP write shutdown and back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from twisted.conch.ssh.channel import SSHChannel
from twisted.internet import defer, interfaces, protocol, tcp
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import writethrough
from .allowlist import Allowlist, InvalidDestination, Verdict, normalize
from .dial import classify, dial
from .metrics import ConnectorMetrics
from .socks import ConnectRequest, MethodSelected, Reply, SOCKSError, SOCKSServerParser

if TYPE_CHECKING:
    from .tunnel.connection import RelayConnection

__all__ = ["ForwardedStream", "StreamSettings"]

#: Our receive window per stream: large enough to keep a loopback relay busy.
LOCAL_WINDOW = 2 * 1024 * 1024
#: OpenSSH's own channel packet size; sshd sends no larger packets when offered more.
LOCAL_MAX_PACKET = 32768
#: Bytes read from a destination at a time: a reactor turn and a system call
#: cost about as much as sealing 64 KiB, so read (and send) in larger pieces.
READ_SIZE = 256 * 1024
#: ... and while the relay cannot take more (see L{ForwardedStream.updateReading}).
PAUSED_READ = 4096


@dataclass
class StreamSettings:
    """
    What every stream of a connector shares.

    @ivar reactor: dials destinations and keeps time.
    @ivar allowlist: which destinations may be reached.
    @ivar metrics: where streams are counted.
    @ivar connectTimeout: seconds to resolve and connect to a destination.
    @ivar handshakeTimeout: seconds from channel open to a complete request.
    @ivar idleTimeout: seconds without a byte either way before closing; 0 is never.
    """

    reactor: Any
    allowlist: Allowlist
    metrics: ConnectorMetrics
    connectTimeout: float = 10.0
    handshakeTimeout: float = 10.0
    idleTimeout: float = 0.0


class _Phase(enum.Enum):
    HANDSHAKE = "handshake"
    DIALING = "dialing"
    RELAYING = "relaying"
    CLOSING = "closing"


def formatDestination(host: str, port: int) -> str:
    """
    C{host:port} for logs; hostile bytes in the host are escaped, never written raw.
    """
    shown = host if host.isprintable() and len(host) <= 255 else repr(host[:255])
    return f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}"


@implementer(interfaces.IPushProducer)
class ForwardedStream(SSHChannel):
    """
    The channel side of a stream; also the producer feeding the destination.

    @ivar settings: the connector-wide L{StreamSettings}.
    @ivar parser: the SOCKS handshake state machine.
    @ivar target: the destination's protocol once connected.
    @ivar windowHeld: read by L{RelayConnection.adjustWindow}: while true the
        relay gets no more window, because the destination is not keeping up
        or is not connected yet.
    @ivar destination: C{host:port} as requested, for the log line.
    @ivar result: how the stream ended, a C{streams_total} label.
    @ivar bytesUp: payload bytes from the SOCKS client to the destination.
    @ivar bytesDown: payload bytes from the destination to the SOCKS client.
    """

    name = b"forwarded-tcpip"
    conn: RelayConnection
    log = Logger()
    # Conch narrates every channel at info: file that under its own namespace.
    _log = Logger(namespace="twisted.conch.ssh.channel")

    # Set on some paths only, so they default here: with Conch's attributes
    # an instance stays within the 30 that CPython's shared-key instance
    # dictionaries hold (about 1.3 KB less per stream than a full dict).
    result: str | None = None
    _clientEOF = False
    _eofPending = False
    _dialing: defer.Deferred[Any] | None = None
    _lastActivity = 0.0

    def __init__(self, settings: StreamSettings, **kw: Any) -> None:
        super().__init__(localWindow=LOCAL_WINDOW, localMaxPacket=LOCAL_MAX_PACKET, **kw)
        self.settings = settings
        self.parser = SOCKSServerParser()
        self.target: TargetProtocol | None = None
        self.windowHeld = False
        self.destination = "-"
        self.bytesUp = 0
        self.bytesDown = 0
        self._phase = _Phase.HANDSHAKE
        self._pending: list[bytes] = []
        self._timer: IDelayedCall | None = None
        self._opened = 0.0

    @property
    def clock(self) -> Any:
        return self.settings.reactor

    @property
    def _tracksIdle(self) -> bool:
        # Only read the clock per chunk when an idle timeout needs it.
        return self.settings.idleTimeout > 0

    # Channel events.

    def channelOpen(self, specificData: bytes) -> None:
        self._opened = self.clock.seconds()
        self.settings.metrics.streamsActive.inc()
        self._timer = self.clock.callLater(self.settings.handshakeTimeout, self._handshakeTimedOut)

    def dataReceived(self, data: bytes) -> None:
        if self._phase is _Phase.RELAYING:
            assert self.target is not None
            self.bytesUp += len(data)
            if self._tracksIdle:
                self._lastActivity = self.clock.seconds()
            gathered = self.conn.gathered
            if gathered is None:
                writethrough.write(self.target.tcp, data)
            elif self in gathered:
                gathered[self].append(data)
            else:
                gathered[self] = [data]
        elif self._phase is _Phase.HANDSHAKE:
            self._handshake(data)
        elif self._phase is _Phase.DIALING:
            # Bounded: the window stays held until the destination accepts.
            self._pending.append(data)

    def deliver(self, pieces: list[bytes]) -> None:
        """
        Write channel data gathered over one read from the relay, at once.
        """
        if self.target is not None:
            writethrough.writeSequence(self.target.tcp, pieces)

    def _deliverGathered(self) -> None:
        gathered = self.conn.gathered
        if gathered:
            pieces = gathered.pop(self, None)
            if pieces:
                self.deliver(pieces)

    def eofReceived(self) -> None:
        self._deliverGathered()
        self._clientEOF = True
        if self._phase is _Phase.RELAYING:
            assert self.target is not None
            self.target.shutdownWrite()
        elif self._phase is _Phase.HANDSHAKE:
            self._finish("bad_request")

    def closeReceived(self) -> None:
        self._deliverGathered()
        # Whatever we still buffer can never be delivered: the relay will not
        # open its window again.  Close now instead of waiting for it.
        self.buf = b""
        self.conn.sendClose(self)

    def addWindowBytes(self, data: int) -> None:
        super().addWindowBytes(data)
        if self._eofPending and not self.buf:
            self._eofPending = False
            self.conn.sendEOF(self)

    def write(self, data: bytes) -> None:
        """
        Conch's C{SSHChannel.write}, but packets are views of C{data}, not
        copies (the transport copies each once, into its plaintext), and
        they go out in one write.
        """
        if self.buf:
            self.buf += data
            return
        top = len(data)
        if top > self.remoteWindowLeft:
            data, self.buf = data[: self.remoteWindowLeft], data[self.remoteWindowLeft :]
            self.areWriting = 0
            self.stopWriting()
            top = self.remoteWindowLeft
        rmp = self.remoteMaxPacket
        if not top:
            pass
        elif top <= rmp:
            self.conn.sendPackets(self, [data])
        else:
            view = memoryview(data)
            self.conn.sendPackets(self, [view[offset : offset + rmp] for offset in range(0, top, rmp)])
        self.remoteWindowLeft -= top
        if self.closing and not self.buf:
            self.loseConnection()

    # Conch clears or sets areWriting, then calls these, as the relay's
    # window on this channel shuts or opens.

    def stopWriting(self) -> None:
        self.updateReading()

    def startWriting(self) -> None:
        self.updateReading()

    def updateReading(self) -> None:
        """
        Read from the destination only while the relay takes more: our window
        on the channel is open and the connection's send buffer is not full.
        """
        target = self.target
        if target is None or self._phase is not _Phase.RELAYING:
            return
        tcp = target.tcp
        if not self.areWriting or self.conn.sendBufferFull:
            tcp.pauseProducing()
            # Twisted still reads a paused destination whose readiness came in
            # the same poll (it dispatches the whole batch): keep such a late
            # read small, or a thousand of them fill memory.
            tcp.bufferSize = PAUSED_READ
        else:
            tcp.bufferSize = READ_SIZE
            tcp.resumeProducing()

    def closed(self) -> None:
        self._deliverGathered()
        if self._dialing is not None and not self._dialing.called:
            self._dialing.cancel()
        if self.target is not None:
            self.target.close()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._report()

    # IPushProducer, for the destination's transport.

    def pauseProducing(self) -> None:
        self.windowHeld = True

    def resumeProducing(self) -> None:
        self.windowHeld = False
        self._reopenWindow()

    def stopProducing(self) -> None:
        pass

    # Handshake.

    def _handshake(self, data: bytes) -> None:
        try:
            events = self.parser.feed(data)
        except SOCKSError as e:
            self._finish(e.reason, e.response)
            return
        for event in events:
            if isinstance(event, MethodSelected):
                self.write(event.response)
            elif isinstance(event, ConnectRequest):
                self._request(event)

    def _handshakeTimedOut(self) -> None:
        self._timer = None
        if self._phase is _Phase.HANDSHAKE:
            self._finish("timeout")

    def _request(self, request: ConnectRequest) -> None:
        settings = self.settings
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        settings.metrics.handshakeSeconds.observe(self.clock.seconds() - self._opened)
        self.destination = formatDestination(request.host, request.port)
        try:
            destination = normalize(request.host)
        except InvalidDestination:
            self._finish("bad_request", self.parser.reply(Reply.HOST_UNREACHABLE))
            return
        verdict = settings.allowlist.check(destination, request.port)
        if verdict is Verdict.DENY:
            self._finish("denied", self.parser.reply(Reply.NOT_ALLOWED))
            return
        self._phase = _Phase.DIALING
        self.windowHeld = True
        if request.rest:
            self._pending.append(request.rest)
        started = self.clock.seconds()
        self._dialing = dial(
            settings.reactor,
            settings.allowlist,
            destination,
            verdict,
            request.port,
            _TargetFactory(self),
            settings.connectTimeout,
        )

        def connected(target: TargetProtocol) -> None:
            settings.metrics.dialSeconds.observe(self.clock.seconds() - started)
            self._connected(target)

        self._dialing.addCallbacks(connected, self._dialFailed)

    def _dialFailed(self, reason: Failure) -> None:
        self._dialing = None
        if self._phase is not _Phase.DIALING:
            return
        code, result = classify(reason)
        self.log.debug(
            "dial {destination} failed: {error}", destination=self.destination, error=reason.getErrorMessage()
        )
        self._finish(result, self.parser.reply(code))

    def _connected(self, target: TargetProtocol) -> None:
        self._dialing = None
        if self._phase is not _Phase.DIALING:
            target.tcp.loseConnection()
            return
        self.target = target
        self._phase = _Phase.RELAYING
        bound = target.tcp.getHost()
        self.write(self.parser.reply(Reply.SUCCEEDED, (bound.host, bound.port)))
        pending, self._pending = self._pending, []
        for data in pending:
            self.bytesUp += len(data)
            target.tcp.write(data)
        if self._clientEOF:
            target.shutdownWrite()
        else:
            target.tcp.registerProducer(self, True)
        self.updateReading()
        if self._tracksIdle:
            self._lastActivity = self.clock.seconds()
            # One delayed call per stream, moved at most once per timeout period
            # (activity only updates a timestamp), so the reactor's own timers
            # suffice even for thousands of streams: txaio's batched timers,
            # the one part of txaio that could earn its place here, would not.
            self._timer = self.clock.callLater(self.settings.idleTimeout, self._checkIdle)
        # Held since the request (see _request): the destination takes data now.
        self.windowHeld = False
        self._reopenWindow()

    # Splice.

    def targetDataReceived(self, data: bytes) -> None:
        self.bytesDown += len(data)
        if self._tracksIdle:
            self._lastActivity = self.clock.seconds()
        self.write(data)

    def targetEOF(self) -> None:
        """
        The destination will send no more: pass EOF on after what we buffer.
        """
        if self.buf:
            self._eofPending = True
        else:
            self.conn.sendEOF(self)

    def targetLost(self) -> None:
        if self._phase is _Phase.RELAYING:
            self._finish("ok")

    def _checkIdle(self) -> None:
        self._timer = None
        if self._phase is not _Phase.RELAYING:
            return
        idle = self.clock.seconds() - self._lastActivity
        timeout = self.settings.idleTimeout
        if idle >= timeout:
            self.log.info(
                "stream {destination} idle for {idle:.0f} s: closing", destination=self.destination, idle=idle
            )
            self._finish("idle")
            assert self.target is not None
            self.target.close()
        else:
            self._timer = self.clock.callLater(timeout - idle, self._checkIdle)

    def _reopenWindow(self) -> None:
        if self.localClosed or self.windowHeld:
            return
        if self.localWindowLeft < self.localWindowSize // 2:
            self.conn.adjustWindow(self, self.localWindowSize - self.localWindowLeft)

    def _finish(self, result: str, reply: bytes = b"") -> None:
        """
        End the stream: send C{reply} (if any) and close once it is flushed.
        """
        if self._phase is _Phase.CLOSING:
            return
        self._phase = _Phase.CLOSING
        self.result = result
        if reply:
            self.write(reply)
        self.loseConnection()

    def _report(self) -> None:
        result = self.result or ("ok" if self.target is not None else "bad_request")
        metrics = self.settings.metrics
        metrics.streamsActive.dec()
        metrics.streams.labels(result=result).inc()
        metrics.bytes.labels(direction="up").inc(self.bytesUp)
        metrics.bytes.labels(direction="down").inc(self.bytesDown)
        self.log.info(
            "stream {destination} {result}: {up} bytes up, {down} bytes down, {duration:.3f} s",
            destination=self.destination,
            result=result,
            up=self.bytesUp,
            down=self.bytesDown,
            duration=self.clock.seconds() - self._opened,
        )


@implementer(interfaces.IHalfCloseableProtocol)
class TargetProtocol(protocol.Protocol):
    """
    The destination side of a stream.

    @ivar stream: the channel this connection is spliced to.
    """

    def __init__(self, stream: ForwardedStream) -> None:
        self.stream = stream

    @property
    def tcp(self) -> tcp.Connection:
        """
        The transport, typed as what it is: a TCP connection (and producer).
        """
        return cast(tcp.Connection, self.transport)

    def connectionMade(self) -> None:
        self.tcp.setTcpNoDelay(True)

    # A TCP transport whose buffer drains while its streaming producer is
    # paused resumes the producer *instead of* finishing a pending half-close
    # or close (twisted.internet.abstract.FileDescriptor.doWrite), so the EOF
    # would never be sent.  The stream produces nothing after either, so
    # unregister it first.

    def shutdownWrite(self) -> None:
        """
        Send FIN once everything buffered is written.
        """
        self.tcp.unregisterProducer()
        self.tcp.loseWriteConnection()

    def close(self) -> None:
        """
        Close once everything buffered is written.
        """
        self.tcp.unregisterProducer()
        self.tcp.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.stream.targetDataReceived(data)

    def readConnectionLost(self) -> None:
        self.stream.targetEOF()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.stream.targetLost()


class _TargetFactory(protocol.ClientFactory):
    noisy = False

    def __init__(self, stream: ForwardedStream) -> None:
        self.stream = stream

    def buildProtocol(self, addr: Any) -> TargetProtocol:
        return TargetProtocol(self.stream)
