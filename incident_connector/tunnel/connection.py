# -*- test-case-name: tests.test_tunnel -*-
"""
The C{ssh-connection} service on the relay connection: asks for the remote
forward, hands each C{forwarded-tcpip} channel to a stream, keeps the
connection provably alive, and drains it on shutdown.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

from twisted.conch.error import ConchError
from twisted.conch.ssh import common, connection, forwarding
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.transport import DISCONNECT_PROTOCOL_ERROR
from twisted.internet import defer, task
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..metrics import ConnectorMetrics
from .transport import TunnelError

if TYPE_CHECKING:
    from ..stream import ForwardedStream
    from .transport import RelayTransport

__all__ = ["RelayConnection"]

#: The bind address we ask the relay to listen on; never empty (that means every interface).
BIND_HOST = b"localhost"

StreamFactory = Callable[[int, int, bytes], SSHChannel]


@implementer(IPushProducer)
class RelayConnection(connection.SSHConnection):
    """
    The multiplexer over one authenticated relay connection; also the
    producer feeding the relay's TCP connection, so that streams stop reading
    from their destinations while it cannot send (memory stays bounded by
    the send buffer, not by every stream's window).

    @ivar makeStream: builds the channel for one forwarded stream from the
        peer's window size, max packet size and open data.
    @ivar clock: schedules keepalives and the drain deadline.
    @ivar maxStreams: channels open at once past which new ones are refused.
    @ivar keepaliveInterval: seconds between keepalives; 0 disables them.
    @ivar keepaliveCount: unanswered keepalives in a row that end the connection.
    @ivar label: names this connection in logs when there are several.
    @ivar allocatedPort: the port the relay listens on for us, once granted.
    @ivar draining: no new stream is accepted (shutdown in progress).
    @ivar sendBufferFull: the relay connection buffers more than it should:
        streams do not read from their destinations.
    @ivar gathered: while the transport works through one read, the channel
        data each stream got, to write to its destination once at the end
        (one system call per stream per read, not one per packet).
    """

    transport: RelayTransport
    log = Logger()

    def __init__(
        self,
        makeStream: StreamFactory,
        clock: IReactorTime,
        metrics: ConnectorMetrics,
        maxStreams: int = 1024,
        keepaliveInterval: float = 15.0,
        keepaliveCount: int = 3,
        label: str = "",
    ) -> None:
        super().__init__()
        # Conch narrates every channel at info through _log: file that under its own namespace.
        self._log = Logger(namespace="twisted.conch.ssh.connection", source=self)
        self.makeStream = makeStream
        self.clock = clock
        self.metrics = metrics
        self.maxStreams = maxStreams
        self.keepaliveInterval = keepaliveInterval
        self.keepaliveCount = keepaliveCount
        self.label = label
        self.allocatedPort: int | None = None
        self.draining = False
        self.sendBufferFull = False
        self.gathered: dict[ForwardedStream, list[bytes]] | None = None
        self._missedKeepalives = 0
        self._keepalive: task.LoopingCall | None = None
        self._drained: defer.Deferred[None] | None = None

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.transport.connection = self
        consumer = self.transport.transport
        if IConsumer.providedBy(consumer):
            cast(IConsumer, consumer).registerProducer(self, True)
        request = self.sendGlobalRequest(
            b"tcpip-forward", forwarding.packGlobal_tcpip_forward((BIND_HOST, 0)), wantReply=True
        )
        request.addCallbacks(self._forwardGranted, self._forwardRefused)
        if self.keepaliveInterval > 0:
            self._keepalive = task.LoopingCall(self._sendKeepalive)
            self._keepalive.clock = self.clock
            self._keepalive.start(self.keepaliveInterval, now=False)

    def serviceStopped(self) -> None:
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        super().serviceStopped()
        self._fireDrained()

    # IPushProducer, for the relay's TCP connection.

    def pauseProducing(self) -> None:
        self.sendBufferFull = True
        self._updateReading()

    def resumeProducing(self) -> None:
        self.sendBufferFull = False
        self._updateReading()

    def stopProducing(self) -> None:
        pass

    def startGathering(self) -> None:
        """
        The transport starts on one read: gather channel data until L{deliverGathered}.
        """
        self.gathered = {}

    def deliverGathered(self) -> None:
        pending = self.gathered
        self.gathered = None
        if pending:
            for stream, pieces in pending.items():
                stream.deliver(pieces)

    def _updateReading(self) -> None:
        for channel in list(self.channels.values()):
            update = getattr(channel, "updateReading", None)
            if update is not None:
                update()

    def _forwardGranted(self, data: bytes) -> None:
        (port,) = struct.unpack(">L", data[:4])
        self.allocatedPort = port
        self.log.info(
            "Allocated port {port} for remote forward to socks{on}",
            port=port,
            on=f" (connection {self.label})" if self.label else "",
        )
        self.transport.forwardGranted(port)

    def _forwardRefused(self, reason: Failure) -> None:
        if self.transport.ready.called:
            return
        self.transport.fail(
            TunnelError(
                "the relay refused the remote forward (tcpip-forward); "
                "on OpenSSH check AllowTcpForwarding and PermitListen",
                "forward_refused",
            )
        )
        self.transport.loseConnection()

    def _sendKeepalive(self) -> None:
        if self._missedKeepalives >= self.keepaliveCount:
            self.log.warn(
                "relay did not answer {count} keepalives in {seconds:.0f} s: dropping the connection",
                count=self._missedKeepalives,
                seconds=self._missedKeepalives * self.keepaliveInterval,
            )
            if self._keepalive is not None and self._keepalive.running:
                self._keepalive.stop()
            self.transport.fail(TunnelError("relay stopped answering keepalives", "keepalive_timeout"))
            # A frozen peer never drains our send buffer: don't wait for it.
            cast(ITCPTransport, self.transport.transport).abortConnection()
            return
        self._missedKeepalives += 1
        sent = self.clock.seconds()

        def answered(_: object) -> None:
            # Success or REQUEST_FAILURE alike prove the relay is alive.
            self._missedKeepalives = 0
            self.metrics.keepaliveSeconds.observe(self.clock.seconds() - sent)

        def stopped(reason: Failure) -> None:
            reason.trap(ConchError)
            if cast(ConchError, reason.value).value != "Connection stopped.":
                answered(None)

        request = self.sendGlobalRequest(b"keepalive@openssh.com", b"", wantReply=True)
        request.addCallbacks(answered, stopped)

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        """
        Refuse a stream the connector cannot take without Conch's traceback
        (it logs every refusal raised from C{getChannel} as a failure).
        """
        refusal = self._refusal()
        if refusal is None:
            return super().ssh_CHANNEL_OPEN(packet)
        code, text, result = refusal
        _channelType, rest = common.getNS(packet)
        (senderChannel,) = struct.unpack(">L", rest[:4])
        self.metrics.streams.labels(result=result).inc()
        self.log.warn("refused a stream: {text}", text=text)
        self.transport.sendPacket(
            connection.MSG_CHANNEL_OPEN_FAILURE,
            struct.pack(">2L", senderChannel, code) + common.NS(text.encode()) + common.NS(b""),
        )

    def _refusal(self) -> tuple[int, str, str] | None:
        if self.draining:
            return connection.OPEN_ADMINISTRATIVELY_PROHIBITED, "connector is shutting down", "draining"
        if len(self.channels) >= self.maxStreams:
            return (
                connection.OPEN_RESOURCE_SHORTAGE,
                f"{len(self.channels)} streams open, the --max-streams limit",
                "limit",
            )
        return None

    def channel_forwarded_tcpip(self, windowSize: int, maxPacket: int, data: bytes) -> SSHChannel:
        return self.makeStream(windowSize, maxPacket, data)

    def ssh_CHANNEL_DATA(self, packet: bytes) -> None:
        localChannel, length = struct.unpack(">2L", packet[:8])
        if len(packet) - 8 < length:
            self.transport.sendDisconnect(DISCONNECT_PROTOCOL_ERROR, b"channel data longer than its packet")
            return
        self.channelDataReceived(localChannel, packet[8 : 8 + length])

    def channelDataReceived(self, localChannel: int, data: bytes) -> None:
        """
        Conch's C{ssh_CHANNEL_DATA} once the transport has parsed the packet
        (it calls this directly for AEAD packets, saving two copies).
        """
        channel = self.channels.get(localChannel)
        if channel is None:
            self.transport.sendDisconnect(DISCONNECT_PROTOCOL_ERROR, b"data for an unknown channel")
            return
        length = len(data)
        if length > channel.localWindowLeft or length > channel.localMaxPacket:
            self._log.error("too much data")
            self.sendClose(channel)
            return
        channel.localWindowLeft -= length
        if channel.localWindowLeft < channel.localWindowSize // 2:
            self.adjustWindow(channel, channel.localWindowSize - channel.localWindowLeft)
        channel.dataReceived(data)

    def sendData(self, channel: SSHChannel, data: bytes) -> None:
        self.sendPackets(channel, [data])

    def sendPackets(self, channel: SSHChannel, packets: Sequence[bytes | memoryview]) -> None:
        """
        Send channel data already cut to the relay's max packet size, in one write.
        """
        if channel.localClosed:
            return
        self.transport.sendChannelData(self.channelsToRemoteChannel[channel], packets)

    def adjustWindow(self, channel: SSHChannel, bytesToAdd: int) -> None:
        """
        Conch re-opens the window on every packet; hold it shut while the
        stream's destination is not reading, so the relay stops sending and
        memory per stream stays bounded by the window.
        """
        if getattr(channel, "windowHeld", False):
            return
        super().adjustWindow(channel, bytesToAdd)

    def channelClosed(self, channel: SSHChannel) -> None:
        super().channelClosed(channel)
        if self.draining and not self.channels:
            self._fireDrained()

    def drain(self, gracePeriod: float) -> defer.Deferred[None]:
        """
        Stop taking streams, cancel the forward, and fire once every open
        stream ended or C{gracePeriod} seconds passed.
        """
        self.draining = True
        if self.allocatedPort is not None:
            cancel = self.sendGlobalRequest(
                b"cancel-tcpip-forward",
                forwarding.packGlobal_tcpip_forward((BIND_HOST, self.allocatedPort)),
                wantReply=True,
            )
            cancel.addErrback(lambda _: None)
        if self._drained is None:
            self._drained = defer.Deferred()
            if self.channels:
                self.log.info(
                    "draining {count} open streams for up to {grace} s", count=len(self.channels), grace=gracePeriod
                )
                deadline = self.clock.callLater(gracePeriod, self._fireDrained)

                def cancelDeadline(result: None) -> None:
                    if deadline.active():
                        deadline.cancel()
                    return result

                self._drained.addBoth(cancelDeadline)
            else:
                self._fireDrained()
        return self._drained

    def _fireDrained(self) -> None:
        if self._drained is not None and not self._drained.called:
            self._drained.callback(None)
