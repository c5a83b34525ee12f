# -*- test-case-name: tests.test_tunnel -*-
"""
Keeping one relay connection up: L{ClientService} does the reconnecting; this
module decides when a connection counts as up (forward granted), how long to
wait after a failure, and how to drain on shutdown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..metrics import ConnectorMetrics
from .transport import RelayTransport, TunnelError

__all__ = ["Backoff", "RelayService"]


class Backoff:
    """
    A L{ClientService} retry policy: jittered exponential backoff that is
    not reset by a connection that drops again at once.

    L{ClientService} forgets its failure count on every connection; a relay
    that grants the forward and then drops us would be redialled every
    C{initial} seconds.  Here each connection that lived less than
    C{stableAfter} seconds adds one step, and only a stable one clears them.

    @ivar penalty: steps added for consecutive short-lived connections.
    """

    def __init__(
        self,
        initial: float = 1.0,
        maximum: float = 30.0,
        stableAfter: float = 30.0,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {"initialDelay": initial, "maxDelay": maximum, "factor": 2.0}
        if jitter is not None:
            kwargs["jitter"] = jitter
        self._policy = backoffPolicy(**kwargs)
        self.stableAfter = stableAfter
        self.penalty = 0

    def __call__(self, attempt: int) -> float:
        return self._policy(attempt + self.penalty)

    def connectionEnded(self, uptime: float) -> None:
        self.penalty = 0 if uptime >= self.stableAfter else self.penalty + 1


class RelayService(service.Service):
    """
    One relay connection, kept up forever.

    @ivar index: this connection's number, the C{connection} metric label.
    @ivar transport: the live L{RelayTransport} while the forward is granted.
    @ivar lastError: the most recent failure, one line, or L{None}.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        endpoint: IStreamClientEndpoint,
        factory: IProtocolFactory,
        metrics: ConnectorMetrics,
        relayName: str,
        gracePeriod: float = 30.0,
        backoff: Backoff | None = None,
        index: int = 0,
    ) -> None:
        self.reactor = reactor
        self.endpoint = endpoint
        self.factory = factory
        self.metrics = metrics
        self.relayName = relayName
        self.gracePeriod = gracePeriod
        self.backoff = backoff or Backoff()
        self.index = index
        self.transport: RelayTransport | None = None
        self.lastError: str | None = None
        self._client: ClientService | None = None
        self._label = str(index)
        metrics.tunnelUp.labels(connection=self._label).set(0)

    @property
    def allocatedPort(self) -> int | None:
        if self.transport is None or self.transport.connection is None:
            return None
        return self.transport.connection.allocatedPort

    @property
    def streamsActive(self) -> int:
        if self.transport is None or self.transport.connection is None:
            return 0
        return len(self.transport.connection.channels)

    def startService(self) -> None:
        super().startService()
        self._client = ClientService(
            _AttemptEndpoint(self),
            self.factory,
            retryPolicy=self.backoff,
            clock=self.reactor,
            prepareConnection=self._prepare,
        )
        self._client.startService()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        client, self._client = self._client, None
        if client is None:
            return defer.succeed(None)
        transport = self.transport
        if transport is not None and transport.connection is not None:
            drained = transport.connection.drain(self.gracePeriod)
        else:
            drained = defer.succeed(None)
        return drained.addCallback(lambda _: client.stopService())

    def attemptFailed(self, error: BaseException, reason: str) -> None:
        """
        Log and count a connection attempt or a live connection that failed.
        """
        self.lastError = str(error)
        self.metrics.connectionFailures.labels(connection=self._label, reason=reason).inc()
        self._log.error("relay {relay}: {error}", relay=self.relayName, error=self.lastError)

    def _prepare(self, connected: IProtocol) -> defer.Deferred[int]:
        # ClientService hands us a proxy that forwards attribute access to our protocol.
        proto = cast(RelayTransport, connected)

        def granted(port: int) -> int:
            started = self.reactor.seconds()
            self.transport = proto
            self.lastError = None
            self.metrics.tunnelUp.labels(connection=self._label).set(1)
            self.metrics.lastForwardTimestamp.labels(connection=self._label).set(self.reactor.seconds())
            proto.whenLost.addCallback(lost, started)
            return port

        def failed(reason: Failure) -> Failure:
            error = cast(Exception, reason.value)
            self.attemptFailed(error, error.reason if isinstance(error, TunnelError) else "error")
            if proto.transport is not None:
                proto.transport.loseConnection()
            return reason

        def lost(message: str, started: float) -> None:
            self.transport = None
            self.metrics.tunnelUp.labels(connection=self._label).set(0)
            uptime = self.reactor.seconds() - started
            self.backoff.connectionEnded(uptime)
            if self.running:
                self.attemptFailed(TunnelError(f"connection lost after {uptime:.0f} s: {message}", "lost"), "lost")

        return proto.ready.addCallbacks(granted, failed)


@implementer(IStreamClientEndpoint)
class _AttemptEndpoint:
    """
    Wraps the relay endpoint to log every attempt and count TCP-level failures.
    """

    def __init__(self, owner: RelayService) -> None:
        self.owner = owner

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[Any]:
        owner = self.owner
        owner.metrics.connectionAttempts.labels(connection=owner._label).inc()
        owner._log.info("connecting to relay {relay}", relay=owner.relayName)

        def failed(reason: Failure) -> Failure:
            if not reason.check(defer.CancelledError):
                owner.attemptFailed(
                    TunnelError(f"cannot reach relay: {reason.getErrorMessage()}", "unreachable"), "unreachable"
                )
            return reason

        return owner.endpoint.connect(factory).addErrback(failed)
