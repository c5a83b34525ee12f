"""
The HTTP CONNECT tunnel in memory, byte by byte: what it asks the proxy,
the hand-over to the real protocol (bytes that came with the proxy's answer
included), and a refusal as one line naming the proxy without its password.
"""

from __future__ import annotations

from twisted.internet import protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.proxy import HTTPConnectEndpoint, Proxy, ProxyError


class Inner(protocol.Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class TunnelTests(SynchronousTestCase):
    def connect(
        self, url: str = "http://alice:pw@proxy.internal:3128"
    ) -> tuple[object, StringTransport, Inner, object]:
        reactor = MemoryReactorClock()
        endpoint = HTTPConnectEndpoint(reactor, Proxy.fromURL(url), "relay.example", 443, timeout=10)
        inner = Inner()
        connecting = endpoint.connect(protocol.Factory.forProtocol(lambda: inner))
        # HostnameEndpoint resolves, then connects: stand in for the proxy's socket.
        reactor.advance(0)
        factory = reactor.tcpClients[-1][2] if reactor.tcpClients else None
        self.assertIsNotNone(factory, "no connection to the proxy was attempted")
        tunnel = factory.buildProtocol(None)
        transport = StringTransport()
        tunnel.makeConnection(transport)
        return tunnel, transport, inner, connecting

    def test_handOver(self) -> None:
        tunnel, transport, inner, connecting = self.connect()
        request = transport.value().decode()
        self.assertTrue(request.startswith("CONNECT relay.example:443 HTTP/1.1\r\n"), request)
        self.assertIn("Proxy-Authorization: Basic YWxpY2U6cHc=\r\n", request)
        tunnel.dataReceived(b"HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\nSSH-2.0-relay\r\n")
        self.assertEqual(inner.received, b"SSH-2.0-relay\r\n")
        self.assertIs(inner.transport, transport)
        tunnel.dataReceived(b"more")
        self.assertEqual(inner.received, b"SSH-2.0-relay\r\nmore")
        self.successResultOf(connecting)

    def test_refusedSaysWhyWithoutPassword(self) -> None:
        tunnel, transport, inner, connecting = self.connect("http://alice:s3cret@proxy.internal:3128")
        tunnel.dataReceived(b"HTTP/1.1 403 Forbidden\r\n\r\n")
        failure = self.failureResultOf(connecting, ProxyError)
        message = str(failure.value)
        self.assertIn("refused CONNECT to relay.example:443: 403 Forbidden", message)
        self.assertNotIn("s3cret", message)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(inner.received, b"")

    def test_answerTooLong(self) -> None:
        tunnel, _, _, connecting = self.connect()
        tunnel.dataReceived(b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 20000)
        failure = self.failureResultOf(connecting, ProxyError)
        self.assertIn("too long", str(failure.value))
