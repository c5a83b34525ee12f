"""
The stream protocol in memory: whatever bytes arrive, split anywhere, it
never raises, and it either waits for more or answers with a valid SOCKS
reply and closes the channel.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.allowlist import Allowlist
from incident_connector.metrics import ConnectorMetrics
from incident_connector.stream import ForwardedStream, StreamSettings


class FakeConnection:
    """
    The parts of an SSH connection a channel talks to, recording what it says.
    """

    gathered = None

    def __init__(self) -> None:
        self.sent = b""
        self.closed = False

    def sendPackets(self, channel: Any, packets: list[bytes]) -> None:
        assert not self.closed, "data after close"
        self.sent += b"".join(packets)

    def sendEOF(self, channel: Any) -> None:
        pass

    def sendClose(self, channel: Any) -> None:
        self.closed = True
        channel.localClosed = True

    def adjustWindow(self, channel: Any, bytesToAdd: int) -> None:
        channel.localWindowLeft += bytesToAdd


METRICS = ConnectorMetrics()

VALID_FINAL = {
    # what a closed channel may have been told, by first byte of the request
    5: lambda sent: sent in (b"", b"\x05\xff") or (sent.startswith(b"\x05\x00") and len(sent) in (2, 12)),
    4: lambda sent: sent == b"" or (len(sent) == 8 and sent[:2] == b"\x00\x5b"),
}


def feed(allowlist: str, data: bytes, cuts: list[int]) -> tuple[FakeConnection, ForwardedStream, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    streamSettings = StreamSettings(reactor=reactor, allowlist=Allowlist.parse(allowlist), metrics=METRICS)
    conn = FakeConnection()
    stream = ForwardedStream(streamSettings, remoteWindow=1 << 20, remoteMaxPacket=32768, conn=conn)  # type: ignore[arg-type]
    stream.channelOpen(b"")
    points = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for start, end in itertools.pairwise(points):
        if conn.closed:
            break
        stream.dataReceived(data[start:end])
    return conn, stream, reactor


class StreamPropertyTests(SynchronousTestCase):
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
        conn, _stream, reactor = feed("none", data, cuts)
        if conn.closed:
            version = data[0] if data else 0
            if version in VALID_FINAL:
                self.assertTrue(VALID_FINAL[version](conn.sent), (data, conn.sent))
            else:
                self.assertEqual(conn.sent, b"")
        else:
            # Still waiting for more: the handshake timeout will close it.
            reactor.advance(10)
            self.assertTrue(conn.closed)

    def test_deniedRequestAnswered(self) -> None:
        request = b"\x05\x01\x00" + b"\x05\x01\x00\x03\x02db\x00\x50"
        for split in range(1, len(request)):
            conn, _stream, _ = feed("none", request, [split])
            self.assertTrue(conn.closed)
            self.assertEqual(conn.sent, b"\x05\x00" + bytes([5, 2, 0, 1, 0, 0, 0, 0, 0, 0]))
