"""
Several connections of one connector (replicas, or --connections N), in
memory: new streams go round-robin over the forwarding ones; one being
drained gets none; a channel refused, or lost with its connection before it
opened, is retried on the next connection with the bytes the platform already
sent; and each stream is spliced with back-pressure and half-close.
"""

from __future__ import annotations

from twisted.conch.error import ConchError
from twisted.conch.ssh import forwarding
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.relay.forwards import Forwards, Session
from incident_connector.relay.streams import PENDING_LIMIT, Stream, _Channel

SOCKS_GREETING = b"\x05\x01\x00"


class FakeConnection:
    """
    The part of C{SSHConnection} a stream uses, recording what it is asked.

    @ivar opened: channels asked for, with their open data.
    @ivar sent: C{(channel, data)} for each channel data packet.
    @ivar adjusted: C{(channel, bytes)} for each window adjustment.
    """

    def __init__(self) -> None:
        self.opened: list[tuple[_Channel, bytes]] = []
        self.sent: list[tuple[_Channel, bytes]] = []
        self.eofs: list[_Channel] = []
        self.closes: list[_Channel] = []
        self.adjusted: list[tuple[_Channel, int]] = []

    def openChannel(self, channel: _Channel, data: bytes) -> None:
        self.opened.append((channel, data))

    def sendData(self, channel: _Channel, data: bytes) -> None:
        self.sent.append((channel, data))

    def sendEOF(self, channel: _Channel) -> None:
        self.eofs.append(channel)

    def sendClose(self, channel: _Channel) -> None:
        self.closes.append(channel)
        channel.localClosed = True

    def adjustWindow(self, channel: _Channel, bytesToAdd: int) -> None:
        self.adjusted.append((channel, bytesToAdd))
        channel.localWindowLeft += bytesToAdd

    def confirm(self, index: int = -1, window: int = 1 << 20) -> _Channel:
        """
        The connector accepts the channel asked for last (or at C{index}).
        """
        channel = self.opened[index][0]
        channel.remoteWindowLeft = window
        channel.remoteMaxPacket = 32768
        channel.channelOpen(b"")
        return channel

    def refuse(self, reason: Exception, index: int = -1) -> None:
        self.opened[index][0].openFailed(reason)

    def data(self, channel: _Channel) -> bytes:
        return b"".join(data for c, data in self.sent if c is channel)


class PlatformTransport(StringTransport):
    """
    The platform's socket to a connector's port.
    """

    writeClosed = False

    def __init__(self) -> None:
        super().__init__(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 40000),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 50000),
            lenient=True,
        )

    def loseWriteConnection(self) -> None:
        self.writeClosed = True


class ForwardsTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.forwards = Forwards(self.reactor)

    def session(self, peer: str, connectorId: str = "conn_1") -> tuple[Session, FakeConnection]:
        session = Session(connectorId, 0, peer, self.reactor.seconds())
        conn = FakeConnection()
        session.conn = conn
        self.forwards.login(session)
        self.forwards.grant(session, "localhost")
        return session, conn

    def stream(self, connectorId: str = "conn_1") -> tuple[Stream, PlatformTransport]:
        stream = Stream(self.forwards, connectorId)
        transport = PlatformTransport()
        stream.makeConnection(transport)
        return stream, transport


class SpreadingTests(ForwardsTestCase):
    def test_roundRobin(self) -> None:
        """
        New streams alternate over the forwarding connections; the open asks
        for the address the connector forwarded and names the platform's.
        """
        _, a = self.session("10.0.0.1:1")
        _, b = self.session("10.0.0.2:1")
        for _ in range(4):
            self.stream()
        self.assertEqual((len(a.opened), len(b.opened)), (2, 2))
        self.assertEqual(
            forwarding.unpackOpen_forwarded_tcpip(a.opened[0][1]), (("localhost", 40000), ("127.0.0.1", 50000))
        )

    def test_onePortPerConnector(self) -> None:
        self.session("10.0.0.1:1")
        self.session("10.0.0.2:1")
        self.session("10.0.0.3:1", connectorId="conn_2")
        self.assertEqual(len(self.reactor.tcpServers), 2)
        self.assertIsNotNone(self.forwards.portFor("conn_1"))

    def test_drainingGetsNoStreams(self) -> None:
        """
        A connection that cancelled its forward gets no new stream at once;
        the port closes when no connection forwards any more.
        """
        draining, a = self.session("10.0.0.1:1")
        _, b = self.session("10.0.0.2:1")
        self.forwards.cancel(draining)
        for _ in range(3):
            self.stream()
        self.assertEqual((len(a.opened), len(b.opened)), (0, 3))
        self.assertEqual(draining.state, "draining")
        self.assertIsNotNone(self.forwards.portFor("conn_1"))
        self.forwards.cancel(self.forwards.sessionsOf("conn_1")[1])
        self.assertIsNone(self.forwards.portFor("conn_1"))
        _, transport = self.stream()
        self.assertTrue(transport.disconnecting)

    def test_logoutForgets(self) -> None:
        gone, a = self.session("10.0.0.1:1")
        _, b = self.session("10.0.0.2:1")
        self.forwards.logout(gone)
        self.forwards.logout(gone)
        self.stream()
        self.stream()
        self.assertEqual((len(a.opened), len(b.opened)), (0, 2))
        self.assertEqual(self.forwards.sessionsOf("conn_1")[0].peer, "10.0.0.2:1")


