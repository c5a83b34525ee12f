"""
The relay connection's scheduler and flow control, in memory against Conch's
server: control messages overtake queued channel data, channels take turns
(those that have sent less first), nothing is lost or reordered within a
channel whatever the interleaving, back-pressure holds both ways, and the
windows follow the relay's queue.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from incident_connector.allowlist import Allowlist
from incident_connector.budget import Budget
from incident_connector.opening import OpeningSettings
from incident_connector.splice import SpliceSettings
from incident_connector.stream import ForwardedStream, StreamSettings
from incident_connector.tunnel.channel import (
    CONGESTED_WATER,
    HIGH_WATER,
    LEVEL_STEP,
    LEVELS,
    LOCAL_WINDOW,
    OPENING_WINDOW,
    ForwardedChannel,
)
from incident_connector.tunnel.connection import CONGESTION, PROBE_INTERVAL, SENT_WHILE_PROBING, TOP_SHARE
from incident_connector.tunnel.interfaces import IChannelOwner, IConnectionService, IRelayTransport, IStreamTransport

from .fakes import DestinationTransport
from .sshpeer import Pair, PeerChannel, openForwarded


class Producer:
    paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


class ScheduledPair:
    """
    A logged-in pair whose relay socket takes only C{room} bytes until the
    test "drains" it.
    """

    def __init__(self, channels: int) -> None:
        self.pair = Pair()
        self.pair.flush()
        self.room = 1 << 30
        client = self.pair.client
        client.sendRoom = lambda: self.room  # type: ignore[method-assign]
        send = client.sendChannelData

        def sendChannelData(packets: list[tuple[int, bytes]]) -> None:
            # What the socket took is no longer room.
            self.room -= sum(len(data) for _, data in packets)
            send(packets)

        client.sendChannelData = sendChannelData  # type: ignore[method-assign]
        assert self.pair.connection is not None
        self.connection = self.pair.connection
        self.peers: list[PeerChannel] = [openForwarded(self.pair.peer) for _ in range(channels)]
        self.pair.flush()
        self.channels: list[ForwardedChannel] = [stream.channel for stream in self.pair.streams]

    def drain(self, room: int) -> None:
        """
        The socket takes C{room} more bytes; what it took reaches the relay.
        """
        self.room = room
        self.connection.sendBufferDrained()
        self.pair.flush()
        self.room = 0

    def order(self) -> list[int]:
        """
        Which of our channels each data packet came from, in order.
        """
        ids = {channel.remoteId: n for n, channel in enumerate(self.channels)}
        return [ids[recipient] for recipient, _ in self.pair.server.data]


class SchedulerTests(SynchronousTestCase):
    def test_contracts(self) -> None:
        """
        Each layer provides the interface the one above or below it uses.
        """
        pair = ScheduledPair(1)
        self.assertTrue(verifyObject(IStreamTransport, pair.channels[0]))
        self.assertTrue(verifyObject(IChannelOwner, pair.connection))
        self.assertTrue(verifyObject(IConnectionService, pair.connection))
        self.assertTrue(verifyObject(IRelayTransport, pair.pair.client))

    def test_controlOvertakesQueuedData(self) -> None:
        """
        With data waiting for a busy socket, a keepalive goes out at once.
        """
        pair = ScheduledPair(2)
        pair.room = 0
        for channel in pair.channels:
            channel.write(b"d" * 200_000)
        pair.pair.flush()
        self.assertEqual(pair.pair.server.data, [])
        pair.connection._sendKeepalive()
        pair.pair.flush()
        self.assertEqual(pair.pair.server.seen[-1], 80)
        self.assertEqual(pair.pair.server.data, [])
        pair.drain(1 << 30)
        self.assertEqual(sum(length for _, length in pair.pair.server.data), 400_000)

    def test_roundRobin(self) -> None:
        """
        Bulk channels take one packet each in turn.
        """
        pair = ScheduledPair(3)
        for channel in pair.channels:
            channel.sent = 1 << 20  # all bulk
        pair.room = 0
        for channel in pair.channels:
            channel.write(b"b" * (4 * 32768))
        for _ in range(12):
            pair.drain(1)
        self.assertEqual(pair.order(), [0, 1, 2] * 4)

    def test_lightFirst(self) -> None:
        """
        A channel that has sent little (a handshake reply, an interactive
        stream) goes ahead of a bulk transfer's queue.
        """
        pair = ScheduledPair(2)
        bulk, light = pair.channels
        pair.room = 0
        bulk.write(b"b" * (8 * 32768))
        pair.drain(3 * 32768)
        light.write(b"\x05\x00")
        pair.drain(1)
        self.assertEqual(pair.order(), [0, 0, 0, 1])

    def test_lateStarterCatchesUp(self) -> None:
        """
        A transfer that starts while another runs is served alone until it
        has sent as much (to the step), then they take turns: it does not
        finish last by the other's head start.
        """
        pair = ScheduledPair(2)
        early, late = pair.channels
        early.sent = 4 * LEVEL_STEP
        pair.room = 0
        early.write(b"e" * (12 * 32768))
        late.write(b"l" * (12 * 32768))
        for _ in range(12):
            pair.drain(1)
        self.assertEqual(pair.order(), [1] * 8 + [0, 1] * 2)

    def test_catchingUpIsBounded(self) -> None:
        """
        A newer stream goes first for its first L{LEVELS} steps only, and
        even then a transfer past them keeps one turn in L{TOP_SHARE}; once
        caught up, they alternate.
        """
        pair = ScheduledPair(2)
        old, new = pair.channels
        old.sent = 100 * LEVELS * LEVEL_STEP
        pair.room = 0
        head = (LEVELS - 1) * LEVEL_STEP // 32768
        groups = head // (TOP_SHARE - 1)
        old.write(b"o" * ((groups + 2) * 32768))
        new.write(b"n" * ((head + 2) * 32768))
        for _ in range(head + groups + 4):
            pair.drain(1)
        self.assertEqual(pair.order(), ([1] * (TOP_SHARE - 1) + [0]) * groups + [1, 0] * 2)

    def test_newcomersDoNotStarveALongTransfer(self) -> None:
        """
        However many new streams are catching up, a transfer past the last
        level gets one turn in L{TOP_SHARE}.
        """
        pair = ScheduledPair(TOP_SHARE)
        pair.channels[0].sent = 100 * LEVELS * LEVEL_STEP
        pair.room = 0
        for channel in pair.channels:
            channel.write(b"d" * (4 * 32768))
        for _ in range(2 * TOP_SHARE):
            pair.drain(1)
        self.assertEqual(pair.order(), [*range(1, TOP_SHARE), 0] * 2)

    def test_endedChannelsLeaveTheirTurns(self) -> None:
        """
        While the relay keeps our socket full, streams that queued a reply and
        were then closed by the relay are forgotten at once, not kept until
        the socket drains (which the relay decides): their turns do not
        pile up.  The channel still open sends all of its data afterwards.
        """
        pair = ScheduledPair(1)
        pair.room = 0
        pair.channels[0].write(b"k" * 70_000)
        connection = pair.connection
        for _ in range(200):
            peer = openForwarded(pair.pair.peer)
            pair.pair.flush()
            pair.pair.streams[-1].channel.write(b"\x05\x00")
            peer.loseConnection()
            pair.pair.flush()
        self.assertEqual(list(connection.channels.values()), [pair.channels[0]])
        self.assertEqual(connection._turns.waiting, 1)
        self.assertEqual(sum(len(level) for level in connection._turns.levels), 1)
        pair.drain(1 << 30)
        self.assertEqual(sum(length for _, length in pair.pair.server.data), 70_000)
        self.assertEqual(connection._turns.waiting, 0)

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.tuples(st.just("write"), st.integers(0, 2), st.integers(1, 70_000)),
                st.tuples(st.just("drain"), st.integers(0, 200_000), st.just(0)),
                st.tuples(st.just("ping"), st.just(0), st.just(0)),
            ),
            max_size=25,
        )
    )
    def test_nothingLostOrReordered(self, steps: list[tuple[str, int, int]]) -> None:
        pair = ScheduledPair(3)
        pair.room = 0
        written = [b"", b"", b""]
        counter = 0
        for kind, index, size in steps:
            if kind == "write":
                data = bytes([counter % 251]) * size
                counter += 1
                pair.channels[index].write(data)
                written[index] += data
            elif kind == "drain":
                pair.drain(index)
            else:
                pair.connection._sendKeepalive()
        pair.drain(1 << 30)
        self.assertEqual([peer.received for peer in pair.peers], written)


class FlowControlTests(SynchronousTestCase):
    def test_producerPausedPastHighWater(self) -> None:
        pair = ScheduledPair(1)
        channel = pair.channels[0]
        producer = Producer()
        channel.registerProducer(producer, True)
        pair.room = 0
        channel.write(b"x" * (HIGH_WATER + 1))
        self.assertTrue(producer.paused)
        pair.drain(1 << 30)
        self.assertFalse(producer.paused)

    def test_congestionPausesTheStreamsWithQueues(self) -> None:
        """
        Past the connection's cap, streams with a read's worth waiting stop
        reading their destinations; an interactive one with a few bytes
        waiting, and an idle one, do not.
        """
        pair = ScheduledPair(3)
        producers = [Producer() for _ in pair.channels]
        for channel, producer in zip(pair.channels, producers, strict=True):
            channel.registerProducer(producer, True)
        pair.room = 0
        pair.channels[0].write(b"x" * 64)
        pair.channels[2].write(b"z" * CONGESTED_WATER)
        pair.channels[1].write(b"y" * (CONGESTION + 1))
        self.assertTrue(pair.connection.congested)
        self.assertEqual([p.paused for p in producers], [False, True, True])
        pair.drain(1 << 30)
        self.assertFalse(pair.connection.congested)
        self.assertEqual([p.paused for p in producers], [False, False, False])

    def test_congestedStreamReadsAgainOnceItsQueueIsSent(self) -> None:
        """
        While still congested, a stream whose waiting bytes went out reads
        its destination again: it holds about one read, never a turn behind
        every bulk transfer's queue.
        """
        pair = ScheduledPair(2)
        producers = [Producer() for _ in pair.channels]
        for channel, producer in zip(pair.channels, producers, strict=True):
            channel.registerProducer(producer, True)
        pair.room = 0
        pair.channels[0].write(b"q" * CONGESTED_WATER)
        pair.channels[1].write(b"y" * (CONGESTION + 1))
        self.assertEqual([p.paused for p in producers], [True, True])
        pair.drain(CONGESTED_WATER)
        self.assertTrue(pair.connection.congested)
        self.assertEqual([p.paused for p in producers], [False, True])

    def test_windowHeldWhileDestinationFull(self) -> None:
        """
        The relay gets no more window while the stream holds it, and gets it
        back at once when released.
        """
        pair = ScheduledPair(1)
        channel, peer = pair.channels[0], pair.peers[0]
        channel.pauseProducing()
        peer.write(b"z" * (LOCAL_WINDOW // 2 + 1))
        pair.pair.flush()
        self.assertLess(peer.remoteWindowLeft, LOCAL_WINDOW // 2)
        channel.resumeProducing()
        pair.pair.flush()
        self.assertEqual(peer.remoteWindowLeft, LOCAL_WINDOW)

    def test_windowNotExceeded(self) -> None:
        """
        Never more than the relay's window goes out; the rest waits for its
        adjustment.
        """
        pair = Pair()
        pair.flush()
        pair.peer.holdWindows = True
        peer = openForwarded(pair.peer, window=1000)
        pair.flush()
        stream = pair.streams[0]
        stream.channel.write(b"w" * 5000)
        pair.flush()
        self.assertEqual(len(peer.received), 1000)
        pair.peer.holdWindows = False
        peer.conn.adjustWindow(peer, 4000)
        pair.flush()
        self.assertEqual(len(peer.received), 5000)


class OpeningWindowTests(SynchronousTestCase):
    def test_aDialNotYetAnsweredHoldsOnlyTheOpeningWindow(self) -> None:
        """
        While a stream's destination has not accepted, the relay can make us
        keep at most the window the channel opened with, whatever it sends;
        once the destination accepts, the window grows and everything flows.
        """
        streams: list[ForwardedStream] = []

        def makeStream(channel: ForwardedChannel) -> ForwardedStream:
            settings = StreamSettings(
                OpeningSettings(pair.clock, lambda: Allowlist.parse(""), pair.metrics, 10.0, 10.0),
                SpliceSettings(pair.clock, 0, 0, Budget(1 << 30, pair.clock)),
                pair.metrics,
                [],
            )
            streams.append(ForwardedStream(settings))
            return streams[-1]

        pair = Pair(makeStream=makeStream)
        pair.flush()
        peer = openForwarded(pair.peer)
        pair.flush()
        request = b"\x05\x01\x00" + b"\x05\x01\x00\x01\x7f\x00\x00\x01" + struct.pack(">H", 5432)
        payload = b"p" * (LOCAL_WINDOW + 1)
        peer.write(request + payload)
        pair.flush()
        self.assertEqual(peer.remoteWindowLeft, 0)
        opening = streams[0].opening
        assert opening is not None
        self.assertLessEqual(sum(map(len, opening._pending)), OPENING_WINDOW)

        host, port, factory, _timeout, _bind = pair.clock.tcpClients[-1]
        self.assertEqual((host, port), ("127.0.0.1", 5432))
        target = factory.buildProtocol(IPv4Address("TCP", host, port))
        destination = DestinationTransport()
        target.makeConnection(destination)
        pair.flush()
        self.assertEqual(destination.value(), payload)


class WindowSizingTests(SynchronousTestCase):
    """
    Round trips timed while the relay sends channel data size every
    channel's window (the sizer itself: test_window).
    """

    def setUp(self) -> None:
        self.pair = Pair()
        self.pair.flush()
        self.peer = openForwarded(self.pair.peer)
        self.pair.flush()

    def probes(self) -> int:
        return self.pair.peer.channelRequests.count(b"keepalive@openssh.com")

    def test_probesWhileDataArrives(self) -> None:
        """
        Channel data from the relay gets one round trip timed, and another
        only L{PROBE_INTERVAL} later; no data, no probe.
        """
        self.pair.clock.advance(PROBE_INTERVAL)
        self.assertEqual(self.probes(), 0)
        self.peer.write(b"x" * 1000)
        self.pair.flush()
        self.assertEqual(self.probes(), 1)
        self.peer.write(b"x" * 1000)
        self.pair.flush()
        self.assertEqual(self.probes(), 1)
        self.pair.clock.advance(PROBE_INTERVAL)
        self.peer.write(b"x" * 1000)
        self.pair.flush()
        self.assertEqual(self.probes(), 2)

    def test_slowAnswersShrinkTheWindows(self) -> None:
        """
        When the relay's answer comes a second late behind more channel
        data, a new channel is offered half the window, and an open one is
        topped up only to that.
        """

        def answerLate() -> None:
            self.pair.peer.beforeAnswer = None
            self.peer.write(b"y" * 32768)
            self.pair.clock.advance(1.0)

        self.pair.peer.beforeAnswer = answerLate
        self.peer.write(b"x" * (LOCAL_WINDOW // 2 + 1))
        self.pair.flush()
        self.assertEqual(openForwarded(self.pair.peer), self.pair.peer.channels[1])
        self.pair.flush()
        self.assertEqual(self.pair.peer.channels[1].remoteWindowLeft, LOCAL_WINDOW // 2)
        # What was granted stands; once half the new size is left, it is
        # topped up to the new size.
        self.peer.write(b"z" * (self.peer.remoteWindowLeft - LOCAL_WINDOW // 4 + 1))
        self.pair.flush()
        self.assertEqual(self.peer.remoteWindowLeft, LOCAL_WINDOW // 2)

    def test_aKeyExchangeIsNoQueue(self) -> None:
        """
        An answer that came late because the relay re-keyed meanwhile says
        nothing about its queue: windows stay as they were.
        """

        def answerAfterRekey() -> None:
            self.pair.peer.beforeAnswer = None
            self.peer.write(b"y" * 32768)
            self.pair.server.sendKexInit()
            self.pair.clock.advance(1.0)

        self.pair.peer.beforeAnswer = answerAfterRekey
        self.peer.write(b"x" * 1000)
        self.pair.flush()
        self.assertEqual(self.pair.client.rekeys, 1)
        assert self.pair.connection is not None
        self.assertEqual(self.pair.connection.windowSize, LOCAL_WINDOW)

    def test_oneProbeAtATime(self) -> None:
        """
        While a probe is unanswered, data keeps coming and no other probe
        goes out; once it is answered, the next one does.
        """
        peer = self.pair.peer
        peer.holdAnswers = []
        for _ in range(4):
            self.peer.write(b"x" * 1000)
            self.pair.flush()
            self.pair.clock.advance(PROBE_INTERVAL)
        self.assertEqual(self.probes(), 1)
        held, peer.holdAnswers = peer.holdAnswers, None
        held[0].callback(0)
        self.pair.flush()
        self.peer.write(b"x" * 1000)
        self.pair.flush()
        self.assertEqual(self.probes(), 2)

    def test_probesDoNotStallOpenSSH(self) -> None:
        """
        The probe is a channel request: OpenSSH's sshd answers a global
        one only once it has written everything queued for us, which would
        stall it.  No global request goes out while data flows.
        """
        before = list(self.pair.peer.globalRequests)
        for _ in range(3):
            self.peer.write(b"x" * 1000)
            self.pair.flush()
            self.pair.clock.advance(PROBE_INTERVAL)
        self.assertEqual((self.probes(), self.pair.peer.globalRequests), (3, before))

    def test_aProbeOnAClosedChannel(self) -> None:
        """
        The relay closes the probe's channel before answering (OpenSSH then
        never answers): the next probe goes out on another channel, and a
        late answer on the closed one is no protocol error.
        """
        peer = self.pair.peer
        peer.holdAnswers = []
        self.peer.write(b"x" * 1000)
        self.pair.flush()
        held, peer.holdAnswers = peer.holdAnswers, None
        self.peer.loseConnection()
        held[0].callback(0)  # a relay that answers after its CLOSE
        self.pair.flush()
        other = openForwarded(peer)
        self.pair.flush()
        self.pair.clock.advance(PROBE_INTERVAL)
        other.write(b"y" * 1000)
        self.pair.flush()
        self.assertEqual(self.probes(), 2)
        self.assertFalse(self.pair.client.transport.disconnecting)  # type: ignore[union-attr]

    def test_closedChannelsAreForgottenWhileAProbeWaits(self) -> None:
        """
        A relay that never answers the probe, while streams come, send and
        go, does not make the connection remember every channel that ever
        sent: only open ones count towards the window's floor.
        """
        peer = self.pair.peer
        peer.holdAnswers = []
        self.peer.write(b"x" * 1000)
        self.pair.flush()
        self.assertEqual(self.probes(), 1)
        for _ in range(20):
            other = openForwarded(peer)
            self.pair.flush()
            # Its data and its CLOSE arrive in one read.
            other.write(b"y" * 1000)
            other.loseConnection()
            self.pair.flush()
        connection = self.pair.connection
        assert connection is not None
        self.assertEqual(len(connection.channels), 1)
        self.peer.write(b"x" * 1000)
        self.pair.flush()
        self.assertEqual(connection._receivers, {self.pair.streams[0].channel.localId})

    def test_ourUploadsMeanwhileMoveNothing(self) -> None:
        """
        A late answer while we sent the relay more than
        L{SENT_WHILE_PROBING} may have waited behind our own data: windows
        stay as they were.
        """
        channel = self.pair.streams[0].channel

        def answerLate() -> None:
            self.pair.peer.beforeAnswer = None
            self.peer.write(b"y" * 32768)
            channel.write(b"u" * (SENT_WHILE_PROBING + 1))
            self.pair.clock.advance(1.0)

        self.pair.peer.beforeAnswer = answerLate
        self.peer.write(b"x" * 1000)
        self.pair.flush()
        assert self.pair.connection is not None
        self.assertEqual(self.pair.connection.bytesSent, SENT_WHILE_PROBING + 1)
        self.assertEqual(self.pair.connection.windowSize, LOCAL_WINDOW)

    def test_quickAnswersKeepTheWindows(self) -> None:
        """
        On a link with no queue to speak of, windows stay at the most.
        """
        for _ in range(5):
            self.peer.write(b"x" * (LOCAL_WINDOW // 2 + 1))
            self.pair.flush()
            self.pair.clock.advance(PROBE_INTERVAL)
        self.assertEqual(self.probes(), 5)
        self.assertEqual(self.peer.remoteWindowLeft, LOCAL_WINDOW)
