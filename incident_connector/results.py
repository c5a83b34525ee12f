# -*- test-case-name: tests.unit.test_stream -*-
"""
How a stream ended, and the one record of it that every sink reads: the log
line, the metrics (and any other report), so they cannot drift apart.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timezone

__all__ = ["StreamRecord", "StreamResult", "timestamp"]


def timestamp(seconds: float) -> str:
    """
    A record's time as reports show it: RFC 3339 in UTC with microseconds,
    e.g. C{2026-11-26T09:14:03.120544Z}.
    """
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class StreamResult(enum.Enum):
    """
    The C{result} label of C{incident_connector_streams_total}.
    """

    OK = "ok"
    DENIED = "denied"
    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    DNS_ERROR = "dns_error"
    TIMEOUT = "timeout"
    BAD_REQUEST = "bad_request"
    IDLE = "idle"
    HALF_CLOSE_TIMEOUT = "half_close_timeout"
    RELAY_LOST = "relay_lost"
    LIMIT = "limit"
    DRAINING = "draining"
    REVOKED = "revoked"

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    StreamResult.OK: "relayed, and ended by either side",
    StreamResult.DENIED: "the allowlist refused the destination (SOCKS 0x02)",
    StreamResult.REFUSED: "the destination refused the connection (0x05)",
    StreamResult.UNREACHABLE: "no route to the destination (0x03 or 0x04)",
    StreamResult.DNS_ERROR: "the name did not resolve (0x04)",
    StreamResult.TIMEOUT: "the SOCKS handshake or the connection attempt took too long (0x04)",
    StreamResult.BAD_REQUEST: "the SOCKS request was malformed or unsupported (0x07, 0x08, 0xFF)",
    StreamResult.IDLE: "no byte either way for --stream-idle-timeout",
    StreamResult.HALF_CLOSE_TIMEOUT: "half-closed and silent for --half-close-timeout",
    StreamResult.RELAY_LOST: "the relay connection ended while the stream was open",
    StreamResult.LIMIT: "refused: --max-streams streams were open",
    StreamResult.DRAINING: "refused: the connector is shutting down",
    StreamResult.REVOKED: "closed: a reloaded allowlist no longer allows it (--close-disallowed-streams)",
}


@dataclass(slots=True)
class StreamRecord:
    """
    What happened to one stream, filled in as it goes.

    @ivar id: names the stream in the audit log, unique per process run.
    @ivar started: when the channel opened (Unix time).
    @ivar connection: the relay connection's label.
    @ivar originator: the relay-side client, C{(host, port)}, as reported.
    @ivar version: SOCKS 4 or 5, once known.
    @ivar host: the requested host exactly as sent (each byte one Latin-1 character).
    @ivar requested: the destination as requested, C{host:port}, escaped.
    @ivar normalized: the host in normal form, if it had one.
    @ivar port: the requested port.
    @ivar addresses: the addresses the name resolved to, if looked up.
    @ivar dialled: the address and port connected to.
    @ivar verdict: C{"allow"} or C{"deny"}, once the allowlist judged.
    @ivar rule: the allowlist entry that allowed it, as written (C{any}
        with no list); L{None} if denied or not judged.
    @ivar dialSeconds: how long the successful dial took.
    @ivar dialFailure: why a dial failed: C{dns_error}, C{refused},
        C{unreachable}, C{timeout} or C{address_not_allowed}.
    @ivar reply: the SOCKS reply code sent, if any.
    @ivar result: how it ended, once it did.
    @ivar up: bytes from the client to the destination.
    @ivar down: bytes from the destination to the client.
    @ivar ended: when it ended.
    """

    started: float
    id: str = ""
    connection: str = ""
    originator: tuple[str, int] = ("", 0)
    version: int | None = None
    host: str | None = None
    requested: str = "-"
    normalized: str | None = None
    port: int | None = None
    addresses: list[str] = field(default_factory=list)
    dialled: str | None = None
    verdict: str | None = None
    rule: str | None = None
    dialSeconds: float | None = None
    dialFailure: str | None = None
    reply: int | None = None
    result: StreamResult | None = None
    up: int = 0
    down: int = 0
    ended: float | None = None

    @property
    def duration(self) -> float:
        return (self.ended or self.started) - self.started
