"""
The relay connection in memory, past the key exchange: AES-GCM packets from a
peer, split anywhere, reach the stream's destination byte-exact; malformed
channel data ends the connection with a protocol error instead of a
traceback; and a full relay send buffer stops every destination from being
read until it drains.
"""

from __future__ import annotations

import itertools
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.conch.ssh import common, connection
from twisted.conch.ssh.transport import DISCONNECT_PROTOCOL_ERROR, MSG_DISCONNECT
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.allowlist import Allowlist
from incident_connector.metrics import ConnectorMetrics
from incident_connector.stream import PAUSED_READ, READ_SIZE, ForwardedStream, StreamSettings
from incident_connector.tunnel.ciphers import AEADPacketizer, Ciphers
from incident_connector.tunnel.connection import RelayConnection
from incident_connector.tunnel.transport import RelayTransport

GCM = b"aes128-gcm@openssh.com"
# Conch hands setKeys 64-byte derived keys and IVs; each side takes what it needs.
TO_RELAY_KEY, TO_RELAY_IV = bytes(range(64)), bytes(range(64, 128))
FROM_RELAY_KEY, FROM_RELAY_IV = bytes(range(128, 192)), bytes(range(192, 256))
RELAY_CHANNEL = 7
WINDOW = 2 * 1024 * 1024
MAX_PACKET = 32768
METRICS = ConnectorMetrics()
#: SOCKS5: no authentication, then CONNECT 127.0.0.1:5432.
SOCKS_REQUEST = b"\x05\x01\x00" + b"\x05\x01\x00\x01\x7f\x00\x00\x01" + struct.pack(">H", 5432)


class DestinationTransport(StringTransport):
    """
    A destination's TCP connection as a stream uses it.
    """

    bufferSize = READ_SIZE
    shutAfter: bytes | None = None
    closedAfter: bytes | None = None
    writes = 0

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        self.writes += 1
        super().writeSequence(data)

    def unregisterProducer(self) -> None:
        # As a TCP connection: a no-op without one.
        self.producer = None

    def loseWriteConnection(self) -> None:
        self.shutAfter = self.value()

    def loseConnection(self) -> None:
        self.closedAfter = self.value()
        super().loseConnection()


class Peer:
    """
    The relay's end of an established connection: seals what it sends to
    the connector and opens what the connector sent.
    """

    def __init__(self) -> None:
        self.sealer = AEADPacketizer(FROM_RELAY_KEY[:16], FROM_RELAY_IV)
        self.opener = AEADPacketizer(TO_RELAY_KEY[:16], TO_RELAY_IV)
        self.received = b""

    def seal(self, messageType: int, payload: bytes) -> bytes:
        return self.sealer.seal(bytes((messageType,)) + payload, 0)

    def channelData(self, data: bytes, channel: int = 0, length: int | None = None) -> bytes:
        size = len(data) if length is None else length
        return self.seal(connection.MSG_CHANNEL_DATA, struct.pack(">2L", channel, size) + data)

    def messages(self, wire: bytes) -> list[tuple[int, bytes]]:
        """
        Every whole message the connector sent since the last call.
        """
        self.received += wire
        out = []
        while (opened := self.opener.open(self.received, 0)) is not None:
            payload, used = opened
            self.received = self.received[used:]
            out.append((payload[0], payload[1:]))
        return out


