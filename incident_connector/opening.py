# -*- test-case-name: tests.unit.test_stream -*-
"""
The opening of a stream: the SOCKS handshake on its channel, the allowlist
decision, and the dial.  It ends in a failure reply (and a close), or in a
connected destination for the splice to take over.

The handshake timeout measures the client, not us: it is stopped while our
own reply waits to be sent (on a busy relay link that can take a while) and
starts again once the reply is out.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet import defer, protocol
from twisted.python.failure import Failure

from .allowlist import Allowlist, InvalidDestination, IPAddress, Verdict, normalize
from .dial import classify, dial
from .metrics import ConnectorMetrics
from .results import StreamRecord, StreamResult
from .socks import ConnectRequest, MethodSelected, Reply, SOCKSError, SOCKSServerParser
from .splice import TargetProtocol
from .tunnel.interfaces import IStreamTransport, Payload

__all__ = ["Opening", "OpeningSettings", "formatDestination", "streamIds"]


def streamIds() -> Iterator[str]:
    """
    Stream IDs for one process run: a random prefix (so runs differ) and a count.
    """
    run = os.urandom(4).hex()
    return (f"{run}-{n}" for n in itertools.count(1))


@dataclass
class OpeningSettings:
    """
    What every opening shares.

    @ivar reactor: dials destinations and keeps time.
    @ivar allowlist: returns the allowlist in force (it may be reloaded).
    @ivar metrics: where handshakes and dials are timed.
    @ivar connectTimeout: seconds to resolve and connect to a destination.
    @ivar handshakeTimeout: seconds the client may take to send its request.
    @ivar ids: gives each stream its ID.
    """

    reactor: Any
    allowlist: Callable[[], Allowlist]
    metrics: ConnectorMetrics
    connectTimeout: float = 10.0
    handshakeTimeout: float = 10.0
    ids: Iterator[str] = field(default_factory=streamIds)


class OpeningOutcome(Protocol):
    def connected(self, target: TargetProtocol, pending: list[bytes], clientEOF: bool) -> None:
        """
        The destination accepted; C{pending} is what the client sent meanwhile.
        """

    def failed(self, result: StreamResult) -> None:
        """
        The stream cannot go on (any reply is already written).
        """


def formatDestination(host: str, port: int) -> str:
    """
    C{host:port} for logs; hostile bytes in the host are escaped, never written raw.
    """
    shown = host if host.isprintable() and len(host) <= 255 else repr(host[:255])
    return f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}"


class Opening:
    """
    One stream's opening.

    @ivar channel: the stream's channel.
    @ivar record: the stream's record, filled in as the opening learns.
    @ivar outcome: told how the opening ended.
    @ivar parser: the SOCKS state machine.
    """

    def __init__(
        self, channel: IStreamTransport, settings: OpeningSettings, record: StreamRecord, outcome: OpeningOutcome
    ) -> None:
        self.channel = channel
        self.settings = settings
        self.record = record
        self.outcome = outcome
        self.parser = SOCKSServerParser()
        record.id = next(settings.ids)
        self._pending: list[bytes] = []
        self._clientEOF = False
        self._requested = False
        self._done = False
        self._dialing: defer.Deferred[Any] | None = None
        self._timer: Any = settings.reactor.callLater(settings.handshakeTimeout, self._timedOut)
        # The handshake fits in the window the channel opens with; no more
        # until the destination accepts (connected: resumeProducing).
        channel.pauseProducing()

    def dataReceived(self, data: Payload) -> None:
        if self._done:
            return
        if self._requested:
            # The client did not wait for our reply: it is stream payload.
            # Bounded: the channel's window is held until the destination accepts.
            self._pending.append(bytes(data))
            return
        try:
            events = self.parser.feed(bytes(data))
        except SOCKSError as e:
            self._fail(StreamResult.BAD_REQUEST, e.response)
            return
        for event in events:
            if isinstance(event, MethodSelected):
                self._reply(event.response)
            elif isinstance(event, ConnectRequest):
                self._request(event)

    def clientEOF(self) -> None:
        self._clientEOF = True
        if not self._requested:
            self._fail(StreamResult.BAD_REQUEST)

    def cancel(self) -> None:
        """
        The channel went away: stop whatever is under way.
        """
        self._done = True
        self._stopTimer()
        if self._dialing is not None and not self._dialing.called:
            self._dialing.cancel()

    def revoke(self) -> None:
        """
        The allowlist now in force does not allow the destination being
        dialled: answer 0x02 (not allowed), close, and stop the dial.
        """
        dialing, self._dialing = self._dialing, None
        self._fail(StreamResult.REVOKED, self.parser.reply(Reply.NOT_ALLOWED))
        if dialing is not None and not dialing.called:
            dialing.cancel()

    # Handshake.

    def _reply(self, response: bytes) -> None:
        """
        Send a handshake reply; the client's clock stops until it is out.
        """
        self._stopTimer()
        self.channel.write(response)
        self.channel.whenSent().addCallback(lambda _: self._restartTimer())  # type: ignore[attr-defined]

    def _restartTimer(self) -> None:
        if not self._done and not self._requested and self._timer is None:
            self._timer = self.settings.reactor.callLater(self.settings.handshakeTimeout, self._timedOut)

    def _stopTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timedOut(self) -> None:
        self._timer = None
        if not self._requested:
            self._fail(StreamResult.TIMEOUT)

    def _request(self, request: ConnectRequest) -> None:
        settings = self.settings
        record = self.record
        self._requested = True
        self._stopTimer()
        settings.metrics.handshakeSeconds.observe(settings.reactor.seconds() - record.started)
        record.version = request.version
        record.host = request.host
        record.requested = formatDestination(request.host, request.port)
        record.port = request.port
        if request.rest:
            self._pending.append(request.rest)
        try:
            destination = normalize(request.host)
        except InvalidDestination:
            self._fail(StreamResult.BAD_REQUEST, self.parser.reply(Reply.HOST_UNREACHABLE))
            return
        record.normalized = str(destination)
        allowlist = settings.allowlist()
        verdict, rule = allowlist.match(destination, request.port)
        if verdict is Verdict.DENY:
            record.verdict = "deny"
            self._fail(StreamResult.DENIED, self.parser.reply(Reply.NOT_ALLOWED))
            return
        if rule is not None:
            record.verdict, record.rule = "allow", rule.text
        else:
            # Only IP rules could allow the name: its addresses decide (see resolved).
            record.verdict = "unresolved"
        started = settings.reactor.seconds()

        def resolved(addresses: list[IPAddress]) -> None:
            # What the name resolved to, and for a name only IP rules could
            # allow, the verdict and rule dial() is about to apply.
            record.addresses = [str(address) for address in addresses]
            if record.verdict == "unresolved":
                rule = allowlist.ruleForAddresses(record.addresses, request.port)
                record.verdict, record.rule = ("allow", rule.text) if rule is not None else ("deny", None)

        self._dialing = dial(
            settings.reactor,
            allowlist,
            destination,
            verdict,
            request.port,
            _TargetFactory(),
            settings.connectTimeout,
            resolved,
        )

        def connected(target: TargetProtocol) -> None:
            self._dialing = None
            if self._done:
                assert target.transport is not None
                target.transport.loseConnection()
                return
            record.dialSeconds = settings.reactor.seconds() - started
            self._done = True
            transport: Any = target.transport
            peer = transport.getPeer()
            bound = transport.getHost()
            record.dialled = formatDestination(peer.host, peer.port)
            if verdict is Verdict.CHECK_ADDRESSES:
                # The rule that allows the address actually dialled.
                dialledRule = allowlist.ruleForAddresses([peer.host.split("%")[0]], request.port)
                record.rule = dialledRule.text if dialledRule is not None else record.rule
            reply = self.parser.reply(Reply.SUCCEEDED, (bound.host, bound.port))
            record.reply = reply[1]  # as sent: 0 for SOCKS5, 0x5A for SOCKS4
            self.channel.write(reply)
            self.channel.resumeProducing()
            self.outcome.connected(target, self._pending, self._clientEOF)

        def failed(reason: Failure) -> None:
            self._dialing = None
            if self._done:
                return
            code, result = classify(reason)
            record.dialFailure = "address_not_allowed" if result == "denied" else result
            self._fail(StreamResult(result), self.parser.reply(code))

        self._dialing.addCallbacks(connected, failed)

    def _fail(self, result: StreamResult, reply: bytes = b"") -> None:
        if self._done:
            return
        self._done = True
        self._stopTimer()
        if reply:
            if len(reply) >= 2 and self._requested:
                self.record.reply = reply[1]
            self.channel.write(reply)
        self.outcome.failed(result)
        self.channel.loseConnection()


class _TargetFactory(protocol.ClientFactory):
    noisy = False
    protocol = TargetProtocol
