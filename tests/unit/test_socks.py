"""
The SOCKS state machine, byte by byte.
"""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.socks import (
    AddressType,
    BadVersion,
    ConnectRequest,
    MalformedRequest,
    MethodSelected,
    NoAcceptableMethods,
    Reply,
    SOCKSError,
    SOCKSServerParser,
    UnsupportedAddressType,
    UnsupportedCommand,
    buildReply,
)

GREETING = b"\x05\x01\x00"
V5_DOMAIN = b"\x05\x01\x00\x03\x0bexample.com\x01\xbb"
V5_IPV4 = b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50"
V5_IPV6 = b"\x05\x01\x00\x04" + b"\x00" * 15 + b"\x01" + b"\x1f\x90"
V4 = b"\x04\x01\x00\x50\x0a\x00\x00\x01user\x00"
V4A = b"\x04\x01\x01\xbb\x00\x00\x00\x07\x00db.internal\x00"


def feedAll(data: bytes, splits: list[int] | None = None) -> list[object]:
    parser = SOCKSServerParser()
    events: list[object] = []
    points = [0, *(splits or []), len(data)]
    for start, end in itertools.pairwise(points):
        events.extend(parser.feed(data[start:end]))
        if events and isinstance(events[-1], ConnectRequest):
            break
    return events


class RequestTests(SynchronousTestCase):
    def test_socks5Domain(self) -> None:
        events = feedAll(GREETING + V5_DOMAIN)
        self.assertEqual(
            events,
            [MethodSelected(b"\x05\x00"), ConnectRequest(5, "example.com", 443, AddressType.DOMAIN)],
        )

    def test_socks5IPv4(self) -> None:
        self.assertEqual(feedAll(GREETING + V5_IPV4)[-1], ConnectRequest(5, "127.0.0.1", 80, AddressType.IPV4))

    def test_socks5IPv6(self) -> None:
        self.assertEqual(feedAll(GREETING + V5_IPV6)[-1], ConnectRequest(5, "::1", 8080, AddressType.IPV6))

    def test_socks4(self) -> None:
        self.assertEqual(feedAll(V4), [ConnectRequest(4, "10.0.0.1", 80, AddressType.IPV4)])

    def test_socks4a(self) -> None:
        self.assertEqual(feedAll(V4A), [ConnectRequest(4, "db.internal", 443, AddressType.DOMAIN)])

    def test_payloadAfterRequest(self) -> None:
        """
        Bytes sent before the reply are kept as stream payload, not parsed.
        """
        events = feedAll(GREETING + V5_DOMAIN + b"GET / HTTP/1.0\r\n")
        self.assertEqual(events[-1].rest, b"GET / HTTP/1.0\r\n")  # type: ignore[attr-defined]

    def test_everySplit(self) -> None:
        """
        A request split at any point, or dribbled byte by byte, parses the same.
        """
        for message in (GREETING + V5_DOMAIN, GREETING + V5_IPV6, V4, V4A):
            whole = feedAll(message)
            for split in range(1, len(message)):
                self.assertEqual(feedAll(message, [split]), whole, (message, split))
            self.assertEqual(feedAll(message, list(range(1, len(message)))), whole)

    def test_preferNoAuth(self) -> None:
        """
        A greeting offering several methods including no-auth selects no-auth.
        """
        self.assertEqual(feedAll(b"\x05\x03\x02\x01\x00")[0], MethodSelected(b"\x05\x00"))