class TunnelInMemory(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.streamSettings = StreamSettings(reactor=self.reactor, allowlist=Allowlist.parse(""), metrics=METRICS)
        self.peer = Peer()
        self.relayTCP = StringTransport()
        self.transport = RelayTransport()
        self.transport.transport = self.relayTCP  # type: ignore[assignment]
        self.transport.gotVersion = True
        self.transport.buf = b""
        ciphers = Ciphers(GCM, GCM, b"none", b"none")
        ciphers.setKeys(TO_RELAY_IV, TO_RELAY_KEY, FROM_RELAY_IV, FROM_RELAY_KEY, b"", b"")
        self.transport.currentEncryptions = ciphers
        self.conn = RelayConnection(self.makeStream, self.reactor, METRICS, keepaliveInterval=0)
        self.conn.transport = self.transport
        self.transport.service = self.conn
        self.conn.serviceStarted()
        self.streams: list[ForwardedStream] = []
        self.sent()

    def makeStream(self, windowSize: int, maxPacket: int, data: bytes) -> ForwardedStream:
        stream = ForwardedStream(self.streamSettings, remoteWindow=windowSize, remoteMaxPacket=maxPacket)
        self.streams.append(stream)
        return stream

    def sent(self) -> list[tuple[int, bytes]]:
        wire = self.relayTCP.value()
        self.relayTCP.clear()
        return self.peer.messages(wire)

    def openStream(self, window: int = WINDOW) -> tuple[ForwardedStream, DestinationTransport]:
        """
        Open a forwarded channel, ask for 127.0.0.1:5432 over SOCKS5, and
        connect the destination.
        """
        openData = common.NS(b"localhost") + struct.pack(">L", 40000) + common.NS(b"127.0.0.1") + struct.pack(">L", 1)
        request = common.NS(b"forwarded-tcpip") + struct.pack(">3L", RELAY_CHANNEL, window, MAX_PACKET) + openData
        local = self.conn.localChannelID
        self.transport.dataReceived(
            self.peer.seal(connection.MSG_CHANNEL_OPEN, request) + self.peer.channelData(SOCKS_REQUEST, channel=local)
        )
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[-1]
        self.assertEqual((host, port), ("127.0.0.1", 5432))
        destination = DestinationTransport()
        factory.buildProtocol(IPv4Address("TCP", host, port)).makeConnection(destination)
        replies = b"".join(data[8:] for kind, data in self.sent() if kind == connection.MSG_CHANNEL_DATA)
        self.assertEqual(replies[:3], b"\x05\x00\x05")
        self.assertEqual(replies[3], 0, "SOCKS reply: succeeded")
        return self.streams[-1], destination

    def assertDisconnected(self, reason: bytes) -> None:
        messages = self.sent()
        self.assertEqual(messages[-1][0], MSG_DISCONNECT)
        (code,) = struct.unpack(">L", messages[-1][1][:4])
        self.assertEqual(code, DISCONNECT_PROTOCOL_ERROR)
        self.assertIn(reason, messages[-1][1])
        self.assertTrue(self.relayTCP.disconnecting)


class FastPathTests(TunnelInMemory):
    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.integers(min_value=1, max_value=60000), max_size=6), st.integers(min_value=0, max_value=5000))
    def test_anySplit(self, cuts: list[int], small: int) -> None:
        """
        Channel data sealed in packets of every size up to the max, arriving
        in pieces split anywhere, reaches the destination in order.
        """
        self.setUp()
        _stream, destination = self.openStream()
        chunks = [bytes([n % 251]) * size for n, size in enumerate([small, 1, MAX_PACKET, 0, 17, MAX_PACKET - 1])]
        wire = b"".join(self.peer.channelData(chunk) for chunk in chunks if chunk)
        points = sorted({0, len(wire), *(c for c in cuts if c < len(wire))})
        for start, end in itertools.pairwise(points):
            self.transport.dataReceived(wire[start:end])
        self.assertEqual(destination.value(), b"".join(chunks))
        self.assertEqual(self.transport.buf, b"")

    def test_oneWritePerRead(self) -> None:
        """
        The channel data of one read from the relay reaches the destination
        in one write.
        """
        _stream, destination = self.openStream()
        writes = destination.writes
        self.transport.dataReceived(b"".join(self.peer.channelData(bytes([n]) * 1000) for n in range(5)))
        self.assertEqual(destination.writes, writes + 1)
        self.assertEqual(destination.value(), b"".join(bytes([n]) * 1000 for n in range(5)))

    def test_eofAndCloseAfterData(self) -> None:
        """
        Data then EOF then close, all in one read: the destination gets all
        the data before its write side is shut, and before it is closed.
        """
        _stream, destination = self.openStream()
        # Sealed in the order sent: the GCM nonce counts packets.
        wire = self.peer.channelData(b"a" * 1000) + self.peer.channelData(b"b")
        wire += self.peer.seal(connection.MSG_CHANNEL_EOF, struct.pack(">L", 0))
        wire += self.peer.seal(connection.MSG_CHANNEL_CLOSE, struct.pack(">L", 0))
        self.transport.dataReceived(wire)
        self.assertEqual(destination.shutAfter, b"a" * 1000 + b"b")
        self.assertEqual(destination.closedAfter, b"a" * 1000 + b"b")

    def test_windowReopens(self) -> None:
        """
        Once more than half the window is used, the relay gets back all it used.
        """
        self.openStream()
        packets = WINDOW // 2 // MAX_PACKET
        for _ in range(packets):
            self.transport.dataReceived(self.peer.channelData(b"x" * MAX_PACKET))
        adjusts = [data for kind, data in self.sent() if kind == connection.MSG_CHANNEL_WINDOW_ADJUST]
        used = len(SOCKS_REQUEST) + WINDOW // 2
        self.assertEqual([struct.unpack(">2L", a) for a in adjusts], [(RELAY_CHANNEL, used)])

    def test_unknownChannel(self) -> None:
        self.openStream()
        self.transport.dataReceived(self.peer.channelData(b"lost", channel=99))
        self.assertDisconnected(b"unknown channel")

    def test_lengthBeyondPacket(self) -> None:
        _stream, destination = self.openStream()
        self.transport.dataReceived(self.peer.channelData(b"short", length=1000) + self.peer.channelData(b"after"))
        self.assertDisconnected(b"longer than its packet")
        self.assertEqual(destination.value(), b"", "nothing after the bad packet is acted on")

    def test_sentInPackets(self) -> None:
        """
        A destination read larger than the relay's max packet goes out as
        several channel-data packets, in order, to the relay's channel.
        """
        stream, _destination = self.openStream()
        data = bytes(range(256)) * 400
        assert stream.target is not None
        stream.target.dataReceived(data)
        packets = [payload for kind, payload in self.sent() if kind == connection.MSG_CHANNEL_DATA]
        sizes = [MAX_PACKET, MAX_PACKET, MAX_PACKET, len(data) - 3 * MAX_PACKET]
        self.assertEqual([len(p) - 8 for p in packets], sizes)
        for payload in packets:
            self.assertEqual(struct.unpack(">2L", payload[:8]), (RELAY_CHANNEL, len(payload) - 8))
        self.assertEqual(b"".join(p[8:] for p in packets), data)

    def test_nothingSentIntoAShutWindow(self) -> None:
        """
        Once the relay's window is used up exactly, further data waits: no
        packet goes out, not even an empty one, until the window opens.
        """
        stream, _destination = self.openStream(window=MAX_PACKET)
        assert stream.target is not None
        stream.target.dataReceived(b"x" * stream.remoteWindowLeft)
        self.sent()
        stream.target.dataReceived(b"z")
        self.assertEqual(self.sent(), [])
        self.transport.dataReceived(self.peer.seal(connection.MSG_CHANNEL_WINDOW_ADJUST, struct.pack(">2L", 0, 10)))
        self.assertEqual([p[8:] for _, p in self.sent()], [b"z"])


