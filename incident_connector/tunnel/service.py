# -*- test-case-name: tests.unit.test_backoff,tests.integration.test_resilience -*-
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
from .auth import Credentials, CredentialsSource
from .connection import RelayConnection
from .errors import CredentialsUnavailable, TunnelError
from .transport import RelayTransport, RelayTransportFactory

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
        # ClientService counts failed TCP attempts from 1 and forgets them on
        # every connection; penalty counts the connections that failed since.
        return self._policy(max(0, attempt - 1 + max(0, self.penalty - 1)))

    def connectionEnded(self, uptime: float) -> None:
        self.penalty = 0 if uptime >= self.stableAfter else self.penalty + 1


class RelayService(service.Service):
    """
    One relay connection, kept up forever.

    @ivar credentials: asked for credentials before every attempt.
    @ivar index: this connection's number, the C{connection} metric label.
    @ivar count: how many relay connections the connector keeps (for log labels).
    @ivar setupTimeout: seconds from dialling to the forward granted, after
        which an attempt is abandoned.
    @ivar transport: the live L{RelayTransport} while the forward is granted.
    @ivar lastError: the most recent failure, one line, or L{None}.
    @ivar attemptStarted: when the attempt under way started, or L{None}.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        endpoint: IStreamClientEndpoint,
        factory: RelayTransportFactory,
        credentials: CredentialsSource,
        metrics: ConnectorMetrics,
        relayName: str,
        gracePeriod: float = 30.0,
        backoff: Backoff | None = None,
        index: int = 0,
        count: int = 1,
        setupTimeout: float = 30.0,
    ) -> None:
        self.reactor = reactor
        self.endpoint = endpoint
        self.factory = factory
        self.credentials = credentials
        self.metrics = metrics
        self.relayName = relayName
        self.gracePeriod = gracePeriod
        self.backoff = backoff or Backoff()
        self.index = index
        self.count = count
        self.setupTimeout = setupTimeout
        self.transport: RelayTransport | None = None
        self.lastError: str | None = None
        self.attemptStarted: float | None = None
        self._client: ClientService | None = None
        self._label = str(index)
        # Set by the credentials source after a 401/404: slower than backoff.
        self._leastDelay = 0.0
        metrics.tunnelUp.labels(connection=self._label).set(0)

    @property
    def connection(self) -> RelayConnection | None:
        """
        The live connection service, while the forward is granted.
        """
        # The factory this service was given builds RelayConnections.
        return cast(RelayConnection, self.transport.connection) if self.transport is not None else None

    @property
    def allocatedPort(self) -> int | None:
        return self.connection.allocatedPort if self.connection is not None else None

    @property
    def streamsActive(self) -> int:
        return len(self.connection.channels) if self.connection is not None else 0

    @property
    def ready(self) -> bool:
        """
        The forward is granted and the relay was heard from recently.
        """
        connection = self.connection
        return connection is not None and connection.allocatedPort is not None and connection.responsive

    def status(self) -> dict[str, Any]:
        """
        This connection for C{/readyz}: ready or not, and an attempt under way
        (how far it got and for how long), or the last error.
        """
        connection = self.connection
        status: dict[str, Any] = {
            "ready": self.ready,
            "allocated_port": self.allocatedPort,
            "quiet_seconds": round(connection.quietFor, 1) if connection is not None else None,
            "rekeys": self.transport.rekeys if self.transport is not None else None,
            # What each channel's window is sized to now (tunnel/window.py).
            "receive_window": connection.windowSize if connection is not None else None,
            "round_trip_ms": _milliseconds(connection.windows.roundTrip) if connection is not None else None,
            "attempt": None,
            "last_error": self.lastError,
        }
        if self.attemptStarted is not None:
            status["attempt"] = {
                "phase": self._connecting.phase if self._connecting is not None else "connecting",
                "seconds": round(self.reactor.seconds() - self.attemptStarted, 1),
            }
        return status

    @property
    def prefix(self) -> str:
        """
        Names this connection in log lines when there are several.
        """
        return f"relay {self.index + 1}/{self.count}: " if self.count > 1 else ""

    def startService(self) -> None:
        super().startService()
        self._client = ClientService(
            _AttemptEndpoint(self),
            self.factory,
            retryPolicy=self._retryDelay,
            clock=self.reactor,
        )
        self._client.startService()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        client, self._client = self._client, None
        if client is None:
            return defer.succeed(None)
        connection = self.connection
        drained = connection.drain(self.gracePeriod) if connection is not None else defer.succeed(None)

        def stop(_: None) -> defer.Deferred[None]:
            # Close through the transport: it unregisters itself as the TCP
            # connection's producer first, or the close would wait for it.
            for proto in (self.transport, self._connecting):
                if proto is not None:
                    proto.loseConnection()
            return client.stopService()

        return drained.addCallback(stop)

    def _retryDelay(self, attempt: int) -> float:
        delay = max(self.backoff(attempt), self._leastDelay)
        self._log.info(
            "{prefix}retrying relay {relay} in {delay:.1f} s", prefix=self.prefix, relay=self.relayName, delay=delay
        )
        return delay

    def attemptFailed(self, error: BaseException, reason: str) -> None:
        """
        Log and count a connection attempt or a live connection that failed.
        """
        self.lastError = str(error)
        self.metrics.connectionFailures.labels(connection=self._label, reason=reason).inc()
        self._log.error(
            "{prefix}relay {relay}: {error}", prefix=self.prefix, relay=self.relayName, error=self.lastError
        )

    def attempt(self, factory: IProtocolFactory) -> defer.Deferred[Any]:
        """
        One connection attempt: fresh credentials, then TCP to the relay (or
        its proxy); each failure is logged and counted once.
        """
        self.metrics.connectionAttempts.labels(connection=self._label).inc()

        def noCredentials(reason: Failure) -> Failure:
            error = reason.value
            if reason.check(defer.CancelledError):
                # stopService (or ClientService) gave up on the attempt: not a failure.
                return reason
            if isinstance(error, CredentialsUnavailable):
                self._leastDelay = error.retryAfter
                self.attemptFailed(error, error.reason)
            else:
                # A bug: ClientService would retry without a word (its line is at info).
                self._log.failure("{prefix}getting credentials failed", reason, prefix=self.prefix)
                error = TunnelError(f"getting credentials failed: {reason.getErrorMessage()}", "internal")
                self.attemptFailed(error, "internal")
            return reason

        def dial(credentials: Credentials) -> defer.Deferred[Any]:
            self._leastDelay = 0.0
            self.factory.credentials = credentials
            self._log.info("{prefix}connecting to relay {relay}", prefix=self.prefix, relay=self.relayName)
            self.attemptStarted = self.reactor.seconds()
            connecting = self.endpoint.connect(factory)
            # One deadline from here to the forward granted: TCP, any proxy,
            # SSH version, key exchange, login, forward.  Cancelled in _track.
            self._deadline = self.reactor.callLater(self.setupTimeout, self._setupTimedOut, connecting)
            return connecting.addCallbacks(self._track, unreachable)

        def unreachable(reason: Failure) -> Failure:
            self._stopDeadline()
            self.attemptStarted = None
            if not reason.check(defer.CancelledError):
                self.attemptFailed(
                    TunnelError(f"cannot reach relay: {reason.getErrorMessage()}", "unreachable"), "unreachable"
                )
            return reason

        return self.credentials.get().addCallbacks(dial, noCredentials)

    def _track(self, connected: IProtocol) -> IProtocol:
        """
        Follow one TCP connection until its forward is granted, and then until it ends.

        This is not C{ClientService}'s C{prepareConnection}: a connection lost
        before that Deferred fires makes its state machine raise C{NoTransition}
        (Twisted 26.10), and losing unprepared connections is our normal case
        (bad host key, refused auth, refused forward).  So C{ClientService}
        counts TCP connections, and L{Backoff} counts those that never became
        stable, which keeps the delays growing.
        """
        # ClientService hands out a proxy that forwards attribute access to our protocol.
        proto = cast(RelayTransport, connected)
        grantedAt: list[float] = []
        self._connecting = proto

        def granted(port: int) -> None:
            self._stopDeadline()
            self._connecting = None
            self.attemptStarted = None
            grantedAt.append(self.reactor.seconds())
            self.transport = proto
            self.lastError = None
            self.metrics.tunnelUp.labels(connection=self._label).set(1)
            self.metrics.lastForwardTimestamp.labels(connection=self._label).set(self.reactor.seconds())

        def failed(reason: Failure) -> None:
            self._stopDeadline()
            self._connecting = None
            self.attemptStarted = None
            error = cast(Exception, reason.value)
            if self.running:
                # Not when stopService closed the attempt: that is no failure.
                self.attemptFailed(error, error.reason if isinstance(error, TunnelError) else "error")
            if isinstance(error, TunnelError) and error.reason == "auth":
                self.credentials.invalidate()
            proto.loseConnection()

        def lost(message: str) -> None:
            uptime = self.reactor.seconds() - grantedAt[0] if grantedAt else 0.0
            self.backoff.connectionEnded(uptime)
            if not grantedAt:
                return  # already reported by failed()
            self.transport = None
            self.metrics.tunnelUp.labels(connection=self._label).set(0)
            if self.running:
                failure = proto.failure
                # keepalive_timeout, disconnected, protocol...: why it ended, when known.
                reason = failure.reason if failure is not None else "lost"
                self.attemptFailed(TunnelError(f"connection lost after {uptime:.0f} s: {message}", reason), reason)

        proto.ready.addCallbacks(granted, failed)
        proto.whenLost.addCallback(lost)
        return connected

    _deadline: Any = None
    _connecting: RelayTransport | None = None

    def _stopDeadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _setupTimedOut(self, connecting: defer.Deferred[Any]) -> None:
        """
        The attempt did not get its forward in time: abandon it, count it as
        C{setup_timeout}, and let the backoff loop try again.
        """
        self._deadline = None
        error = TunnelError(
            f"no forward within {self.setupTimeout:.0f} s of dialling (the relay accepts TCP but does not "
            f"complete SSH: overloaded, frozen, or not an SSH server); giving up on this attempt",
            "setup_timeout",
        )
        proto = self._connecting
        if proto is None:
            self.attemptStarted = None
            self.attemptFailed(error, "setup_timeout")
            connecting.cancel()
            return
        proto.fail(error)
        proto.abortConnection()


@implementer(IStreamClientEndpoint)
class _AttemptEndpoint:
    """
    What C{ClientService} dials: every attempt goes through L{RelayService.attempt}.
    """

    def __init__(self, owner: RelayService) -> None:
        self.owner = owner

    def __repr__(self) -> str:
        return f"relay {self.owner.relayName}"

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[Any]:
        return self.owner.attempt(factory)


def _milliseconds(seconds: float | None) -> float | None:
    return round(seconds * 1000, 1) if seconds is not None else None
