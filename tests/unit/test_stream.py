"""
One stream in memory, on a fake channel that implements L{IStreamTransport}:
whatever bytes arrive, split anywhere, it never raises and either waits or
answers with a valid SOCKS reply and closes; the handshake clock measures the
client, not our queue; once spliced, bytes, half-close, timeouts and letting
go; one record per stream, reported once.
"""

from __future__ import annotations

import itertools
import struct
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, protocol, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from incident_connector.allowlist import Allowlist
from incident_connector.budget import Budget
from incident_connector.metrics import ConnectorMetrics
from incident_connector.opening import OpeningSettings
from incident_connector.results import StreamRecord, StreamResult
from incident_connector.splice import (
    FIRST_READ,
    FLUSH_DEADLINE,
    PAUSED_READ,
    READ_SIZE,
    ReadSizer,
    Splice,
    SpliceSettings,
    TargetProtocol,
)
from incident_connector.stream import ForwardedStream, StreamSettings, meterStream
from incident_connector.tunnel.channel import ForwardedChannel
from incident_connector.tunnel.interfaces import IStreamProtocol, IStreamTransport

from .fakes import DestinationTransport, FakeChannel

METRICS = ConnectorMetrics()

VALID_FINAL = {
    # what a closed channel may have been told, by first byte of the request
    5: lambda sent: sent in (b"", b"\x05\xff") or (sent.startswith(b"\x05\x00") and len(sent) in (2, 12)),
    4: lambda sent: sent == b"" or (len(sent) == 8 and sent[:2] == b"\x00\x5b"),
}

CONNECT = b"\x05\x01\x00" + b"\x05\x01\x00\x01\x7f\x00\x00\x01" + struct.pack(">H", 5432)


class Harness:
    """
    A stream on a fake channel, with an in-memory reactor for dials and timers.
    """

    def __init__(
        self,
        allowlist: str = "",
        idle: float = 0.0,
        halfClose: float = 300.0,
        handshake: float = 10.0,
        settings: StreamSettings | None = None,
        reactor: MemoryReactorClock | None = None,
    ) -> None:
        self.reactor = reactor or MemoryReactorClock()
        self.records: list[StreamRecord] = []
        self.budget = Budget(1 << 30, self.reactor)
        parsed = Allowlist.parse(allowlist)
        self.settings = settings or StreamSettings(
            OpeningSettings(self.reactor, lambda: parsed, METRICS, 10.0, handshake),
            SpliceSettings(self.reactor, idle, halfClose, self.budget),
            METRICS,
            [self.records.append],
        )
        self.channel = FakeChannel()
        self.stream = ForwardedStream(self.settings)
        self.channel.protocol = self.stream
        self.stream.makeConnection(self.channel)

    def feed(self, data: bytes, cuts: list[int] = []) -> None:  # noqa: B006
        points = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
        for start, end in itertools.pairwise(points):
            if self.channel.closed:
                break
            self.stream.dataReceived(data[start:end])

    def accept(self) -> DestinationTransport:
        """
        The destination the stream dialled accepts.
        """
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = DestinationTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 40000), peerAddress=IPv4Address("TCP", host, port)
        )
        # The endpoint's wrapper fires the dial's Deferred from connectionMade.
        protocol.makeConnection(transport)
        transport.protocol = protocol._wrappedProtocol
        return transport

    @property
    def record(self) -> StreamRecord:
        [record] = self.records
        return record


class ContractTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        harness = Harness()
        self.assertTrue(verifyObject(IStreamTransport, harness.channel))
        self.assertTrue(verifyObject(IStreamProtocol, harness.stream))

    def test_compactPerStreamObjects(self) -> None:
        """
        The objects a stream keeps have slots, no per-instance dictionary.
        """
        for cls in (ForwardedStream, ForwardedChannel, Splice, StreamRecord):
            self.assertFalse(hasattr(cls, "__dict__") and "__dict__" in cls.__dict__.get("__slots__", ()), cls)
            self.assertIn("__slots__", cls.__dict__, cls)


class HandshakeTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=400),
            st.binary(max_size=300).map(lambda b: b"\x05" + b),
            st.binary(max_size=300).map(lambda b: b"\x05\x01\x00\x05" + b),
            st.binary(max_size=300).map(lambda b: b"\x04" + b),
        ),
        st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    )
    def test_arbitraryBytes(self, data: bytes, cuts: list[int]) -> None:
        harness = Harness("none")
        harness.feed(data, cuts)
        channel = harness.channel
        if channel.closed:
            version = data[0] if data else 0
            if version in VALID_FINAL:
                self.assertTrue(VALID_FINAL[version](channel.sent), (data, channel.sent))
            else:
                self.assertEqual(channel.sent, b"")
        else:
            # Still waiting for more: the handshake timeout will close it.
            harness.reactor.advance(10)
            self.assertTrue(channel.closed)
        self.assertEqual(len(harness.records), 1)

    def test_deniedRequestAnswered(self) -> None:
        request = b"\x05\x01\x00" + b"\x05\x01\x00\x03\x02db\x00\x50"
        for split in range(1, len(request)):
            harness = Harness("none")
            harness.feed(request, [split])
            self.assertTrue(harness.channel.closed)
            self.assertEqual(harness.channel.sent, b"\x05\x00" + bytes([5, 2, 0, 1, 0, 0, 0, 0, 0, 0]))
            self.assertEqual(harness.record.result, StreamResult.DENIED)
            self.assertEqual(harness.record.requested, "db:80")
            self.assertEqual(harness.record.reply, 2)

    def test_clockStopsWhileOurReplyWaits(self) -> None:
        """
        On a busy relay link our method reply may wait: the client's time
        starts when it is out, not when it was written.
        """
        harness = Harness(handshake=10)
        sent: defer.Deferred[None] = defer.Deferred()
        harness.channel.whenSent = lambda: sent  # type: ignore[method-assign]
        harness.feed(b"\x05\x01\x00")
        harness.reactor.advance(60)
        self.assertFalse(harness.channel.closed)
        sent.callback(None)
        harness.reactor.advance(9)
        self.assertFalse(harness.channel.closed)
        harness.reactor.advance(1)
        self.assertTrue(harness.channel.closed)
        self.assertEqual(harness.record.result, StreamResult.TIMEOUT)


