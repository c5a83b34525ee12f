"""
Tests for L{incident_connector.tunnel.sockopts}: the TCP options on the
relay socket are set where the OS has them and skipped cleanly where not.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from incident_connector.tunnel import sockopts

from .sshpeer import Pair


class RecordingSocket(socket.socket):
    """
    A real socket that records each C{setsockopt} call, or fails them all.
    """

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.calls: list[tuple[int, int, int]] = []
        self.fail = fail

    def setsockopt(self, level: int, option: int, value: Any, *rest: Any) -> None:  # type: ignore[override]
        self.calls.append((level, option, value))
        if self.fail:
            raise OSError("not here")


class NotSentLowWaterTests(SynchronousTestCase):
    """
    The relay socket keeps at most NOTSENT_LOWAT unsent bytes in the kernel.
    """

    def test_setWhereSupported(self) -> None:
        option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
        self.assertIsNotNone(option, "Linux has TCP_NOTSENT_LOWAT: the test machine should")
        sock = socket.socket()
        self.addCleanup(sock.close)
        sockopts.setNotSentLowWater(sock)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, option), sockopts.NOTSENT_LOWAT)

    def test_skippedWhereNot(self) -> None:
        self.patch(socket, "TCP_NOTSENT_LOWAT", None)
        del socket.TCP_NOTSENT_LOWAT
        sock = RecordingSocket()
        self.addCleanup(sock.close)
        sockopts.setNotSentLowWater(sock)
        sockopts.setNotSentLowWater(None)
        self.assertEqual(sock.calls, [])

    def test_refusedIsNotAnError(self) -> None:
        sock = RecordingSocket(fail=True)
        self.addCleanup(sock.close)
        sockopts.setNotSentLowWater(sock)  # no error
        self.assertEqual(len(sock.calls), 1)


class QuickAckTests(SynchronousTestCase):
    """
    TCP_QUICKACK is re-armed after every read from the relay.
    """

    def test_armsQuickAck(self) -> None:
        self.assertTrue(hasattr(socket, "TCP_QUICKACK"), "Linux has TCP_QUICKACK: the test machine should")
        sock = RecordingSocket()
        self.addCleanup(sock.close)
        ackNow = sockopts.quickAcker(sock)
        assert ackNow is not None
        ackNow()
        ackNow()
        self.assertEqual(sock.calls, [(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)] * 2)

    def test_noneWhereNot(self) -> None:
        self.patch(socket, "TCP_QUICKACK", None)
        del socket.TCP_QUICKACK
        sock = socket.socket()
        self.addCleanup(sock.close)
        self.assertIsNone(sockopts.quickAcker(sock))
        self.assertIsNone(sockopts.quickAcker(None))

    def test_refusedIsNotAnError(self) -> None:
        sock = RecordingSocket(fail=True)
        self.addCleanup(sock.close)
        ackNow = sockopts.quickAcker(sock)
        assert ackNow is not None
        ackNow()  # no error

    def test_everyReadRearms(self) -> None:
        """
        The relay transport calls its acker once per read, through the whole
        handshake and the forward.
        """
        reads: list[int] = []
        pair = Pair()
        pair.client._ackNow = lambda: reads.append(1)  # type: ignore[attr-defined]
        received = pair.client.dataReceived
        calls: list[int] = []

        def counting(data: bytes) -> None:
            calls.append(1)
            received(data)

        pair.client.dataReceived = counting  # type: ignore[method-assign]
        pair.flush()
        self.assertIsInstance(pair.client.ready.result, int)  # type: ignore[attr-defined]
        self.assertGreater(len(calls), 3)
        self.assertEqual(len(reads), len(calls))


class RelaySocketTests(TestCase):
    """
    L{sockopts.relaySocket} finds the socket of a real TCP connection through
    the public C{getHandle}, and nothing under an in-memory transport.
    """

    def test_inMemory(self) -> None:
        self.assertIsNone(sockopts.relaySocket(StringTransport()))
        self.assertIsNone(sockopts.relaySocket(object()))

    async def test_realConnection(self) -> None:
        from twisted.internet.defer import Deferred

        connected: Deferred[Any] = Deferred()

        class Client(protocol.Protocol):
            def connectionMade(self) -> None:
                connected.callback(self.transport)

        port = reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        connector = reactor.connectTCP("127.0.0.1", port.getHost().port, protocol.ClientFactory.forProtocol(Client))  # type: ignore[attr-defined]
        self.addCleanup(connector.disconnect)
        transport = await connected
        sock = sockopts.relaySocket(transport)
        assert sock is not None
        sockopts.setNotSentLowWater(sock)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT), sockopts.NOTSENT_LOWAT)