class ErrorTests(SynchronousTestCase):
    def assertFails(self, data: bytes, error: type[SOCKSError], response: bytes) -> None:
        parser = SOCKSServerParser()
        exc = self.assertRaises(error, parser.feed, data)
        # A greeting in the same read is answered before the error.
        greeted = data.startswith(GREETING) and error is not NoAcceptableMethods
        self.assertEqual(exc.response, (b"\x05\x00" if greeted else b"") + response)

    def test_badVersion(self) -> None:
        self.assertFails(b"\x06\x01\x00", BadVersion, b"")

    def test_noAcceptableMethod(self) -> None:
        self.assertFails(b"\x05\x01\x02", NoAcceptableMethods, b"\x05\xff")

    def test_bind(self) -> None:
        self.assertFails(GREETING + b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50", UnsupportedCommand, reply5(0x07))

    def test_udpAssociate(self) -> None:
        self.assertFails(GREETING + b"\x05\x03\x00\x01\x7f\x00\x00\x01\x00\x50", UnsupportedCommand, reply5(0x07))

    def test_unknownAddressType(self) -> None:
        self.assertFails(GREETING + b"\x05\x01\x00\x09\x00\x00", UnsupportedAddressType, reply5(0x08))

    def test_wrongRequestVersion(self) -> None:
        self.assertFails(GREETING + b"\x04\x01\x00\x01\x7f\x00\x00\x01\x00\x50", MalformedRequest, reply5(0x01))

    def test_emptyDomain(self) -> None:
        self.assertFails(GREETING + b"\x05\x01\x00\x03\x00\x00\x50", MalformedRequest, reply5(0x01))

    def test_socks4Bind(self) -> None:
        self.assertFails(b"\x04\x02\x00\x50\x0a\x00\x00\x01\x00", UnsupportedCommand, b"\x00\x5b" + b"\x00" * 6)

    def test_socks4EndlessUserId(self) -> None:
        """
        A user ID that never ends is cut off, not buffered forever.
        """
        parser = SOCKSServerParser()
        parser.feed(b"\x04\x01\x00\x50\x0a\x00\x00\x01")
        exc = self.assertRaises(MalformedRequest, parser.feed, b"A" * 2000)
        self.assertEqual(exc.response, b"\x00\x5b" + b"\x00" * 6)

    def test_greetingAnsweredBeforeError(self) -> None:
        """
        A greeting and a bad request in one read: the method selection still
        precedes the error reply.
        """
        parser = SOCKSServerParser()
        bind = b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50"
        exc = self.assertRaises(UnsupportedCommand, parser.feed, GREETING + bind)
        self.assertEqual(exc.response, b"\x05\x00" + reply5(0x07))

    def test_feedAfterDone(self) -> None:
        parser = SOCKSServerParser()
        parser.feed(V4)
        self.assertRaises(RuntimeError, parser.feed, b"x")


def reply5(code: int) -> bytes:
    return bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])


class ReplyTests(SynchronousTestCase):
    def test_everySocks5Code(self) -> None:
        for code in Reply:
            self.assertEqual(buildReply(5, code), reply5(code))

    def test_socks5BoundIPv6(self) -> None:
        self.assertEqual(
            buildReply(5, Reply.SUCCEEDED, ("::1", 443)), b"\x05\x00\x00\x04" + b"\x00" * 15 + b"\x01\x01\xbb"
        )

    def test_socks4(self) -> None:
        self.assertEqual(buildReply(4, Reply.SUCCEEDED, ("10.1.2.3", 80)), b"\x00\x5a\x00\x50\x0a\x01\x02\x03")
        self.assertEqual(buildReply(4, Reply.NOT_ALLOWED), b"\x00\x5b" + b"\x00" * 6)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=600), st.lists(st.integers(min_value=0, max_value=600), max_size=8))
    def test_arbitraryBytes(self, data: bytes, cuts: list[int]) -> None:
        """
        Any bytes split anywhere either parse, wait for more, or raise a
        SOCKSError whose response is empty or a well-formed reply.
        """
        parser = SOCKSServerParser()
        points = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
        try:
            for start, end in itertools.pairwise(points):
                for event in parser.feed(data[start:end]):
                    if isinstance(event, ConnectRequest):
                        return
        except SOCKSError as e:
            self.assertIn(len(e.response), (0, 2, 8, 10))

    @settings(max_examples=200, deadline=None)
    @given(
        st.one_of(
            st.ip_addresses().map(str),
            st.from_regex(r"[a-z0-9][a-z0-9.-]{0,60}", fullmatch=True),
        ),
        st.integers(min_value=1, max_value=65535),
        st.data(),
    )
    def test_validRequestAnySplit(self, host: str, port: int, data: st.DataObject) -> None:
        message = GREETING + socks5Request(host, port)
        cuts = data.draw(st.lists(st.integers(min_value=1, max_value=len(message) - 1), max_size=6))
        events = feedAll(message, sorted(set(cuts)))
        request = events[-1]
        assert isinstance(request, ConnectRequest)
        self.assertEqual((request.host, request.port), (host, port))


def socks5Request(host: str, port: int) -> bytes:
    import ipaddress

    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        dest = b"\x03" + bytes([len(host)]) + host.encode()
    else:
        dest = (b"\x01" if address.version == 4 else b"\x04") + address.packed
    return b"\x05\x01\x00" + dest + port.to_bytes(2, "big")
