# -*- test-case-name: tests.unit.test_connection -*-
"""
The C{ssh-connection} service on the relay connection (RFC 4254), as a
client that only ever receives channels: it asks for the remote forward,
turns each C{forwarded-tcpip} channel into a stream, keeps the connection
provably alive, schedules what streams send, and drains on shutdown.

Sending: control messages (window adjustments, open confirmations, EOF,
close, keepalives, request replies) go out at once; channel data waits in
its channel, unsealed, until the relay connection's user-space buffer is
nearly empty, and then goes out one packet per channel in turn, channels
that have sent less first (L{Turns}).  So a keepalive or a new stream's
reply never waits behind a bulk transfer, and a transfer that starts late
is not left behind by the ones that started first.

Everything the relay sends is checked: a malformed or unexpected message
raises L{ProtocolError}, which ends the connection with one log line.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.conch.ssh.service import SSHService
from twisted.internet import defer, error
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from ..budget import Budget
from ..logs import Throttle
from ..metrics import ConnectorMetrics
from .channel import LEVEL_STEP, LEVELS, LOCAL_MAX_PACKET, LOCAL_WINDOW, ForwardedChannel
from .errors import ProtocolError, TunnelError
from .interfaces import IChannelOwner, IConnectionService, IRelayTransport, IStreamProtocol, Payload
from .window import WindowSizer
from .wire import Reader, escape, string, uint32

__all__ = ["BIND_HOST", "RelayConnection", "StreamFactory"]

#: The bind address we ask the relay to listen on; never empty (that means every interface).
BIND_HOST = b"localhost"

MSG_GLOBAL_REQUEST = 80
MSG_REQUEST_SUCCESS = 81
MSG_REQUEST_FAILURE = 82
MSG_CHANNEL_OPEN = 90
MSG_CHANNEL_OPEN_CONFIRMATION = 91
MSG_CHANNEL_OPEN_FAILURE = 92
MSG_CHANNEL_WINDOW_ADJUST = 93
MSG_CHANNEL_DATA = 94
MSG_CHANNEL_EXTENDED_DATA = 95
MSG_CHANNEL_EOF = 96
MSG_CHANNEL_CLOSE = 97
MSG_CHANNEL_REQUEST = 98
MSG_CHANNEL_SUCCESS = 99
MSG_CHANNEL_FAILURE = 100

OPEN_ADMINISTRATIVELY_PROHIBITED = 1
OPEN_UNKNOWN_CHANNEL_TYPE = 3
OPEN_RESOURCE_SHORTAGE = 4

#: Bytes queued in all channels together past which a stream stops reading
#: its destination once a read's worth of it waits (channel.CONGESTED_WATER),
#: so memory stays bounded whatever the streams do.  Under a burst of streams
#: whose answers come faster than the relay takes them, the connector holds
#: this plus about one read per stream (splice.ReadSizer keeps a new
#: stream's reads small): so it is small, eight streams' high-water marks,
#: still milliseconds of any link's worth.
CONGESTION = 2 * 1024 * 1024
#: Global requests we may have outstanding (keepalives, the forward).
MAX_PENDING_REQUESTS = 64
#: Channels past the last level of L{Turns} get at least one turn in this
#: many while others are catching up.
TOP_SHARE = 4
#: While the relay sends channel data, a round trip is timed this often
#: (one at a time), to size the windows (tunnel/window.py): a channel
#: request, not a global one, because OpenSSH's sshd answers a global
#: request only after blocking until everything it has queued for us is
#: written (serverloop.c server_input_global_request: ssh_packet_write_wait),
#: which stalls the whole session on a slow link or a busy one.
PROBE_INTERVAL = 0.5
#: A round trip during which we sent more channel data than this also
#: measured our own queue, not only the relay's: it does not move windows.
SENT_WHILE_PROBING = 64 * 1024

#: When a request was sent: the time, and the connection's bytesReceived,
#: bytesSent and the transport's re-keys then.
_Sent = tuple[float, int, int, int]

#: Given the new channel, returns the stream to run on it.
StreamFactory = Callable[[ForwardedChannel], IStreamProtocol]


class Turns:
    """
    Which channel sends its next packet: the one that has sent least, in
    steps of L{LEVEL_STEP} bytes up to L{LEVELS} of them, and among equals
    the one that has waited longest.

    Least-sent first puts a handshake or an interactive stream ahead of bulk
    transfers, and lets a transfer that started while others were running
    catch up with them over its first MiB instead of finishing last by their
    head start; past that, every channel takes plain turns.  Channels past
    the last step still get one turn in L{TOP_SHARE} while others wait: a
    steady arrival of new streams cannot starve a long transfer.

    @ivar levels: the channels waiting for a turn, by level.
    @ivar waiting: how many channels are waiting, in all levels.
    @ivar sinceTop: turns given to lower levels since the last level's last
        turn, while it had channels waiting.
    """

    def __init__(self) -> None:
        self.levels: list[deque[ForwardedChannel]] = [deque() for _ in range(LEVELS)]
        self.waiting = 0
        self.sinceTop = 0

    def add(self, channel: ForwardedChannel) -> None:
        """
        C{channel} has data to send: queue it at its level.
        """
        self.levels[min(channel.sent // LEVEL_STEP, LEVELS - 1)].append(channel)
        self.waiting += 1

    def pop(self) -> ForwardedChannel:
        """
        The next channel to serve; only while L{waiting}.
        """
        top = self.levels[-1]
        if top and self.sinceTop >= TOP_SHARE - 1:
            queue = top
        else:
            queue = next(queue for queue in self.levels if queue)
        if queue is top:
            self.sinceTop = 0
        elif top:
            self.sinceTop += 1
        self.waiting -= 1
        return queue.popleft()

    def remove(self, channel: ForwardedChannel) -> None:
        """
        Forget C{channel}, which ended while waiting for a turn.  Its level is
        the one L{add} chose: a channel sends only once popped, so its C{sent}
        has not moved since.
        """
        try:
            self.levels[min(channel.sent // LEVEL_STEP, LEVELS - 1)].remove(channel)
        except ValueError:  # popped: being served right now
            return
        self.waiting -= 1


@implementer(IConnectionService, IChannelOwner)
class RelayConnection(SSHService):
    """
    The multiplexer over one authenticated relay connection.

    @ivar makeStream: builds the stream for a new channel.
    @ivar clock: schedules keepalives and the drain deadline.
    @ivar maxStreams: channels open at once past which new ones are refused.
    @ivar keepaliveInterval: seconds of silence from the relay after which a
        keepalive is sent; 0 disables them.
    @ivar keepaliveCount: keepalive intervals of silence that end the
        connection after the first one.
    @ivar label: names this connection in logs when there are several (C{1/3}).
    @ivar allocatedPort: the port the relay listens on for us, once granted.
    @ivar draining: no new stream is accepted (shutdown in progress).
    @ivar channels: open channels by our channel number.
    @ivar gathered: channels holding data from the read in progress.
    @ivar congested: too much is queued for the relay: streams stop reading.
    @ivar windowsHeld: too much is buffered towards destinations: no
        channel gets more window.
    @ivar windows: sizes the channels' windows to the relay's queue.
    @ivar bytesReceived: channel data bytes received from the relay, in all.
    @ivar bytesSent: channel data bytes sent to the relay, in all.
    """

    name = b"ssh-connection"
    transport: IRelayTransport  # type: ignore[assignment]
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
        budget: Budget | None = None,
    ) -> None:
        self.makeStream = makeStream
        self.budget = budget
        self.clock = clock
        self.metrics = metrics
        self.maxStreams = maxStreams
        self.keepaliveInterval = keepaliveInterval
        self.keepaliveCount = keepaliveCount
        self.label = label
        self.allocatedPort: int | None = None
        self.draining = False
        self.channels: dict[int, ForwardedChannel] = {}
        self.gathered: list[ForwardedChannel] = []
        self.congested = False
        self.windowsHeld = False
        self._gathering = False
        self._queuedTotal = 0
        self._nextId = 0
        self._turns = Turns()
        self._scheduled: set[ForwardedChannel] = set()
        self._producing = False
        self.windows = WindowSizer(LOCAL_WINDOW)
        self.bytesReceived = 0
        self.bytesSent = 0
        #: Each: the request's name, its Deferred, and when it was sent.
        self._requests: deque[tuple[bytes, defer.Deferred[bytes], _Sent]] = deque()
        #: The channel request timing a round trip: our channel number, and
        #: when it was sent.
        self._probe: tuple[int, _Sent] | None = None
        #: The channel of a probe given up when the relay closed it: one late
        #: answer there is not an unasked one.
        self._abandoned: int | None = None
        self._lastProbe = float("-inf")
        #: The open channels that received data since the last probe was sent.
        self._receivers: set[int] = set()
        self._liveness: Any = None
        self._keepaliveSent: float | None = None
        self._drained: defer.Deferred[None] | None = None
        self._stopped = False
        self._throttle = Throttle(clock, 60.0)

    def logPrefix(self) -> str:
        return f"relay {self.label}" if self.label else "relay"

    # Service life.

    def serviceStarted(self) -> None:
        if self.budget is not None:
            self.budget.subscribe(self.holdWindows)
            self.windowsHeld = self.budget.exceeded
        request = self.sendGlobalRequest(b"tcpip-forward", string(BIND_HOST) + uint32(0))
        request.addCallbacks(self._forwardGranted, self._forwardRefused)
        if self.keepaliveInterval > 0:
            self._liveness = self.clock.callLater(self.keepaliveInterval, self._checkLiveness)

    def serviceStopped(self) -> None:
        self._stopped = True
        if self.budget is not None:
            self.budget.unsubscribe(self.holdWindows)
        if self._liveness is not None and self._liveness.active():
            self._liveness.cancel()
        lost = Failure(error.ConnectionLost("the relay connection ended"))
        for channel in list(self.channels.values()):
            channel.connectionLost(lost)
        self.channels.clear()
        requests, self._requests = self._requests, deque()
        for _name, waiting, *_ in requests:
            waiting.errback(TunnelError("the relay connection ended", "lost"))
        self._fireDrained()

    # Liveness: any traffic from the relay counts.

    @property
    def quietFor(self) -> float:
        """
        Seconds since the relay last sent anything.
        """
        return self.clock.seconds() - self.transport.lastReceived

    @property
    def responsive(self) -> bool:
        """
        The relay was heard from within two keepalive intervals (always true
        with keepalives off: nothing else would tell).
        """
        return self.keepaliveInterval <= 0 or self.quietFor < 2 * self.keepaliveInterval

    def _checkLiveness(self) -> None:
        interval = self.keepaliveInterval
        quiet = self.quietFor
        if quiet >= interval * (self.keepaliveCount + 1):
            # One line, from the relay service: "connection lost after N s: ...".
            self.transport.fail(
                TunnelError(
                    f"relay did not answer {self.keepaliveCount} keepalives (silent for {quiet:.0f} s)",
                    "keepalive_timeout",
                )
            )
            # A frozen relay never reads our DISCONNECT: don't wait for it.
            self.transport.abortConnection()
            return
        if quiet >= interval:
            self._sendKeepalive()
            delay = interval
        else:
            delay = interval - quiet
        self._liveness = self.clock.callLater(delay, self._checkLiveness)

    def _sendKeepalive(self) -> None:
        if len(self._requests) >= MAX_PENDING_REQUESTS:
            # A relay that answers none while it sends other things: asking
            # again would only be refused here, and timed as a 0 s answer.
            return
        sent = self.clock.seconds()

        def answered(_: object) -> None:
            # Success or REQUEST_FAILURE alike prove the relay is alive.
            self.metrics.keepaliveSeconds.observe(self.clock.seconds() - sent)

        request = self.sendGlobalRequest(b"keepalive@openssh.com", b"")
        request.addCallbacks(answered, answered)

    # Global requests.

    def sendGlobalRequest(self, name: bytes, data: bytes) -> defer.Deferred[bytes]:
        """
        Ask the relay; fires with the reply's data on success, fails with
        L{TunnelError} on failure.  Replies come in the order asked.
        """
        waiting: defer.Deferred[bytes] = defer.Deferred()
        if len(self._requests) >= MAX_PENDING_REQUESTS:
            waiting.errback(TunnelError("too many requests unanswered", "keepalive_timeout"))
            return waiting
        self._requests.append((name, waiting, self._sent()))
        self.transport.sendPacket(MSG_GLOBAL_REQUEST, string(name) + b"\x01" + data)
        return waiting

    def _reply(self, success: bool, message: bytes) -> None:
        if not self._requests:
            raise ProtocolError(f"the relay sent {'REQUEST_SUCCESS' if success else 'REQUEST_FAILURE'} unasked")
        name, waiting, sent = self._requests.popleft()
        self._answered(sent)
        if success:
            waiting.callback(message)
        else:
            waiting.errback(TunnelError(f"the relay refused {name.decode()}", "forward_refused"))

    def _forwardGranted(self, data: bytes) -> None:
        if len(data) < 4:
            self.transport.fail(
                TunnelError(
                    "the relay granted the remote forward but did not say which port it listens on", "forward_refused"
                )
            )
            self.transport.loseConnection()
            return
        (port,) = struct.unpack(">L", data[:4])
        if not 0 < port <= 0xFFFF:
            # OpenSSH refuses the forward too ("Invalid allocated port").
            self.transport.fail(TunnelError(f"the relay granted the remote forward on port {port}", "forward_refused"))
            self.transport.loseConnection()
            return
        self.allocatedPort = port
        self.log.info("Allocated port {port} for remote forward to socks{on}", port=port, on=self._on())
        self.transport.forwardGranted(port)

    def _forwardRefused(self, reason: Failure) -> None:
        if self._stopped or self.transport.ready.called:
            return
        self.transport.fail(
            TunnelError(
                "the relay refused the remote forward (tcpip-forward); "
                "on OpenSSH check AllowTcpForwarding and PermitListen",
                "forward_refused",
            )
        )
        self.transport.loseConnection()

    # Messages from the relay.

    def packetReceived(self, messageNum: int, packet: bytes) -> None:
        handler = self._handlers.get(messageNum)
        if handler is None:
            self.transport.sendUnimplemented()
            return
        handler(self, packet)

    def ssh_GLOBAL_REQUEST(self, packet: bytes) -> None:
        reader = Reader(packet, "GLOBAL_REQUEST")
        name = reader.string()
        wantReply = reader.boolean()
        # We serve no global request (OpenSSH's client refuses them too, and
        # takes hostkeys-00@openssh.com without a reply).
        self.metrics.relayRefusals.labels(kind="global_request").inc()
        if name != b"hostkeys-00@openssh.com":
            self._note("global_request", "refused global request {name} from the relay", name=escape(name, 60))
        if wantReply:
            self.transport.sendPacket(MSG_REQUEST_FAILURE, b"")

    def ssh_REQUEST_SUCCESS(self, packet: bytes) -> None:
        self._reply(True, packet)

    def ssh_REQUEST_FAILURE(self, packet: bytes) -> None:
        self._reply(False, packet)

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        reader = Reader(packet, "CHANNEL_OPEN")
        channelType = reader.string()
        senderId = reader.uint32()
        window = reader.uint32()
        maxPacket = reader.uint32()
        if channelType != b"forwarded-tcpip":
            self._refuseOpen(
                senderId, OPEN_UNKNOWN_CHANNEL_TYPE, "unknown channel type", "channel_type", escape(channelType, 60)
            )
            return
        connectedHost = reader.string()
        connectedPort = reader.uint32()
        originHost = reader.string()
        originPort = reader.uint32()
        if maxPacket == 0:
            raise ProtocolError("the relay opened a channel with a maximum packet size of 0")
        refusal = self._refusal()
        if refusal is not None:
            self._refuseOpen(senderId, *refusal)
            return
        localId = self._allocateId()
        channel = ForwardedChannel(
            self,
            localId,
            senderId,
            window,
            maxPacket,
            (escape(originHost, 100), originPort),
            (escape(connectedHost, 100), connectedPort),
        )
        self.channels[localId] = channel
        self.transport.sendPacket(
            MSG_CHANNEL_OPEN_CONFIRMATION,
            uint32(senderId) + uint32(localId) + uint32(channel.localWindowLeft) + uint32(LOCAL_MAX_PACKET),
        )
        stream = self.makeStream(channel)
        channel.protocol = stream
        stream.makeConnection(channel)  # type: ignore[arg-type]

    def _refusal(self) -> tuple[int, str, str, str] | None:
        if self.draining:
            return OPEN_ADMINISTRATIVELY_PROHIBITED, "connector is shutting down", "draining", ""
        if len(self.channels) >= self.maxStreams:
            return OPEN_RESOURCE_SHORTAGE, "the --max-streams limit is reached", "limit", str(len(self.channels))
        return None

    def _refuseOpen(self, senderId: int, code: int, text: str, kind: str, detail: str) -> None:
        if kind in ("draining", "limit"):
            self.metrics.streams.labels(result=kind).inc()
        self.metrics.relayRefusals.labels(kind=kind).inc()
        # While draining, refusals are the plan (the relay retries elsewhere).
        level = LogLevel.info if kind == "draining" else LogLevel.warn
        self._note(kind, "refused a stream: {text}{detail}", level, text=text, detail=f" ({detail})" if detail else "")
        self.transport.sendPacket(
            MSG_CHANNEL_OPEN_FAILURE, uint32(senderId) + uint32(code) + string(text.encode()) + string(b"")
        )

    def _channel(self, reader: Reader) -> ForwardedChannel:
        localId = reader.uint32()
        channel = self.channels.get(localId)
        if channel is None:
            raise ProtocolError(f"the relay sent {reader.what} for unknown channel {localId}")
        return channel

    def ssh_CHANNEL_OPEN_CONFIRMATION(self, packet: bytes) -> None:
        raise ProtocolError("the relay confirmed a channel the connector never opened")

    def ssh_CHANNEL_OPEN_FAILURE(self, packet: bytes) -> None:
        raise ProtocolError("the relay refused a channel the connector never opened")

    def ssh_CHANNEL_WINDOW_ADJUST(self, packet: bytes) -> None:
        reader = Reader(packet, "CHANNEL_WINDOW_ADJUST")
        channel = self._channel(reader)
        amount = reader.uint32()
        if channel.remoteWindow + amount > 0xFFFFFFFF:
            raise ProtocolError(f"the relay's window adjustment overflows channel {channel.localId}")
        channel.windowAdjusted(amount)

    def channelDataReceived(self, localId: int, data: Payload) -> None:
        """
        C{SSH_MSG_CHANNEL_DATA}, parsed by the transport.
        """
        channel = self.channels.get(localId)
        if channel is None:
            raise ProtocolError(f"the relay sent data for unknown channel {localId}")
        self._received(channel, len(data))
        channel.dataReceived(data, self._gathering)

    def _received(self, channel: ForwardedChannel, length: int) -> None:
        if length > channel.localWindowLeft or length > LOCAL_MAX_PACKET:
            raise ProtocolError(f"the relay sent more than the window allows on channel {channel.localId}")
        if channel.eofSeen:
            raise ProtocolError(f"the relay sent data after EOF on channel {channel.localId}")
        channel.localWindowLeft -= length
        self.bytesReceived += length
        # A cheap bound (no window is larger); updateWindow decides.
        if channel.localWindowLeft < LOCAL_WINDOW // 2:
            channel.updateWindow()

    def ssh_CHANNEL_DATA(self, packet: bytes) -> None:
        reader = Reader(packet, "CHANNEL_DATA")
        channel = self._channel(reader)
        data = reader.string()
        self._received(channel, len(data))
        channel.dataReceived(data, self._gathering)

    def ssh_CHANNEL_EXTENDED_DATA(self, packet: bytes) -> None:
        # No extended data belongs on a forwarded TCP stream: it only uses window.
        reader = Reader(packet, "CHANNEL_EXTENDED_DATA")
        channel = self._channel(reader)
        reader.uint32()
        self._received(channel, len(reader.string()))

    def ssh_CHANNEL_EOF(self, packet: bytes) -> None:
        self._channel(Reader(packet, "CHANNEL_EOF")).eofReceived()

    def ssh_CHANNEL_CLOSE(self, packet: bytes) -> None:
        channel = self._channel(Reader(packet, "CHANNEL_CLOSE"))
        if channel.closeSeen:
            raise ProtocolError(f"the relay closed channel {channel.localId} twice")
        if self._probe is not None and self._probe[0] == channel.localId:
            # OpenSSH answers no request on a channel it has closed.
            self._probe, self._abandoned = None, channel.localId
        channel.closeReceived()

    def ssh_CHANNEL_REQUEST(self, packet: bytes) -> None:
        reader = Reader(packet, "CHANNEL_REQUEST")
        channel = self._channel(reader)
        name = reader.string()
        wantReply = reader.boolean()
        if name != b"eow@openssh.com":
            self.metrics.relayRefusals.labels(kind="channel_request").inc()
            self._note("channel_request", "refused channel request {name} from the relay", name=escape(name, 60))
        if wantReply and not channel.closeSent:
            # As OpenSSH: nothing on a channel after our CLOSE; a relay may
            # have forgotten the channel, and take the reply as a protocol error.
            self.transport.sendPacket(MSG_CHANNEL_FAILURE, uint32(channel.remoteId))

    def ssh_CHANNEL_SUCCESS(self, packet: bytes) -> None:
        # Our only channel request is the probe; any answer times it.
        localId = Reader(packet, "CHANNEL_SUCCESS").uint32()
        probe = self._probe
        if probe is not None and probe[0] == localId:
            self._probe = None
            self._answered(probe[1])
        elif localId == self._abandoned:
            self._abandoned = None
        else:
            raise ProtocolError("the relay answered a channel request the connector never made")

    ssh_CHANNEL_FAILURE = ssh_CHANNEL_SUCCESS

    _handlers: dict[int, Callable[[RelayConnection, bytes], None]] = {
        MSG_GLOBAL_REQUEST: ssh_GLOBAL_REQUEST,
        MSG_REQUEST_SUCCESS: ssh_REQUEST_SUCCESS,
        MSG_REQUEST_FAILURE: ssh_REQUEST_FAILURE,
        MSG_CHANNEL_OPEN: ssh_CHANNEL_OPEN,
        MSG_CHANNEL_OPEN_CONFIRMATION: ssh_CHANNEL_OPEN_CONFIRMATION,
        MSG_CHANNEL_OPEN_FAILURE: ssh_CHANNEL_OPEN_FAILURE,
        MSG_CHANNEL_WINDOW_ADJUST: ssh_CHANNEL_WINDOW_ADJUST,
        MSG_CHANNEL_DATA: ssh_CHANNEL_DATA,
        MSG_CHANNEL_EXTENDED_DATA: ssh_CHANNEL_EXTENDED_DATA,
        MSG_CHANNEL_EOF: ssh_CHANNEL_EOF,
        MSG_CHANNEL_CLOSE: ssh_CHANNEL_CLOSE,
        MSG_CHANNEL_REQUEST: ssh_CHANNEL_REQUEST,
        MSG_CHANNEL_SUCCESS: ssh_CHANNEL_SUCCESS,
        MSG_CHANNEL_FAILURE: ssh_CHANNEL_FAILURE,
    }

    # One read from the relay: data for a channel is delivered once at the end.

    def readStarted(self) -> None:
        self._gathering = True

    def readFinished(self) -> None:
        self._gathering = False
        gathered, self.gathered = self.gathered, []
        for channel in gathered:
            channel.deliver()
        if gathered:
            # Not a channel that ended in this read (its CLOSE came after its
            # data): only open ones count, so this stays bounded if no answer comes.
            channels = self.channels
            self._receivers.update(c.localId for c in gathered if channels.get(c.localId) is c)
            if self._probe is None:
                self._sendProbe(gathered)

    @property
    def windowSize(self) -> int:
        """
        The window a channel is given now, and topped up to.
        """
        return self.windows.current(self.clock.seconds())

    def _sendProbe(self, receiving: list[ForwardedChannel]) -> None:
        """
        Time a round trip while the relay sends channel data: a channel
        request on a channel it is sending on, whose answer queues behind
        what the relay has queued for us (tunnel/window.py).  OpenSSH,
        Dropbear, AsyncSSH and Conch refuse C{keepalive@openssh.com} on a
        C{forwarded-tcpip} channel, and a refusal times it as well.
        """
        now = self.clock.seconds()
        if 0 <= now - self._lastProbe < PROBE_INTERVAL:  # (a clock stepped back: due)
            return
        for channel in receiving:
            # A relay frees a channel once both sides sent CLOSE: ask only
            # while ours is not sent, so it still knows the number.
            if not (channel.closeSent or channel.closeSeen) and channel.localId != self._abandoned:
                break
        else:
            return
        self._lastProbe = now
        self._probe = (channel.localId, self._sent())
        self._receivers = set()
        self.transport.sendPacket(
            MSG_CHANNEL_REQUEST, uint32(channel.remoteId) + string(b"keepalive@openssh.com") + b"\x01"
        )

    def _sent(self) -> _Sent:
        return (self.clock.seconds(), self.bytesReceived, self.bytesSent, self.transport.rekeys)

    def _answered(self, sent: _Sent) -> None:
        """
        A request sent at C{sent} was answered: a round trip for the window
        sizer.  It waited behind the relay's queue only if data came
        meanwhile, ours did not queue ahead of it (we sent little) and no key
        exchange held it back.
        """
        at, received, bytesSent, rekeys = sent
        loaded = (
            self.bytesReceived > received
            and self.bytesSent - bytesSent <= SENT_WHILE_PROBING
            and self.transport.rekeys == rekeys
        )
        now = self.clock.seconds()
        self.windows.sample(now - at, now, loaded, self.bytesReceived - received, len(self._receivers))

    # What channels ask of the connection.

    def sendWindowAdjust(self, channel: ForwardedChannel, amount: int) -> None:
        self.transport.sendPacket(MSG_CHANNEL_WINDOW_ADJUST, uint32(channel.remoteId) + uint32(amount))

    def sendEOF(self, channel: ForwardedChannel) -> None:
        self.transport.sendPacket(MSG_CHANNEL_EOF, uint32(channel.remoteId))

    def sendClose(self, channel: ForwardedChannel) -> None:
        self.transport.sendPacket(MSG_CHANNEL_CLOSE, uint32(channel.remoteId))

    def channelEnded(self, channel: ForwardedChannel) -> None:
        """
        Both sides closed the channel: its number is free again.
        """
        if self.channels.get(channel.localId) is channel:
            del self.channels[channel.localId]
            self._receivers.discard(channel.localId)  # only open ones count (readFinished)
        if channel in self._scheduled:
            # Not left for _produce to skip: a relay that keeps our socket
            # full while channels come and go would grow the turns for ever.
            self._scheduled.discard(channel)
            self._turns.remove(channel)
        if self.draining and not self.channels:
            self._fireDrained()

    def queued(self, channel: ForwardedChannel, amount: int) -> None:
        """
        C{amount} bytes joined (or, negative, left) C{channel}'s queue.
        """
        self._queuedTotal += amount
        if amount > 0:
            self.markSendable(channel)
        congested = self._queuedTotal > CONGESTION if not self.congested else self._queuedTotal > CONGESTION // 2
        if congested != self.congested:
            self.congested = congested
            for each in list(self.channels.values()):
                each.congestionChanged()

    def holdWindows(self, held: bool) -> None:
        """
        Hold every channel's window (too much is buffered towards
        destinations), or let them open again.
        """
        if held == self.windowsHeld:
            return
        self.windowsHeld = held
        if not held:
            for channel in list(self.channels.values()):
                channel.updateWindow()

    # Scheduling what channels send.

    def markSendable(self, channel: ForwardedChannel) -> None:
        """
        C{channel} has data and maybe window: serve it in its turn.
        """
        if channel in self._scheduled or not channel.sendable:
            return
        self._scheduled.add(channel)
        self._turns.add(channel)
        self._produce()

    def sendBufferDrained(self) -> None:
        """
        The relay connection can take more (its buffer drained, or a key
        exchange finished).
        """
        self._produce()

    def _produce(self) -> None:
        """
        Seal channel data while the relay connection's buffer is nearly
        empty: one packet per channel in turn, in L{Turns}' order.
        """
        if self._producing:
            return
        self._producing = True
        transport = self.transport
        turns = self._turns
        try:
            while transport.canSendData:
                room = transport.sendRoom()
                if room <= 0:
                    return
                batch: list[tuple[int, bytes | memoryview]] = []
                touched: dict[ForwardedChannel, None] = {}
                size = 0
                while size < room and turns.waiting:
                    channel = turns.pop()
                    if not channel.sendable:
                        self._scheduled.discard(channel)
                        continue
                    # One packet per turn while others wait; all the room when alone.
                    size += channel.take(1 if turns.waiting else room - size, batch)
                    touched[channel] = None
                    if channel.sendable:
                        turns.add(channel)
                    else:
                        self._scheduled.discard(channel)
                if not batch:
                    return
                transport.sendChannelData(batch)
                self.bytesSent += size
                for channel in touched:
                    channel.packetsSent()
        finally:
            self._producing = False

    # Shutdown.

    def drain(self, gracePeriod: float) -> defer.Deferred[None]:
        """
        Stop taking streams, cancel the forward, and fire once every open
        stream ended or C{gracePeriod} seconds passed.
        """
        self.draining = True
        if self.allocatedPort is not None and not self._stopped:
            cancel = self.sendGlobalRequest(b"cancel-tcpip-forward", string(BIND_HOST) + uint32(self.allocatedPort))
            cancel.addErrback(lambda _: None)
        if self._drained is None:
            self._drained = defer.Deferred()
            if self.channels and not self._stopped:
                self.log.info(
                    "draining {count} open streams for up to {grace} s{on}",
                    count=len(self.channels),
                    grace=gracePeriod,
                    on=self._on(),
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

    # Logs.

    def _on(self) -> str:
        return f" (relay {self.label})" if self.label else ""

    def _note(self, key: str, format: str, level: LogLevel = LogLevel.warn, **fields: Any) -> None:
        """
        Log a refusal at most once a minute per kind, with how many were not logged.
        """
        suppressed = self._throttle(key)
        if suppressed is None:
            return
        more = f" ({suppressed} more since the last such line)" if suppressed else ""
        self.log.emit(level, format + "{on}{more}", on=self._on(), more=more, **fields)

    def _allocateId(self) -> int:
        while self._nextId in self.channels:
            self._nextId = (self._nextId + 1) & 0xFFFFFFFF
        localId = self._nextId
        self._nextId = (self._nextId + 1) & 0xFFFFFFFF
        return localId