class BackPressureTests(TunnelInMemory):
    def test_relayFullPausesEveryDestination(self) -> None:
        """
        When the relay connection's send buffer fills (Twisted pauses its
        producer, the connection), no destination is read until it drains;
        a late read in the same poll is kept small.
        """
        self.assertIs(self.relayTCP.producer, self.conn)
        self.assertTrue(self.relayTCP.streaming)
        opened = [self.openStream() for _ in range(3)]
        self.conn.pauseProducing()
        for _stream, destination in opened:
            self.assertEqual(destination.producerState, "paused")
            self.assertEqual(destination.bufferSize, PAUSED_READ)
        late, lateDestination = self.openStream()
        self.assertEqual(lateDestination.producerState, "paused", "a stream opened meanwhile starts paused")
        self.conn.resumeProducing()
        for _stream, destination in [*opened, (late, lateDestination)]:
            self.assertEqual(destination.producerState, "producing")
            self.assertEqual(destination.bufferSize, READ_SIZE)

    def test_shutWindowOutlastsRelayDrain(self) -> None:
        """
        A stream whose channel window is shut stays paused when the relay
        drains, and resumes when the relay adjusts the window.
        """
        stream, destination = self.openStream(window=MAX_PACKET)
        assert stream.target is not None
        stream.target.dataReceived(b"y" * (MAX_PACKET + 1))
        self.assertEqual(destination.producerState, "paused")
        self.conn.pauseProducing()
        self.conn.resumeProducing()
        self.assertEqual(destination.producerState, "paused")
        adjust = struct.pack(">2L", 0, MAX_PACKET)
        self.transport.dataReceived(self.peer.seal(connection.MSG_CHANNEL_WINDOW_ADJUST, adjust))
        self.assertEqual(destination.producerState, "producing")
        sent = b"".join(p[8:] for kind, p in self.sent() if kind == connection.MSG_CHANNEL_DATA)
        self.assertEqual(sent, b"y" * (MAX_PACKET + 1))


class FootprintTests(TunnelInMemory):
    def test_relayingStreamStaysCompact(self) -> None:
        """
        A relaying stream keeps to the 30 attributes CPython's shared-key
        instance dictionaries hold: past that each stream costs 1.3 KB more.
        """
        stream, _destination = self.openStream()
        self.transport.dataReceived(self.peer.channelData(b"up"))
        assert stream.target is not None
        stream.target.dataReceived(b"down")
        self.assertLessEqual(len(vars(stream)), 30, sorted(vars(stream)))
