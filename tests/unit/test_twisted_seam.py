"""
Every assumption L{incident_connector._twisted} makes about Twisted's
internals, asserted directly, so that a Twisted release that breaks one fails
here first, by name; and the send-at-once path on real loopback connections:
sent at once when nothing is queued, queued in order behind anything that is,
and correct without C{sendmsg} (Windows).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from incident_connector import _twisted


class Collector(protocol.Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        self.waiting: tuple[int, defer.Deferred[None]] | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.waiting is not None and len(self.received) >= self.waiting[0]:
            done, self.waiting = self.waiting[1], None
            done.callback(None)

    def receivedAtLeast(self, count: int) -> defer.Deferred[None]:
        done: defer.Deferred[None] = defer.Deferred()
        if len(self.received) >= count:
            done.callback(None)
        else:
            self.waiting = (count, done)
        return done


class WriteThroughTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def connect(self) -> Any:
        """
        A connected pair: our client transport, and the server's collector.
        """
        accepted: defer.Deferred[Collector] = defer.Deferred()

        def build() -> Collector:
            collector = Collector()
            collector.connectionMade = lambda: accepted.callback(collector)  # type: ignore[method-assign]
            return collector

        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(build)
        )
        self.addCleanup(port.stopListening)
        client = yield endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            protocol.Factory.forProtocol(protocol.Protocol)
        )
        server = yield accepted
        self.addCleanup(client.transport.loseConnection)
        self.addCleanup(server.transport.loseConnection)
        return client.transport, server

    @defer.inlineCallbacks
    def test_sentAtOnce(self) -> Any:
        """
        With nothing queued, the bytes leave before the call returns: nothing
        waits for the reactor.
        """
        transport, server = yield self.connect()
        data = os.urandom(64 * 1024)
        _twisted.sendNow(transport, [data])
        _twisted.sendNow(transport, [b"head", data, b"tail"])
        self.assertEqual((transport.dataBuffer, transport._tempDataLen), (b"", 0))
        yield server.receivedAtLeast(2 * len(data) + 8)
        self.assertEqual(bytes(server.received), data + b"head" + data + b"tail")

    @defer.inlineCallbacks
    def test_queuedInOrder(self) -> Any:
        """
        A reader that stops reading fills the socket: the rest is queued, and
        later writes queue behind it rather than overtake it.
        """
        transport, server = yield self.connect()
        server.transport.pauseProducing()
        chunks = [bytes([n]) * (1024 * 1024) for n in range(32)]
        for n, chunk in enumerate(chunks):
            if n % 2:
                _twisted.sendNow(transport, [chunk[:100], chunk[100:]])
            else:
                _twisted.sendNow(transport, [chunk])
        self.assertGreater(transport._tempDataLen + len(transport.dataBuffer), 0, "the socket filled up")
        server.transport.resumeProducing()
        yield server.receivedAtLeast(sum(map(len, chunks)))
        self.assertEqual(bytes(server.received), b"".join(chunks))


class FallbackTests(SynchronousTestCase):
    def test_notTCP(self) -> None:
        """
        Other transports get plain writes.
        """
        transport = StringTransport()
        _twisted.sendNow(transport, [b"one"])
        _twisted.sendNow(transport, [b"two", b"three"])
        self.assertEqual(transport.value(), b"onetwothree")
        self.assertEqual(_twisted.pendingBytes(transport), 0)
        _twisted.setReadSize(transport, 1)  # ignored, no error


class AssumptionTests(SynchronousTestCase):
    """
    What the seam reads and writes of Twisted, by name.
    """

    def test_fileDescriptorQueue(self) -> None:
        """
        abstract.FileDescriptor keeps its write queue in dataBuffer (from
        offset) and _tempDataBuffer (_tempDataLen bytes), and a pending
        half-close in _writeDisconnecting.
        """
        from twisted.internet import abstract

        descriptor = abstract.FileDescriptor()
        descriptor.connected = True
        descriptor.startWriting = lambda: None  # type: ignore[method-assign]
        descriptor.write(b"")
        for name in ("dataBuffer", "offset", "_tempDataLen", "_tempDataBuffer", "_writeDisconnecting", "bufferSize"):
            self.assertTrue(hasattr(descriptor, name), f"FileDescriptor.{name} is gone: update _twisted.py")
        descriptor.connected = True
        descriptor.startWriting = lambda: None  # type: ignore[method-assign]
        descriptor.write(b"abc")
        descriptor.writeSequence([b"de", b"f"])
        self.assertEqual(_twisted.pendingBytes(descriptor), 6)
        self.assertTrue(_twisted.SUPPORTED)

    def test_bufferSizeIsReadSize(self) -> None:
        """
        tcp.Connection.doRead asks recv for bufferSize bytes.
        """
        import inspect

        from twisted.internet import tcp

        self.assertIn("self.bufferSize", inspect.getsource(tcp.Connection.doRead))
        self.assertTrue(hasattr(tcp.Connection, "socket") or "socket" in inspect.getsource(tcp.Connection.__init__))

    def test_exitSignal(self) -> None:
        """
        twistd re-raises reactor._exitSignal after the reactor stopped.
        """
        import inspect

        from twisted.application import app
        from twisted.internet import base

        self.assertIn("reactor._exitSignal", inspect.getsource(app))
        self.assertTrue(hasattr(base.ReactorBase, "_exitSignal"))

        class Reactor:
            _exitSignal = 15

        reactor = Reactor()
        _twisted.clearExitSignal(reactor)
        self.assertIsNone(reactor._exitSignal)

    def test_pausedTransportReadInSameBatch(self) -> None:
        """
        Why the read size drops while a destination is paused: the poll
        reactors dispatch every ready descriptor of a batch, paused or not
        (posixbase._PollLikeMixin._doReadOrWrite does not look at _reads).
        """
        import inspect

        from twisted.internet import posixbase

        source = inspect.getsource(posixbase._PollLikeMixin._doReadOrWrite)
        self.assertIn("selectable.doRead()", source)

    def test_serverEndpointPort(self) -> None:
        """
        A TCP server endpoint built from a description keeps its port in
        _port (IPv4 and IPv6); other endpoints have none.
        """
        from twisted.internet.endpoints import serverFromString

        self.assertEqual(_twisted.endpointPort(serverFromString(None, "tcp:99999")), 99999)
        self.assertEqual(_twisted.endpointPort(serverFromString(None, "tcp6:port=9090:interface=\\:\\:1")), 9090)
        self.assertIsNone(_twisted.endpointPort(serverFromString(None, "unix:/tmp/x.sock")))


class NoSendmsgTests(WriteThroughTests):
    """
    The same, on a platform without socket.sendmsg (Windows).
    """

    def setUp(self) -> None:
        self.patch(_twisted, "_SENDMSG", False)
