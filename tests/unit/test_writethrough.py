"""
Write-through on real loopback TCP connections: sent at once when nothing is
queued, queued in order behind anything that is.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from incident_connector import writethrough


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
        writethrough.write(transport, data)
        writethrough.writeSequence(transport, [b"head", data, b"tail"])
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
                writethrough.writeSequence(transport, [chunk[:100], chunk[100:]])
            else:
                writethrough.write(transport, chunk)
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
        writethrough.write(transport, b"one")
        writethrough.writeSequence(transport, [b"two", b"three"])
        self.assertEqual(transport.value(), b"onetwothree")
