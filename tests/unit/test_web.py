"""
The metrics and health listener in memory: what it refuses (large or chunked
bodies, other methods, idle and surplus connections) and the twisted.web
behaviours L{incident_connector.web.ProbeRequest} relies on, one test each.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.metrics import ConnectorMetrics
from incident_connector.web import IDLE_TIMEOUT, MAX_BODY, MAX_CONNECTIONS, ListenerFactory, makeSite

TOO_LARGE = b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class ListenerTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.factory = makeSite(ConnectorMetrics(), [], self.reactor)
        self.spooled: list[Any] = []

        def noSpooling(*args: Any, **kwargs: Any) -> Any:
            self.spooled.append(args)
            raise AssertionError("a request body went to a temporary file")

        self.patch(tempfile, "TemporaryFile", noSpooling)

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def exchange(self, data: bytes) -> tuple[bytes, StringTransport]:
        protocol, transport = self.connect()
        protocol.dataReceived(data)
        return transport.value(), transport


class BodyTests(ListenerTestCase):
    def test_largeBodyRefusedFromTheHeaders(self) -> None:
        """
        A 300 MiB Content-Length is answered 413 and the connection closed as
        soon as the headers are in (behaviour 1: C{gotLength} comes before the
        body); nothing is spooled.
        """
        out, transport = self.exchange(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 314572800\r\n\r\n")
        self.assertEqual(out, TOO_LARGE)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.spooled, [])

    def test_justOverTheCap(self) -> None:
        """
        One byte over L{MAX_BODY} is refused; the body and a pipelined request
        that came in the same read are never parsed (behaviour 3), or the GET
        would be answered.
        """
        body = b"x" * (MAX_BODY + 1)
        pipelined = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        out, transport = self.exchange(
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s%s" % (len(body), body, pipelined)
        )
        self.assertEqual(out, TOO_LARGE)
        self.assertTrue(transport.disconnecting)

    def test_chunkedRefused(self) -> None:
        """
        A chunked body has no length up front (C{gotLength(None)}): refused.
        """
        out, transport = self.exchange(
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n"
        )
        self.assertEqual(out, TOO_LARGE)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.spooled, [])

    def test_noContinueAfterRefusal(self) -> None:
        """
        C{Expect: 100-continue} with a large body gets the 413 alone, no
        "100 Continue" after it (behaviour 2: the channel reads the header
        after C{gotLength}).
        """
        out, _ = self.exchange(
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10000000\r\n\r\n"
        )
        self.assertEqual(out, TOO_LARGE)

    def test_continueForASmallBody(self) -> None:
        """
        The counterpart: a small body with C{Expect} still gets its "100
        Continue", then 405 (only GET and HEAD are served).
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b"POST /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        protocol.dataReceived(b"hello")
        self.assertIn(b"HTTP/1.1 405 Method Not Allowed\r\n", transport.value())
        self.assertFalse(transport.disconnecting)


class MethodTests(ListenerTestCase):
    def test_onlyGetAndHead(self) -> None:
        for method in [b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"get"]:
            for path in [b"/healthz", b"/metrics", b"/readyz", b"/"]:
                out, _ = self.exchange(method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                head = out.split(b"\r\n\r\n", 1)[0].lower()
                self.assertTrue(head.startswith(b"http/1.1 405 "), (method, path, out))
                self.assertIn(b"\r\nallow: get, head", head)

    def test_getAndHead(self) -> None:
        out, _ = self.exchange(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = out.split(b"\r\n\r\n", 1)
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "))
        self.assertEqual(json.loads(body)["status"], "ok")
        out, _ = self.exchange(b"HEAD /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 503 "))
        self.assertTrue(out.endswith(b"\r\n\r\n"))


class ConnectionTests(ListenerTestCase):
    def test_idleConnectionClosed(self) -> None:
        """
        No byte either way for L{IDLE_TIMEOUT} seconds closes the connection;
        if the client does not let it close, it is aborted one period later.
        """
        protocol, transport = self.connect()
        self.reactor.advance(IDLE_TIMEOUT - 0.5)
        protocol.dataReceived(b"GET /healthz HTTP/1.1\r\n")
        self.reactor.advance(IDLE_TIMEOUT - 0.5)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        self.reactor.advance(IDLE_TIMEOUT)
        self.assertTrue(transport.disconnected)

    def test_connectionCap(self) -> None:
        """
        Beyond L{MAX_CONNECTIONS} open connections a new one aborts the
        oldest; once every open one is being aborted, new ones are refused
        (the reactor closes them at once) and the first refusal is logged
        once, not once per connection.  One ending makes room again.
        """
        events: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        open_ = [self.connect() for _ in range(MAX_CONNECTIONS)]
        address = IPv4Address("TCP", "127.0.0.1", 40001)
        for _ in range(MAX_CONNECTIONS):
            self.assertIsNotNone(self.factory.buildProtocol(address))
        self.assertTrue(all(transport.disconnecting for _, transport in open_))
        for _ in range(10):
            self.assertIsNone(self.factory.buildProtocol(address))
        warnings = [e for e in events if "connections open" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        open_[0][0].connectionLost(None)
        self.assertIsNotNone(self.factory.buildProtocol(address))

    def test_slowClientsCannotLockOutProbes(self) -> None:
        """
        L{MAX_CONNECTIONS} clients trickling a header byte more often than
        L{IDLE_TIMEOUT} (slowloris) do not keep a probe out: its connection
        is accepted and answered, and the oldest slow one is aborted.
        """
        slow = [self.connect() for _ in range(MAX_CONNECTIONS)]
        for _ in range(10):
            self.reactor.advance(IDLE_TIMEOUT - 1)
            for protocol, _ in slow:
                protocol.dataReceived(b"GET /healthz HTTP/1.1\r\nX-A: a")
        out, _ = self.exchange(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 200 "), out)
        self.assertTrue(slow[0][1].disconnecting)
        self.assertFalse(slow[1][1].disconnecting)

    def test_factoryIsTheListener(self) -> None:
        self.assertIsInstance(self.factory, ListenerFactory)
        self.assertIsNone(self.factory.wrappedFactory.timeOut)