class RetryTests(ForwardsTestCase):
    def test_refusedRetriedOnNext(self) -> None:
        """
        The connection asked first refuses (its connector is shutting down):
        the next one gets the stream and the bytes the platform already sent.
        """
        _, a = self.session("10.0.0.1:1")
        _, b = self.session("10.0.0.2:1")
        stream, transport = self.stream()
        stream.dataReceived(SOCKS_GREETING)
        a.refuse(ConchError(b"connector is shutting down", 1))
        self.assertEqual(len(b.opened), 1)
        channel = b.confirm()
        self.assertEqual(b.data(channel), SOCKS_GREETING)
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(b"\x05\x00")
        self.assertEqual(transport.value(), b"\x05\x00")

    def test_connectionLostRetried(self) -> None:
        """
        The connection dies before answering the open: the stream goes to the
        next one.
        """
        dying, a = self.session("10.0.0.1:1")
        _, b = self.session("10.0.0.2:1")
        _, transport = self.stream()
        self.forwards.logout(dying)
        a.refuse(ConnectionLost())
        self.assertEqual(len(b.opened), 1)
        self.assertFalse(transport.disconnecting)

    def test_everyConnectionRefuses(self) -> None:
        """
        Each connection is tried once; then the platform's connection closes.
        """
        _, a = self.session("10.0.0.1:1")
        _, b = self.session("10.0.0.2:1")
        _, transport = self.stream()
        a.refuse(ConchError(b"too many streams", 4))
        b.refuse(ConchError(b"too many streams", 4))
        self.assertEqual((len(a.opened), len(b.opened)), (1, 1))
        self.assertTrue(transport.disconnecting)

    def test_platformGoneBeforeOpen(self) -> None:
        """
        The platform hung up while the channel was opening: it is closed as
        soon as it opens, and a refusal is not retried.
        """
        _, a = self.session("10.0.0.1:1")
        _, b = self.session("10.0.0.2:1")
        stream, _ = self.stream()
        stream.connectionLost(ConnectionLost())
        channel = a.confirm()
        self.assertEqual(a.closes, [channel])
        stream2, _ = self.stream()
        stream2.connectionLost(ConnectionLost())
        b.refuse(ConchError(b"no", 1))
        self.assertEqual(len(a.opened), 1)


class SpliceTests(ForwardsTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.session_, self.conn = self.session("10.0.0.1:1")

    def test_pendingBytesBounded(self) -> None:
        """
        While no channel is open, at most PENDING_LIMIT bytes are read before
        the platform's socket is paused; it resumes once the channel opens.
        """
        stream, transport = self.stream()
        stream.dataReceived(b"x" * (PENDING_LIMIT - 1))
        self.assertEqual(transport.producerState, "producing")
        stream.dataReceived(b"x")
        self.assertEqual(transport.producerState, "paused")
        channel = self.conn.confirm()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(len(self.conn.data(channel)), PENDING_LIMIT)

    def test_connectorWindowPausesPlatform(self) -> None:
        """
        Beyond the connector's window, the platform is not read until the
        window opens again.
        """
        stream, transport = self.stream()
        channel = self.conn.confirm(window=10)
        stream.dataReceived(b"0123456789abc")
        self.assertEqual(transport.producerState, "paused")
        channel.addWindowBytes(100)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(self.conn.data(channel), b"0123456789abc")

    def test_slowPlatformHoldsWindow(self) -> None:
        """
        While the platform's socket is full, the channel holds our window;
        when it drains, the window is topped up.
        """
        _, transport = self.stream()
        channel = self.conn.confirm()
        self.assertIs(transport.producer, channel)
        channel.pauseProducing()
        self.assertTrue(channel.windowHeld)
        channel.localWindowLeft -= 5000
        channel.resumeProducing()
        self.assertFalse(channel.windowHeld)
        self.assertEqual(self.conn.adjusted, [(channel, 5000)])

    def test_halfClose(self) -> None:
        """
        The platform's EOF goes out after the bytes still waiting for window;
        the connector's EOF shuts the platform's write side; with both ways
        done the relay closes the channel, and the close ends the socket.
        """
        stream, transport = self.stream()
        channel = self.conn.confirm(window=3)
        stream.dataReceived(b"abcdef")
        stream.readConnectionLost()
        self.assertEqual(self.conn.eofs, [])
        channel.addWindowBytes(10)
        self.assertEqual(self.conn.eofs, [channel])
        self.assertEqual(self.conn.data(channel), b"abcdef")
        self.assertEqual(self.conn.closes, [])
        channel.eofReceived()
        self.assertTrue(transport.writeClosed)
        self.assertEqual(self.conn.closes, [channel])  # both ways done: the relay closes
        self.assertFalse(transport.disconnecting)
        channel.closed()
        self.assertTrue(transport.disconnecting)

    def test_eofBeforeOpen(self) -> None:
        stream, _ = self.stream()
        stream.dataReceived(b"req")
        stream.readConnectionLost()
        channel = self.conn.confirm()
        self.assertEqual(self.conn.data(channel), b"req")
        self.assertEqual(self.conn.eofs, [channel])

    def test_streamsCounted(self) -> None:
        """
        Each connection counts its open streams and knows its age (what
        incident-relay list shows).
        """
        self.stream()
        self.stream()
        channel = self.conn.confirm(0)
        self.conn.confirm(1)
        self.reactor.advance(12)
        self.assertEqual(
            self.session_.asJSON(self.reactor.seconds()),
            {"peer": "10.0.0.1:1", "state": "forwarding", "age_seconds": 12.0, "streams": 2},
        )
        channel.closed()
        self.assertEqual(self.session_.streams, 1)