class SpliceTests(SynchronousTestCase):
    def spliced(self, **kw: Any) -> tuple[Harness, DestinationTransport]:
        harness = Harness(**kw)
        harness.feed(CONNECT)
        self.assertTrue(harness.channel.held, "no payload until the destination accepts")
        destination = harness.accept()
        self.assertFalse(harness.channel.held)
        self.assertEqual(harness.channel.sent[2:4], b"\x05\x00")
        return harness, destination

    def test_bytesBothWays(self) -> None:
        harness, destination = self.spliced()
        harness.stream.dataReceived(b"up")
        harness.stream.dataSequenceReceived([b"a", b"b"])
        destination.protocol.dataReceived(b"down")
        self.assertEqual(destination.value(), b"upab")
        self.assertTrue(harness.channel.sent.endswith(b"down"))
        harness.stream.connectionLost(_done())
        self.assertEqual((harness.record.up, harness.record.down), (4, 4))
        self.assertEqual(harness.record.result, StreamResult.OK)
        self.assertEqual(harness.record.dialled, "127.0.0.1:5432")

    def test_payloadBeforeReply(self) -> None:
        """
        Bytes the client sent right after its request reach the destination first.
        """
        harness = Harness()
        harness.feed(CONNECT + b"early")
        harness.stream.dataReceived(b" bird")
        destination = harness.accept()
        self.assertEqual(destination.value(), b"early bird")

    def test_halfCloseBothWays(self) -> None:
        harness, destination = self.spliced()
        harness.stream.dataReceived(b"request")
        harness.stream.readConnectionLost()
        self.assertEqual(destination.shutAfter, b"request")
        destination.protocol.dataReceived(b"answer")
        destination.protocol.readConnectionLost()
        self.assertTrue(harness.channel.eofSent)
        self.assertIsNotNone(destination.closedAfter)

    def test_idleTimeoutLetsGo(self) -> None:
        """
        An idle stream is closed; a destination that never flushes is aborted
        after the flush deadline, so its descriptor and buffer go.
        """
        harness, destination = self.spliced(idle=5)
        harness.reactor.advance(5)
        self.assertTrue(harness.channel.closed)
        self.assertEqual(harness.record.result, StreamResult.IDLE)
        self.assertFalse(destination.aborted)
        harness.reactor.advance(FLUSH_DEADLINE)
        self.assertTrue(destination.aborted)

    def test_halfCloseTimeout(self) -> None:
        harness, destination = self.spliced(halfClose=30)
        harness.stream.readConnectionLost()
        harness.reactor.advance(29)
        destination.protocol.dataReceived(b"still talking")
        harness.reactor.advance(29)
        self.assertFalse(harness.channel.closed)
        harness.reactor.advance(1)
        self.assertTrue(harness.channel.closed)
        self.assertEqual(harness.record.result, StreamResult.HALF_CLOSE_TIMEOUT)

    def test_halfCloseTimeoutUnderALongerIdleTimeout(self) -> None:
        """
        With --stream-idle-timeout longer than --half-close-timeout, a stream
        half-closed by either side and then silent still ends after the
        half-close timeout, not the idle one.
        """
        for side in ("client", "destination"):
            harness, destination = self.spliced(idle=3600, halfClose=300)
            harness.reactor.advance(10)
            if side == "client":
                harness.stream.readConnectionLost()
            else:
                destination.protocol.readConnectionLost()
            harness.reactor.advance(299)
            self.assertFalse(harness.channel.closed, side)
            harness.reactor.advance(1)
            self.assertTrue(harness.channel.closed, side)
            self.assertEqual(harness.record.result, StreamResult.HALF_CLOSE_TIMEOUT, side)

    def test_relayLost(self) -> None:
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        harness, destination = self.spliced()
        harness.stream.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(harness.record.result, StreamResult.RELAY_LOST)
        self.assertIsNotNone(destination.closedAfter)
        harness.reactor.advance(FLUSH_DEADLINE)
        self.assertTrue(destination.aborted)

    def test_destinationClosesFirst(self) -> None:
        harness, destination = self.spliced()
        destination.protocol.dataReceived(b"bye")
        destination.protocol.connectionLost(_done())
        self.assertTrue(harness.channel.closed)
        self.assertEqual(harness.record.result, StreamResult.OK)
        self.assertEqual(len(harness.records), 1)

    def test_readSizeFollowsTheDestination(self) -> None:
        """
        A destination is read in small pieces until it fills them, then in
        larger ones up to READ_SIZE, and in smaller ones again once it goes
        quiet; while the relay cannot take more its reads are PAUSED_READ,
        and they do not count as the destination going quiet.
        """
        sizes: list[int] = []
        with mock.patch("incident_connector._twisted.setReadSize", lambda _t, size: sizes.append(size)):
            harness, destination = self.spliced()
            self.assertEqual(sizes, [FIRST_READ])
            for size in (FIRST_READ, 4 * FIRST_READ, READ_SIZE):
                destination.protocol.dataReceived(b"x" * size)
            self.assertEqual(sizes, [FIRST_READ, 4 * FIRST_READ, READ_SIZE])
            splice = harness.stream.splice
            assert splice is not None
            splice.pauseProducing()
            for _ in range(3):
                destination.protocol.dataReceived(b"x" * PAUSED_READ)
            splice.resumeProducing()
            self.assertEqual(sizes[-2:], [PAUSED_READ, READ_SIZE])
            destination.protocol.dataReceived(b"small")
            destination.protocol.dataReceived(b"small")
            self.assertEqual(sizes[-1], READ_SIZE // 2)
        self.assertEqual(harness.channel.sent.count(b"x"), FIRST_READ + 4 * FIRST_READ + READ_SIZE + 3 * PAUSED_READ)


class ReadSizerTests(SynchronousTestCase):
    def test_growsOnFullReads(self) -> None:
        sizer = ReadSizer()
        seen = [sizer.size]
        for _ in range(4):
            sizer.got(sizer.size)
            seen.append(sizer.size)
        self.assertEqual(seen, [FIRST_READ, 4 * FIRST_READ, 16 * FIRST_READ, READ_SIZE, READ_SIZE])

    def test_shrinksAfterTwoSmallReadsInARow(self) -> None:
        sizer = ReadSizer()
        sizer.size = READ_SIZE
        self.assertFalse(sizer.got(10))
        self.assertTrue(sizer.got(10))
        self.assertEqual(sizer.size, READ_SIZE // 2)
        # A read using a quarter or more in between starts the count again.
        sizer.got(10)
        sizer.got(READ_SIZE // 4)
        sizer.got(10)
        self.assertEqual(sizer.size, READ_SIZE // 2)

    def test_neverBelowTheFirstRead(self) -> None:
        sizer = ReadSizer()
        for _ in range(10):
            self.assertFalse(sizer.got(1))
        self.assertEqual(sizer.size, FIRST_READ)


class Resolver:
    """
    A name resolver answering every name with C{answers} (none: NXDOMAIN).
    """

    def __init__(self, *answers: str) -> None:
        self.answers = answers

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0, **kw: Any) -> None:
        receiver.resolutionBegan(None)
        for answer in self.answers:
            receiver.addressResolved(IPv4Address("TCP", answer, portNumber))
        receiver.resolutionComplete()


def socks5(host: bytes, port: int) -> bytes:
    return b"\x05\x01\x00" + b"\x05\x01\x00\x03" + bytes([len(host)]) + host + struct.pack(">H", port)


class RecordTests(SynchronousTestCase):
    """
    What the opening writes into the record that every sink reads: the
    request as sent, its normal form, the addresses, the verdict and the
    entry that allowed it, and why a dial failed.
    """

    def opened(self, allowlist: str, host: bytes, *answers: str) -> Harness:
        harness = Harness(allowlist)
        harness.reactor.nameResolver = Resolver(*answers)  # type: ignore[attr-defined]
        harness.feed(socks5(host, 5432))
        return harness

    def test_allowedByName(self) -> None:
        harness = self.opened("*:80 DB.Internal:5432", b"db.INTERNAL.", "10.0.0.5", "10.0.0.6")
        harness.reactor.advance(0.25)
        destination = harness.accept()
        destination.protocol.dataReceived(b"hi")
        harness.stream.connectionLost(_done())
        record = harness.record
        self.assertEqual(
            (record.version, record.host, record.requested, record.port, record.normalized),
            (5, "db.INTERNAL.", "db.INTERNAL.:5432", 5432, "db.internal"),
        )
        self.assertEqual((record.verdict, record.rule), ("allow", "DB.Internal:5432"))
        self.assertEqual(record.addresses, ["10.0.0.5", "10.0.0.6"])
        self.assertEqual((record.dialled, record.reply, record.dialSeconds), ("10.0.0.5:5432", 0, 0.25))
        self.assertEqual((record.dialFailure, record.result, record.down), (None, StreamResult.OK, 2))
        self.assertEqual(record.originator, ("127.0.0.1", 50000))
        self.assertRegex(record.id, r"^[0-9a-f]{8}-\d+$")

    def test_idsDiffer(self) -> None:
        first = Harness()
        for _ in range(2):
            Harness(settings=first.settings).stream.connectionLost(_done())
        first.stream.connectionLost(_done())
        self.assertEqual(len({record.id for record in first.records}), 3)

    def test_addressesDecide(self) -> None:
        """
        A name only an IP rule can allow: the rule that allowed its addresses.
        """
        harness = self.opened("db:1 10.0.0.0/8:5432", b"db.internal", "10.0.0.5")
        harness.accept()
        harness.stream.connectionLost(_done())
        self.assertEqual((harness.record.verdict, harness.record.rule), ("allow", "10.0.0.0/8:5432"))

    def test_addressNotAllowed(self) -> None:
        harness = self.opened("10.0.0.0/8:5432", b"db.internal", "10.0.0.5", "127.0.0.1")
        record = harness.record
        self.assertEqual((record.verdict, record.rule, record.reply), ("deny", None, 2))
        self.assertEqual((record.dialFailure, record.result), ("address_not_allowed", StreamResult.DENIED))
        self.assertEqual(record.addresses, ["10.0.0.5", "127.0.0.1"])
        self.assertEqual(harness.reactor.tcpClients, [])

    def test_dnsFailure(self) -> None:
        for allowlist, verdict, rule in [
            ("db.internal:5432", "allow", "db.internal:5432"),
            ("10.0.0.0/8:*", "unresolved", None),
        ]:
            harness = self.opened(allowlist, b"db.internal")
            record = harness.record
            self.assertEqual((record.verdict, record.rule, record.addresses), (verdict, rule, []))
            self.assertEqual(
                (record.dialFailure, record.result, record.reply), ("dns_error", StreamResult.DNS_ERROR, 4)
            )

    def test_refused(self) -> None:
        from twisted.internet.error import ConnectionRefusedError
        from twisted.python.failure import Failure

        harness = self.opened("", b"db", "127.0.0.1")
        _host, _port, factory, _timeout, _bind = harness.reactor.tcpClients[-1]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        record = harness.record
        self.assertEqual((record.verdict, record.rule, record.dialled), ("allow", "any", None))
        self.assertEqual((record.dialFailure, record.result, record.reply), ("refused", StreamResult.REFUSED, 5))

    def test_socks4Reply(self) -> None:
        """
        The reply code is recorded as sent: SOCKS4 says 0x5A for success.
        """
        harness = Harness()
        harness.feed(b"\x04\x01\x15\x38\x7f\x00\x00\x01\x00")
        harness.accept()
        harness.stream.connectionLost(_done())
        self.assertEqual((harness.record.version, harness.record.reply), (4, 0x5A))

    def test_deniedAndInvalid(self) -> None:
        harness = self.opened("db:1", b"db")
        self.assertEqual(
            (harness.record.verdict, harness.record.rule, harness.record.dialFailure), ("deny", None, None)
        )
        harness = self.opened("", b"a..b")
        record = harness.record
        self.assertEqual(
            (record.host, record.normalized, record.verdict, record.result),
            ("a..b", None, None, StreamResult.BAD_REQUEST),
        )


class MeterTests(SynchronousTestCase):
    """
    The metrics sink: per-rule series move by exactly what the records say.
    """

    def test_perRule(self) -> None:
        metrics = ConnectorMetrics()
        meter = meterStream(metrics)
        rule = "DB.Internal:5432"
        for up, down, seconds in [(10, 20, 0.003), (1, 2, 0.2)]:
            meter(StreamRecord(0, verdict="allow", rule=rule, up=up, down=down, dialSeconds=seconds, result=OK))
        meter(StreamRecord(0, verdict="allow", rule=rule, dialFailure="refused", result=StreamResult.REFUSED))
        meter(StreamRecord(0, verdict="deny", result=StreamResult.DENIED))
        meter(StreamRecord(0, result=StreamResult.BAD_REQUEST))
        sample = metrics.registry.get_sample_value
        self.assertEqual(sample("incident_connector_rule_streams_total", {"rule": rule, "result": "ok"}), 2)
        self.assertEqual(sample("incident_connector_rule_streams_total", {"rule": rule, "result": "refused"}), 1)
        self.assertEqual(sample("incident_connector_rule_streams_total", {"rule": "none", "result": "denied"}), 1)
        self.assertEqual(sample("incident_connector_rule_streams_total", {"rule": "none", "result": "bad_request"}), 1)
        self.assertEqual(sample("incident_connector_rule_bytes_total", {"rule": rule, "direction": "up"}), 11)
        self.assertEqual(sample("incident_connector_rule_bytes_total", {"rule": rule, "direction": "down"}), 22)
        self.assertEqual(sample("incident_connector_rule_dial_seconds_count", {"rule": rule}), 2)
        self.assertEqual(sample("incident_connector_rule_dial_seconds_bucket", {"rule": rule, "le": "0.005"}), 1)
        self.assertEqual(sample("incident_connector_dial_seconds_count", {}), 2)
        self.assertEqual(sample("incident_connector_dial_failures_total", {"rule": rule, "reason": "refused"}), 1)


OK = StreamResult.OK


def _done() -> Any:
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    return Failure(ConnectionDone())


class EndedStreamTests(TestCase):
    """
    Against a real TCP destination: what reaches a stream after it ended.
    """

    timeout = 10

    @defer.inlineCallbacks
    def test_clientEOFAfterTheDestinationClosed(self) -> None:
        """
        A stream ended (idle timeout, revoke, drain) while its channel still
        holds data for a client that does not read: its destination closes at
        once, and the client's EOF that follows is nothing to act on. It
        used to half-close the closed connection, whose ValueError (fd -1)
        ended the whole relay connection.
        """
        listening = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(protocol.Protocol)
        )
        self.addCleanup(listening.stopListening)
        gone: defer.Deferred[None] = defer.Deferred()

        class Target(TargetProtocol):
            def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
                super().connectionLost(reason)
                gone.callback(None)

        target = yield TCP4ClientEndpoint(reactor, "127.0.0.1", listening.getHost().port).connect(
            protocol.Factory.forProtocol(Target)
        )
        channel = _DrainingChannel()
        splice = Splice(channel, target, SpliceSettings(reactor, 0, 0, Budget(0, reactor)), StreamRecord(0), _ignore)
        splice.end(StreamResult.IDLE)
        yield gone
        self.addCleanup(
            lambda: splice._deadline is not None and splice._deadline.active() and splice._deadline.cancel()
        )
        self.assertTrue(channel.closeAfterDrain)
        splice.channelEOF()
        self.assertFalse(channel.aborted)


class _DrainingChannel(FakeChannel):
    """
    Holds data for a client that does not read: like L{ForwardedChannel},
    closing only marks it to close once drained, and the stream stays on it.
    """

    closeAfterDrain = False

    def loseConnection(self) -> None:
        self.closeAfterDrain = True


def _ignore(record: StreamRecord) -> None:
    pass


def _cancelDeadline(splice: Splice) -> None:
    if splice._deadline is not None and splice._deadline.active():
        splice._deadline.cancel()
