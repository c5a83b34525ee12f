# -*- test-case-name: tests.unit.test_stream -*-
"""
One forwarded stream: the protocol on a C{forwarded-tcpip} channel.  It runs
the L{Opening} (SOCKS, allowlist, dial), then the L{Splice} (channel to
destination), and reports one L{StreamRecord} to every sink when it ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import error
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .metrics import ConnectorMetrics
from .opening import Opening, OpeningSettings
from .results import StreamRecord, StreamResult
from .splice import Splice, SpliceSettings, TargetProtocol
from .tunnel.interfaces import IStreamProtocol, IStreamTransport, Payload

if TYPE_CHECKING:
    from .policy import OpenStreams

__all__ = ["ForwardedStream", "Sink", "StreamSettings", "logStream", "meterStream"]

_log = Logger(namespace="incident_connector.stream")

Sink = Callable[[StreamRecord], None]


class StreamSettings:
    """
    What every stream of a connector shares.

    @ivar opening: for the handshake, allowlist and dial.
    @ivar splice: for relaying.
    @ivar metrics: where streams are counted.
    @ivar sinks: each is given the record of every stream that ended.
    @ivar openStreams: holds every open stream, if given (for a reloaded
        allowlist to close what it no longer allows).
    """

    def __init__(
        self,
        opening: OpeningSettings,
        splice: SpliceSettings,
        metrics: ConnectorMetrics,
        sinks: list[Sink],
        openStreams: OpenStreams | None = None,
    ) -> None:
        self.opening = opening
        self.splice = splice
        self.metrics = metrics
        self.sinks = sinks
        self.openStreams = openStreams


@implementer(IStreamProtocol)
class ForwardedStream:
    """
    The stream on one channel.

    @ivar settings: the connector-wide L{StreamSettings}.
    @ivar channel: its channel, once connected.
    @ivar record: what happened so far.
    @ivar opening: the opening phase, until it ends.
    @ivar splice: the splice, once the destination accepted.
    """

    __slots__ = ("channel", "opening", "record", "settings", "splice")

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        self.channel: IStreamTransport | None = None
        self.opening: Opening | None = None
        self.splice: Splice | None = None
        self.record = StreamRecord(started=0.0)

    def makeConnection(self, transport: Any) -> None:
        self.channel = transport
        self.connectionMade()

    def connectionMade(self) -> None:
        channel = self.channel
        assert channel is not None
        settings = self.settings
        record = self.record
        record.started = settings.opening.reactor.seconds()
        record.connection = channel.label
        record.originator = channel.originator
        settings.metrics.streamsActive.inc()
        self.opening = Opening(channel, settings.opening, record, self)
        if settings.openStreams is not None:
            settings.openStreams.add(self)

    # IStreamProtocol: what the channel calls.

    def dataReceived(self, data: Payload) -> None:
        if self.splice is not None:
            self.splice.fromChannel(data)
        elif self.opening is not None:
            self.opening.dataReceived(data)

    def dataSequenceReceived(self, data: list[Payload]) -> None:
        if self.splice is not None:
            self.splice.fromChannelSequence(data)
        elif self.opening is not None:
            for piece in data:
                self.opening.dataReceived(piece)

    def readConnectionLost(self) -> None:
        if self.splice is not None:
            self.splice.channelEOF()
        elif self.opening is not None:
            self.opening.clientEOF()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        relayLost = reason.check(error.ConnectionLost) is not None
        if self.splice is not None:
            self.splice.channelLost(relayLost)
        elif self.opening is not None:
            self.opening.cancel()
            self.opening = None
            if self.record.result is None:
                self.record.result = StreamResult.RELAY_LOST if relayLost else StreamResult.BAD_REQUEST
        self._report()

    # The opening's outcome.

    def connected(self, target: TargetProtocol, pending: list[bytes], clientEOF: bool) -> None:
        channel = self.channel
        assert channel is not None
        self.opening = None
        self.splice = splice = Splice(channel, target, self.settings.splice, self.record, self._ended)
        if pending:
            splice.fromChannelSequence(pending)
        if clientEOF:
            splice.channelEOF()

    def failed(self, result: StreamResult) -> None:
        self._ended(result)

    def _ended(self, result: StreamResult) -> None:
        if self.record.result is None:
            self.record.result = result

    def revoke(self) -> bool:
        """
        A reloaded allowlist no longer allows this stream: a spliced one
        ends (result C{revoked}), one still dialling is answered 0x02.
        """
        if self.splice is not None:
            self.splice.end(StreamResult.REVOKED)
            return True
        if self.opening is not None:
            self.opening.revoke()
            return True
        return False

    # Reporting, once the channel is gone.

    def _report(self) -> None:
        record = self.record
        if record.ended is not None:
            return
        record.ended = self.settings.opening.reactor.seconds()
        if record.result is None:
            record.result = StreamResult.OK
        self.settings.metrics.streamsActive.dec()
        if self.settings.openStreams is not None:
            self.settings.openStreams.discard(self)
        for sink in self.settings.sinks:
            sink(record)

    def logPrefix(self) -> str:
        return "stream"


def logStream(record: StreamRecord) -> None:
    """
    The sink writing one line per stream.
    """
    assert record.result is not None
    _log.info(
        "stream {destination} {result}: {up} bytes up, {down} bytes down, {duration:.3f} s",
        destination=record.requested,
        result=record.result.value,
        up=record.up,
        down=record.down,
        duration=record.duration,
    )


def meterStream(metrics: ConnectorMetrics) -> Sink:
    """
    The sink counting every stream in C{metrics}.
    """

    def meter(record: StreamRecord) -> None:
        assert record.result is not None
        rule = record.rule or "none"
        metrics.streams.labels(result=record.result.value).inc()
        metrics.bytes.labels(direction="up").inc(record.up)
        metrics.bytes.labels(direction="down").inc(record.down)
        metrics.ruleStreams.labels(rule=rule, result=record.result.value).inc()
        metrics.ruleBytes.labels(rule=rule, direction="up").inc(record.up)
        metrics.ruleBytes.labels(rule=rule, direction="down").inc(record.down)
        if record.dialSeconds is not None:
            metrics.dialSeconds.observe(record.dialSeconds)
            metrics.ruleDialSeconds.labels(rule=rule).observe(record.dialSeconds)
        if record.dialFailure is not None:
            metrics.dialFailures.labels(rule=rule, reason=record.dialFailure).inc()

    return meter
