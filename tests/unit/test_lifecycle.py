"""
The relay service's life against an in-memory Conch relay on a clock:
stopping during a credentials request or a handshake is no failure, an
attempt through a silent proxy closes its connection, a connection lost
before the forward leaves no timer, the backoff grows on handshakes cut
short, a silent relay meets the setup timeout, and an established
connection's end is counted under why it ended.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from incident_connector.credentials import Credentials, StaticCredentials
from incident_connector.metrics import ConnectorMetrics
from incident_connector.proxy import HTTPConnectEndpoint, Proxy
from incident_connector.tunnel.auth import RelayUserAuth
from incident_connector.tunnel.connection import RelayConnection
from incident_connector.tunnel.service import Backoff, RelayService
from incident_connector.tunnel.transport import RelayTransport, RelayTransportFactory

from .sshpeer import USER_KEY, AcceptAllHostKeys, PeerFactory, PeerTransport


@implementer(IStreamClientEndpoint)
class PeerEndpoint:
    """
    Each connect() is a TCP connection to a fresh in-memory Conch relay.
    """

    def __init__(self) -> None:
        self.pumps: list[iosim.IOPump] = []
        self.servers: list[PeerTransport] = []

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        client = factory.buildProtocol(None)
        server = PeerTransport()
        server.factory = PeerFactory()  # type: ignore[assignment]
        serverIO = iosim.FakeTransport(server, True)
        clientIO = iosim.FakeTransport(client, False)
        self.pumps.append(iosim.connect(server, serverIO, client, clientIO, greet=False))
        self.servers.append(server)
        return defer.succeed(client)

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()


def counter(metrics: ConnectorMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def makeRelay(
    clock: MemoryReactorClock, endpoint: Any, credentials: Any = None, **kw: Any
) -> tuple[RelayService, ConnectorMetrics]:
    metrics = ConnectorMetrics()

    def makeUserAuth(transport: RelayTransport) -> RelayUserAuth:
        connection = RelayConnection(lambda channel: None, clock, metrics, keepaliveInterval=0)  # type: ignore[arg-type,return-value]
        return RelayUserAuth(b"connector", connection, USER_KEY)

    factory = RelayTransportFactory(clock, makeUserAuth)
    if credentials is None:
        credentials = StaticCredentials(Credentials("connector", USER_KEY, None, AcceptAllHostKeys()))  # type: ignore[arg-type]
    relay = RelayService(
        clock,
        endpoint,
        factory,
        credentials,
        metrics,
        "relay.example:443",
        backoff=Backoff(1.0, 30.0, jitter=lambda: 0.0),
        **kw,
    )
    return relay, metrics


class _Pending:
    """A credentials source whose answer has not come yet (TokenCredentials asking the API)."""

    def __init__(self) -> None:
        self.waiting: list[defer.Deferred[Any]] = []

    def get(self) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.waiting.append(d)
        return d

    def invalidate(self) -> None:
        pass


class StopTests(SynchronousTestCase):
    def test_stopIsQuiet(self) -> None:
        """
        SIGTERM while the certificate API is being asked: no traceback, no
        'internal' failure, no error on /readyz.
        """
        clock = MemoryReactorClock()
        relay, metrics = makeRelay(clock, PeerEndpoint(), _Pending())
        relay.startService()
        self.successResultOf(relay.stopService())
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertIsNone(relay.lastError)
        self.assertEqual(
            counter(metrics, "incident_connector_connection_failures_total", connection="0", reason="internal"), 0
        )


class _Broken:
    """A credentials source that fails with an error nobody foresaw (a bug)."""

    def get(self) -> defer.Deferred[Any]:
        return defer.fail(AttributeError("'int' object has no attribute 'split'"))

    def invalidate(self) -> None:
        pass


class UnexpectedCredentialsErrorTests(SynchronousTestCase):
    def test_reported(self) -> None:
        """
        A credentials failure that is not a CredentialsUnavailable (a bug, or
        an answer the parser did not foresee) is logged and counted, not
        retried silently.
        """
        relay, _metrics = makeRelay(MemoryReactorClock(), PeerEndpoint(), _Broken())
        relay.startService()
        self.addCleanup(relay.stopService)
        self.assertIsNotNone(relay.lastError)
        self.flushLoggedErrors(AttributeError)


class SilentProxyTests(SynchronousTestCase):
    """
    A proxy that accepts TCP and never answers CONNECT: once the attempt is
    given up (the endpoint's timeout, or the setup timeout or stopService
    cancelling it), the socket to the proxy is closed.
    """

    def connecting(self) -> tuple[MemoryReactorClock, defer.Deferred[Any], StringTransport]:
        """
        An attempt through the proxy, connected to it and waiting for its answer.
        """
        reactor = MemoryReactorClock()
        endpoint = HTTPConnectEndpoint(reactor, Proxy.fromURL("http://proxy.internal:3128"), "relay.example", 443, 10)
        connecting = endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))
        reactor.advance(0)
        tunnel = reactor.tcpClients[-1][2].buildProtocol(None)
        assert tunnel is not None
        transport = StringTransport()
        tunnel.makeConnection(transport)
        return reactor, connecting, transport

    def test_timeoutClosesProxyConnection(self) -> None:
        reactor, connecting, transport = self.connecting()
        reactor.advance(10)
        self.failureResultOf(connecting, defer.TimeoutError)
        self.assertTrue(transport.disconnecting, "the connection to the proxy is left open")

    def test_cancelClosesProxyConnection(self) -> None:
        _, connecting, transport = self.connecting()
        connecting.cancel()
        self.failureResultOf(connecting, defer.CancelledError)
        self.assertTrue(transport.disconnecting, "the connection to the proxy is left open")


class LifecycleTests(SynchronousTestCase):
    def test_grantedThenStop(self) -> None:
        clock = MemoryReactorClock()
        endpoint = PeerEndpoint()
        relay, _metrics = makeRelay(clock, endpoint)
        relay.startService()
        endpoint.flush()
        self.assertTrue(relay.ready)
        d = relay.stopService()
        endpoint.flush()
        self.successResultOf(d)

    def test_disconnectAfterGrantIsCountedAsDisconnected(self) -> None:
        clock = MemoryReactorClock()
        endpoint = PeerEndpoint()
        relay, metrics = makeRelay(clock, endpoint)
        relay.startService()
        endpoint.flush()
        self.assertTrue(relay.ready)
        endpoint.servers[-1].sendDisconnect(2, b"credentials revoked")
        endpoint.flush()
        self.assertFalse(relay.ready)
        self.assertEqual(
            counter(metrics, "incident_connector_connection_failures_total", connection="0", reason="disconnected"), 1
        )

    def test_lostBeforeGrantLeavesNoTimer(self) -> None:
        """
        The relay closes TCP during the handshake: once the retry is
        scheduled, the retry is the only timer left.
        """
        clock = MemoryReactorClock()
        endpoint = PeerEndpoint()
        relay, _metrics = makeRelay(clock, endpoint)
        relay.startService()
        endpoint.pumps[-1].serverIO.loseConnection()
        endpoint.flush()
        self.assertIsNotNone(relay.lastError)
        calls = clock.getDelayedCalls()
        self.assertEqual(len(calls), 1, calls)


@implementer(IStreamClientEndpoint)
class SilentEndpoint:
    """TCP connects; the relay never says a word."""

    def __init__(self) -> None:
        self.transports: list[StringTransport] = []

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        proto = factory.buildProtocol(None)
        t = StringTransport()
        proto.makeConnection(t)
        self.transports.append(t)
        return defer.succeed(proto)


class HandshakeTests(SynchronousTestCase):
    def retryDelay(self, clock: MemoryReactorClock) -> float:
        calls = [c for c in clock.getDelayedCalls() if "_reconnect" in repr(c)]
        assert len(calls) == 1, calls
        return calls[0].getTime() - clock.seconds()

    def test_backoffGrowsOnDropsDuringHandshake(self) -> None:
        clock = MemoryReactorClock()
        endpoint = PeerEndpoint()
        relay, _metrics = makeRelay(clock, endpoint)
        relay.startService()
        delays = []
        for _ in range(6):
            endpoint.pumps[-1].serverIO.loseConnection()
            endpoint.flush()
            d = self.retryDelay(clock)
            delays.append(d)
            clock.advance(d)
        self.assertEqual(delays, [1, 2, 4, 8, 16, 30])
        # then a stable connection resets
        endpoint.flush()
        self.assertTrue(relay.ready)
        clock.advance(31)
        endpoint.pumps[-1].serverIO.loseConnection()
        endpoint.flush()
        self.assertEqual(self.retryDelay(clock), 1)

    def test_silentRelaySetupTimeout(self) -> None:
        clock = MemoryReactorClock()
        endpoint = SilentEndpoint()
        relay, metrics = makeRelay(clock, endpoint, setupTimeout=30)
        relay.startService()
        clock.advance(30)
        self.assertTrue(endpoint.transports[-1].disconnecting or endpoint.transports[-1].disconnected)
        self.assertEqual(
            counter(metrics, "incident_connector_connection_failures_total", connection="0", reason="setup_timeout"), 1
        )

    def test_stopDuringHandshakeIsQuiet(self) -> None:
        clock = MemoryReactorClock()
        endpoint = PeerEndpoint()
        relay, _metrics = makeRelay(clock, endpoint)
        relay.startService()
        d = relay.stopService()
        endpoint.flush()
        self.successResultOf(d)
        self.assertIsNone(relay.lastError)
        self.assertEqual(clock.getDelayedCalls(), [])
