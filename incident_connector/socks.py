# -*- test-case-name: tests.unit.test_socks -*-
"""
A sans-I/O SOCKS server state machine: SOCKS5 (RFC 1928, no-auth, CONNECT),
SOCKS4 and SOCKS4a, as OpenSSH's dynamic forwarding accepts them.

The parser knows bytes, not sockets: L{SOCKSServerParser.feed} takes whatever
arrived and returns events; the caller writes any bytes they carry and acts on
the request.  A malformed exchange raises a L{SOCKSError} whose C{response} is
what to send before closing (possibly nothing).
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

__all__ = [
    "AddressType",
    "BadVersion",
    "ConnectRequest",
    "MalformedRequest",
    "MethodSelected",
    "NoAcceptableMethods",
    "Reply",
    "SOCKSError",
    "SOCKSServerParser",
    "UnsupportedAddressType",
    "UnsupportedCommand",
]

#: Longest greeting, request or SOCKS4 user ID we buffer before giving up.
MAX_HANDSHAKE = 1024


class Reply(enum.IntEnum):
    """
    SOCKS5 reply codes (RFC 1928 section 6).  SOCKS4 maps all failures to 0x5B.
    """

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class AddressType(enum.Enum):
    """
    How the client named its destination.
    """

    IPV4 = "ipv4"
    IPV6 = "ipv6"
    DOMAIN = "domain"


@dataclass(frozen=True)
class MethodSelected:
    """
    The SOCKS5 greeting offered "no authentication".

    @ivar response: the method-selection reply to send at once.
    """

    response: bytes


@dataclass(frozen=True)
class ConnectRequest:
    """
    A complete CONNECT request.

    @ivar version: 4 or 5 (SOCKS4a reports 4).
    @ivar host: the destination exactly as the client sent it: a domain name
        (decoded as Latin-1 so every byte survives for the allowlist to judge)
        or the text form of an IP address.
    @ivar port: the destination port.
    @ivar addressType: whether C{host} came as IPv4, IPv6 or a domain name.
    @ivar rest: bytes that followed the request in the same read (stream
        payload the client sent without waiting for the reply).
    """

    version: int
    host: str
    port: int
    addressType: AddressType
    rest: bytes = b""


class SOCKSError(Exception):
    """
    The exchange cannot go on.

    @ivar response: everything to send before closing (may be empty),
        including the method selection for a greeting the same bytes completed.
    @ivar reason: a short label for logs and metrics.
    """

    reason = "bad_request"

    def __init__(self, message: str, response: bytes = b"") -> None:
        super().__init__(message)
        self.response = response


class BadVersion(SOCKSError):
    """
    The first byte is neither 4 nor 5: nothing sensible can be replied.
    """


class NoAcceptableMethods(SOCKSError):
    """
    A SOCKS5 greeting that does not offer "no authentication" (reply 0xFF).
    """


class MalformedRequest(SOCKSError):
    """
    The bytes break the protocol's framing or limits.
    """


class UnsupportedCommand(SOCKSError):
    """
    BIND or UDP ASSOCIATE (reply 0x07, or 0x5B for SOCKS4).
    """


class UnsupportedAddressType(SOCKSError):
    """
    An address type other than IPv4, IPv6 or domain (reply 0x08).
    """


def buildReply(version: int, code: Reply, bound: tuple[str, int] = ("0.0.0.0", 0)) -> bytes:
    """
    Build the reply to a CONNECT request.

    @param version: 4 or 5, as in the request.
    @param code: the outcome; for SOCKS4 anything but success is 0x5B.
    @param bound: the address the connector bound for the outbound connection.
    """
    host, port = bound
    address = ipaddress.ip_address(host)
    if version == 4:
        status = 0x5A if code == Reply.SUCCEEDED else 0x5B
        packed = address.packed if address.version == 4 else b"\0\0\0\0"
        return struct.pack("!BBH", 0, status, port) + packed
    atyp = 0x01 if address.version == 4 else 0x04
    return struct.pack("!BBBB", 5, code, 0, atyp) + address.packed + struct.pack("!H", port)


class _State(enum.Enum):
    START = "start"
    SOCKS5_GREETING = "socks5-greeting"
    SOCKS5_REQUEST = "socks5-request"
    SOCKS4_REQUEST = "socks4-request"
    DONE = "done"


class SOCKSServerParser:
    """
    The server side of one SOCKS handshake.

    Feed it bytes as they arrive, split anywhere; it returns the events that
    the bytes complete.  Once a L{ConnectRequest} is returned the parser is
    done and any later byte is stream payload, not its business.

    @ivar version: 4 or 5 once the first byte arrived, else L{None}.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._state = _State.START
        self.version: int | None = None

    def feed(self, data: bytes) -> list[MethodSelected | ConnectRequest]:
        """
        Take newly received bytes.

        @raise SOCKSError: the handshake failed; send C{response} and close.
        """
        if self._state is _State.DONE:
            raise RuntimeError("the handshake is over; payload is not parsed")
        self._buffer += data
        events: list[MethodSelected | ConnectRequest] = []
        try:
            while True:
                event = self._step()
                if event is None:
                    break
                events.append(event)
                if isinstance(event, ConnectRequest):
                    break
            if self._state is not _State.DONE and len(self._buffer) > MAX_HANDSHAKE:
                raise MalformedRequest("handshake too long", self._failure(Reply.GENERAL_FAILURE))
        except SOCKSError as e:
            # A greeting completed by the same bytes still gets its answer first.
            e.response = b"".join(ev.response for ev in events if isinstance(ev, MethodSelected)) + e.response
            raise
        return events

    def reply(self, code: Reply, bound: tuple[str, int] = ("0.0.0.0", 0)) -> bytes:
        """
        The bytes answering the request with C{code}.
        """
        return buildReply(self.version or 5, code, bound)

    def _failure(self, code: Reply) -> bytes:
        if self._state is _State.SOCKS5_REQUEST or self._state is _State.SOCKS4_REQUEST:
            return self.reply(code)
        return b""

    def _step(self) -> MethodSelected | ConnectRequest | None:
        if self._state is _State.START:
            if not self._buffer:
                return None
            first = self._buffer[0]
            if first == 5:
                self.version = 5
                self._state = _State.SOCKS5_GREETING
            elif first == 4:
                self.version = 4
                self._state = _State.SOCKS4_REQUEST
            else:
                raise BadVersion(f"unknown SOCKS version {first:#04x}")
        if self._state is _State.SOCKS5_GREETING:
            return self._greeting()
        if self._state is _State.SOCKS5_REQUEST:
            return self._request5()
        if self._state is _State.SOCKS4_REQUEST:
            return self._request4()
        return None

    def _greeting(self) -> MethodSelected | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        count = buf[1]
        if len(buf) < 2 + count:
            return None
        methods = buf[2 : 2 + count]
        self._buffer = buf[2 + count :]
        if 0x00 not in methods:
            raise NoAcceptableMethods("client offered no acceptable method", b"\x05\xff")
        self._state = _State.SOCKS5_REQUEST
        return MethodSelected(b"\x05\x00")

    def _request5(self) -> ConnectRequest | None:
        buf = self._buffer
        if len(buf) < 5:
            return None
        version, command, _reserved, atyp = buf[0], buf[1], buf[2], buf[3]
        if version != 5:
            raise MalformedRequest(
                f"request version {version:#04x} after a SOCKS5 greeting",
                self.reply(Reply.GENERAL_FAILURE),
            )
        if atyp == 0x01:
            addressType, end = AddressType.IPV4, 4 + 4
        elif atyp == 0x04:
            addressType, end = AddressType.IPV6, 4 + 16
        elif atyp == 0x03:
            addressType, end = AddressType.DOMAIN, 5 + buf[4]
        else:
            # The command is judged first: a BIND with a bad address is still a BIND.
            if command != 0x01:
                raise UnsupportedCommand(f"command {command:#04x}", self.reply(Reply.COMMAND_NOT_SUPPORTED))
            raise UnsupportedAddressType(f"address type {atyp:#04x}", self.reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED))
        if command != 0x01:
            raise UnsupportedCommand(f"command {command:#04x}", self.reply(Reply.COMMAND_NOT_SUPPORTED))
        if len(buf) < end + 2:
            return None
        if addressType is AddressType.DOMAIN:
            raw = buf[5:end]
            if not raw:
                raise MalformedRequest("empty domain name", self.reply(Reply.GENERAL_FAILURE))
            host = raw.decode("latin-1")
        else:
            host = str(ipaddress.ip_address(buf[4:end]))
        (port,) = struct.unpack("!H", buf[end : end + 2])
        return self._done(5, host, port, addressType, end + 2)

    def _request4(self) -> ConnectRequest | None:
        buf = self._buffer
        if len(buf) < 8:
            return None
        command = buf[1]
        port, ip = struct.unpack("!H4s", buf[2:8])
        userEnd = buf.find(b"\0", 8)
        if userEnd < 0:
            return None
        if command != 0x01:
            raise UnsupportedCommand(f"SOCKS4 command {command:#04x}", self.reply(Reply.COMMAND_NOT_SUPPORTED))
        if ip[:3] == b"\0\0\0" and ip[3] != 0:
            # SOCKS4a: the name follows the user ID.
            nameEnd = buf.find(b"\0", userEnd + 1)
            if nameEnd < 0:
                return None
            raw = buf[userEnd + 1 : nameEnd]
            if not raw:
                raise MalformedRequest("empty SOCKS4a host name", self.reply(Reply.GENERAL_FAILURE))
            return self._done(4, raw.decode("latin-1"), port, AddressType.DOMAIN, nameEnd + 1)
        return self._done(4, str(ipaddress.IPv4Address(ip)), port, AddressType.IPV4, userEnd + 1)

    def _done(self, version: int, host: str, port: int, addressType: AddressType, used: int) -> ConnectRequest:
        rest = self._buffer[used:]
        self._buffer = b""
        self._state = _State.DONE
        return ConnectRequest(version, host, port, addressType, rest)
