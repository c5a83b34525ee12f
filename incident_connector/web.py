# -*- test-case-name: tests.unit.test_web,tests.integration.test_listener -*-
"""
The HTTP side: C{/metrics} (prometheus_client's own Twisted resource),
C{/healthz} (the process answers), C{/readyz} (a forward is granted) and
C{/destinations} (what was requested since start).

The listener is reachable by anyone who can reach the port, so nothing a
client sends may grow memory or descriptors without bound:

  - only C{GET} and C{HEAD} are served (405 otherwise);
  - a request body larger than L{MAX_BODY} bytes, or chunked, is refused with
    413 as soon as its headers are read, before any of it is read (twisted.web
    would otherwise spool it to a temporary file);
  - a connection with no byte either way for L{IDLE_TIMEOUT} seconds is closed;
  - at most L{MAX_CONNECTIONS} connections are served at once: a new one
    aborts the oldest (so slow clients cannot keep the probes out), and is
    itself closed at once only if every other is already being aborted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from io import BytesIO
from typing import Any, cast

from prometheus_client.twisted import MetricsResource
from twisted.internet.interfaces import IAddress, IReactorTime, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from .destinations import DestinationsResource, ObservedDestinations
from .metrics import ConnectorMetrics
from .policy import AllowlistPolicy
from .tunnel.service import RelayService

__all__ = ["IDLE_TIMEOUT", "MAX_BODY", "MAX_CONNECTIONS", "ListenerFactory", "makeSite"]

#: Largest request body accepted, in bytes (held in memory, never on disk).
MAX_BODY = 4096

#: Seconds a connection may stay silent both ways before it is closed.
IDLE_TIMEOUT = 5.0

#: Connections served at once; each holds one file descriptor.
MAX_CONNECTIONS = 64

#: Methods served; anything else gets 405.
_METHODS = (b"GET", b"HEAD")

_TOO_LARGE = b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

_log = Logger()


class HealthResource(resource.Resource):
    """
    A small JSON status document.

    @ivar relays: the relay connections to report on.
    @ivar requireForward: answer 503 unless at least one connection is ready:
        its forward granted and the relay heard from recently.
    @ivar policy: the allowlist in force, to report, if given.
    """

    isLeaf = True

    def __init__(
        self, relays: Sequence[RelayService], requireForward: bool, policy: AllowlistPolicy | None = None
    ) -> None:
        super().__init__()
        self.relays = relays
        self.requireForward = requireForward
        self.policy = policy

    def render_GET(self, request: IRequest) -> bytes:
        ports = [relay.allocatedPort for relay in self.relays if relay.allocatedPort is not None]
        errors = [relay.lastError for relay in self.relays if relay.lastError]
        ready = [relay for relay in self.relays if relay.ready]
        ok = bool(ready) or not self.requireForward
        request.setResponseCode(200 if ok else 503)
        request.setHeader(b"content-type", b"application/json")
        body: dict[str, Any] = {
            "status": "ok" if ok else "unavailable",
            "relay": self.relays[0].relayName if self.relays else None,
            "connections_up": len(ready),
            "allocated_ports": ports,
            "streams_active": sum(relay.streamsActive for relay in self.relays),
            "last_error": errors[-1] if errors else None,
            "connections": [relay.status() for relay in self.relays],
        }
        if self.policy is not None:
            body["allowlist"] = self.policy.status()
        return json.dumps(body).encode() + b"\n"


class ProbeRequest(server.Request):
    """
    A request that never reads a large body and serves only GET and HEAD.

    It relies on three behaviours of C{twisted.web.http.HTTPChannel} (26.10),
    each asserted by a test in C{tests.unit.test_web}:

      1. C{gotLength} is called once the headers are parsed and before any
         byte of the body is read, with the C{Content-Length}, or L{None} for
         a chunked body (C{server.Request.gotLength} is where twisted.web
         would open C{tempfile.TemporaryFile} for a body of 100 kB or more);
      2. the C{Expect: 100-continue} answer is decided after C{gotLength}
         returns, from the request's headers;
      3. once the transport is disconnecting, the channel parses nothing more
         of what it already received, and C{loseConnection} stops reading.
    """

    def gotLength(self, length: int | None) -> None:
        """
        Called by the channel when the headers are in: refuse a body that is
        chunked or larger than L{MAX_BODY} with 413 and close the connection.
        """
        self.content = BytesIO()
        if length is not None and length <= MAX_BODY:
            return
        # No "100 Continue" after our answer: the channel checks this header next.
        self.requestHeaders.removeHeader(b"expect")
        channel = self.channel
        assert channel is not None
        channel.write(_TOO_LARGE)
        channel.loseConnection()

    def handleContentChunk(self, data: bytes) -> None:
        """
        Called by the channel with each piece of an accepted body.  The
        channel never passes more than the announced length; this is a guard.
        """
        content, channel = self.content, self.channel
        assert content is not None and channel is not None
        if content.tell() + len(data) > MAX_BODY:
            cast(ITCPTransport, channel.transport).abortConnection()
            return
        content.write(data)

    def process(self) -> None:
        """
        Called once the request is complete: 405 for any method but GET and
        HEAD, before any resource sees it.
        """
        if self.method not in _METHODS:
            self.setResponseCode(405)
            self.setHeader(b"allow", b"GET, HEAD")
            self.setHeader(b"content-type", b"text/plain")
            self.write(b"method not allowed: use GET or HEAD\n")
            self.finish()
            return
        super().process()


class _QuietSite(server.Site):
    """
    No access log: probes scrape every few seconds and would drown the tunnel's own lines.
    """

    requestFactory = ProbeRequest

    def log(self, request: object) -> None:
        pass


class _ListenerProtocol(policies.TimeoutProtocol):
    """
    One connection: closed after L{IDLE_TIMEOUT} seconds with no byte either
    way, and aborted if it has still not gone one period later (a client
    that does not read what is left to send).
    """

    _abortCall: Any = None
    #: Aborted to make room for a newer connection (L{ListenerFactory._evictOldest}).
    _evicted = False

    def timeoutFunc(self) -> None:
        """
        Called when the connection has been idle for the timeout period.
        """
        self.loseConnection()
        transport = cast(ITCPTransport, self.transport)
        self._abortCall = self.factory.callLater(self.factory.timeoutPeriod, transport.abortConnection)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._abortCall is not None and self._abortCall.active():
            self._abortCall.cancel()
        super().connectionLost(reason)


class ListenerFactory(policies.TimeoutFactory):
    """
    Wraps the site: idle connections are closed, and beyond C{maxConnections}
    open ones a new connection is closed as soon as it is accepted (so the
    listener holds at most that many descriptors, whatever clients do).

    This replaces twisted.web's own idle timeout (C{Site(timeout=...)}),
    which logs a line each time it closes a connection, and a scrape every
    15 s would then log one line per scrape.

    @ivar reactor: schedules the timeouts.
    @ivar maxConnections: connections served at once.
    """

    protocol = _ListenerProtocol

    def __init__(
        self,
        site: server.Site,
        reactor: IReactorTime,
        timeout: float = IDLE_TIMEOUT,
        maxConnections: int = MAX_CONNECTIONS,
    ) -> None:
        super().__init__(site, timeout)
        self.reactor = reactor
        self.maxConnections = maxConnections
        self._lastWarning: float | None = None

    def callLater(self, period: float, func: Any) -> Any:
        return self.reactor.callLater(period, func)

    def _evictOldest(self) -> bool:
        """
        Abort the connection open longest, to make room for a new one.  Any
        client byte resets the idle timeout, so without this MAX_CONNECTIONS
        clients trickling a header byte every few seconds (slowloris) would
        keep the probes (/healthz, /readyz) and scrapes out for as long as
        they like; a probe's connection lasts milliseconds, so it is never the
        oldest.  At most MAX_CONNECTIONS more descriptors are held, each until
        the reactor's next turn (abortConnection closes it then).

        @return: whether a connection was aborted.
        """
        for protocol in self.protocols:
            if not protocol._evicted:
                protocol._evicted = True
                cast(ITCPTransport, protocol.transport).abortConnection()
                return True
        return False

    def buildProtocol(self, addr: IAddress | None) -> Any:
        """
        Called for each accepted connection; L{None} makes the reactor close it at once.
        """
        if len(self.protocols) >= self.maxConnections:
            now = self.reactor.seconds()
            if self._lastWarning is None or now - self._lastWarning >= 60:
                self._lastWarning = now
                _log.warn(
                    "metrics listener: {count} connections open, closing the oldest for new ones",
                    count=len(self.protocols),
                )
            if not self._evictOldest():
                return None
        return super().buildProtocol(addr)


def makeSite(
    metrics: ConnectorMetrics,
    relays: Sequence[RelayService],
    reactor: IReactorTime,
    policy: AllowlistPolicy | None = None,
    destinations: ObservedDestinations | None = None,
) -> ListenerFactory:
    """
    The factory to serve on C{--metrics-listen}.
    """
    root = resource.Resource()
    root.putChild(b"metrics", MetricsResource(registry=metrics.registry))
    root.putChild(b"healthz", HealthResource(relays, requireForward=False, policy=policy))
    root.putChild(b"readyz", HealthResource(relays, requireForward=True, policy=policy))
    if destinations is not None:
        root.putChild(b"destinations", DestinationsResource(destinations))
    # No twisted.web idle timeout: ListenerFactory keeps time (see its docstring).
    site = _QuietSite(root, timeout=None, reactor=reactor)
    site.noisy = False
    factory = ListenerFactory(site, reactor)
    factory.noisy = False
    return factory
