# -*- test-case-name: tests.unit.test_destinations -*-
"""
The destinations requested since start, for C{GET /destinations} and
C{incident-connector suggest-allowlist}: a sink that reads the same
L{StreamRecord} as the log line, the metrics and the audit log.

Bounded: the L{CAPACITY} most recently seen distinct destinations are kept;
older ones are dropped and counted.  A request whose host is no valid name or
address is not a destination and is not kept (the metrics count it).
"""

from __future__ import annotations

import ipaddress
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from twisted.web import resource
from twisted.web.iweb import IRequest

from .results import StreamRecord, timestamp

__all__ = ["CAPACITY", "DestinationsResource", "ObservedDestinations", "allowlistEntry"]

#: Distinct destinations kept.
CAPACITY = 1000


@dataclass(slots=True)
class _Seen:
    """
    What was seen of one destination.

    @ivar verdicts: streams by verdict (C{allow}, C{deny}, C{unresolved}).
    @ivar connected: streams whose destination accepted.
    @ivar rules: the allowlist entries that allowed it.
    """

    firstSeen: float
    lastSeen: float
    verdicts: dict[str, int] = field(default_factory=dict)
    connected: int = 0
    up: int = 0
    down: int = 0
    rules: set[str] = field(default_factory=set)


def allowlistEntry(host: str, port: int) -> str:
    """
    The allowlist entry naming exactly C{host} (a normalised name or an
    address) and C{port}.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"{host}:{port}"
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


class ObservedDestinations:
    """
    The table, and the sink that fills it.

    @ivar started: when the table began (Unix time).
    @ivar capacity: distinct destinations kept.
    @ivar dropped: destinations dropped to stay within C{capacity}.
    """

    def __init__(self, started: float, capacity: int = CAPACITY) -> None:
        self.started = started
        self.capacity = capacity
        self.dropped = 0
        self._seen: OrderedDict[tuple[str, int], _Seen] = OrderedDict()

    def __call__(self, record: StreamRecord) -> None:
        """
        Count a stream that ended.
        """
        if record.normalized is None or record.port is None:
            return
        key = (record.normalized, record.port)
        ended = record.ended if record.ended is not None else record.started
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = _Seen(record.started, ended)
            if len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
                self.dropped += 1
        else:
            self._seen.move_to_end(key)
            seen.firstSeen = min(seen.firstSeen, record.started)
            seen.lastSeen = max(seen.lastSeen, ended)
        verdict = record.verdict or "none"
        seen.verdicts[verdict] = seen.verdicts.get(verdict, 0) + 1
        if record.dialled is not None:
            seen.connected += 1
        if record.rule is not None and record.verdict == "allow":
            seen.rules.add(record.rule)
        seen.up += record.up
        seen.down += record.down

    def snapshot(self) -> dict[str, Any]:
        """
        The table as C{GET /destinations} serves it, most recently seen first.
        """
        return {
            "since": timestamp(self.started),
            "capacity": self.capacity,
            "dropped": self.dropped,
            "destinations": [
                {
                    "host": host,
                    "port": port,
                    "entry": allowlistEntry(host, port),
                    "verdicts": dict(seen.verdicts),
                    "connected": seen.connected,
                    "bytes_up": seen.up,
                    "bytes_down": seen.down,
                    "rules": sorted(seen.rules),
                    "first_seen": timestamp(seen.firstSeen),
                    "last_seen": timestamp(seen.lastSeen),
                }
                for (host, port), seen in reversed(self._seen.items())
            ],
        }


class DestinationsResource(resource.Resource):
    """
    C{GET /destinations}: the table as JSON.
    """

    isLeaf = True

    def __init__(self, destinations: ObservedDestinations) -> None:
        super().__init__()
        self.destinations = destinations

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.destinations.snapshot()).encode() + b"\n"
