# -*- test-case-name: tests.integration.test_observability -*-
"""
Prometheus metrics of the connector, in a registry of its own (so tests and
several connectors in one process never share counters).

Labels are bounded: results and reasons from fixed sets, never a destination.
The C{rule} label is an allowlist entry as the operator wrote it (C{none}
for a stream no entry allowed, C{any} with no list): bounded by the lists
loaded since start, never by what clients request.
"""

from __future__ import annotations

import platform
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

import twisted

from . import __version__
from .results import StreamResult

__all__ = ["DIAL_FAILURE_REASONS", "RELOAD_RESULTS", "ConnectorMetrics"]

#: The C{reason} label of C{incident_connector_dial_failures_total}.
DIAL_FAILURE_REASONS = ("dns_error", "refused", "unreachable", "timeout", "address_not_allowed")
#: The C{result} label of C{incident_connector_allowlist_reloads_total}.
RELOAD_RESULTS = ("ok", "invalid", "unreadable")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ConnectorMetrics:
    """
    Every metric the connector exports.

    @ivar registry: the registry the C{/metrics} resource serves.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        prefix = "incident_connector_"
        self.buildInfo = Info(prefix + "build", "Connector build.", registry=registry)
        self.buildInfo.info(
            {"version": __version__, "twisted": twisted.__version__, "python": platform.python_version()}
        )
        self.tunnelUp = Gauge(
            prefix + "tunnel_up", "1 while the relay granted the remote forward.", ["connection"], registry=registry
        )
        self.connectionAttempts = Counter(
            prefix + "connection_attempts", "Relay connection attempts.", ["connection"], registry=registry
        )
        self.connectionFailures = Counter(
            prefix + "connection_failures",
            "Relay connections that failed or ended, by reason.",
            ["connection", "reason"],
            registry=registry,
        )
        self.lastForwardTimestamp = Gauge(
            prefix + "last_forward_granted_timestamp_seconds",
            "Unix time the relay last granted the remote forward.",
            ["connection"],
            registry=registry,
        )
        self.keepaliveSeconds = Histogram(
            prefix + "keepalive_rtt_seconds", "Keepalive round-trip time.", buckets=_LATENCY_BUCKETS, registry=registry
        )
        self.streamsActive = Gauge(prefix + "streams_active", "Streams open now.", registry=registry)
        self.streams = Counter(
            prefix + "streams",
            "Streams ended, by result (" + ", ".join(result.value for result in StreamResult) + ").",
            ["result"],
            registry=registry,
        )
        self.bytes = Counter(
            prefix + "bytes",
            "Stream payload bytes; up is client to destination, down is destination to client.",
            ["direction"],
            registry=registry,
        )
        self.handshakeSeconds = Histogram(
            prefix + "socks_handshake_seconds",
            "From channel open to a complete SOCKS request.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.dialSeconds = Histogram(
            prefix + "dial_seconds",
            "Time to connect to a destination (successful dials, observed when the stream ends).",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.ruleStreams = Counter(
            prefix + "rule_streams",
            "Streams ended, by the allowlist entry that allowed them (none: denied or never judged) and result.",
            ["rule", "result"],
            registry=registry,
        )
        self.ruleBytes = Counter(
            prefix + "rule_bytes",
            "Stream payload bytes by allowlist entry; up is client to destination.",
            ["rule", "direction"],
            registry=registry,
        )
        self.ruleDialSeconds = Histogram(
            prefix + "rule_dial_seconds",
            "Time to connect to a destination, by allowlist entry (successful dials).",
            ["rule"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.dialFailures = Counter(
            prefix + "dial_failures",
            "Dials that failed, by allowlist entry and reason (" + ", ".join(DIAL_FAILURE_REASONS) + ").",
            ["rule", "reason"],
            registry=registry,
        )
        self.allowlistReloads = Counter(
            prefix + "allowlist_reloads",
            "Allowlist file loads after the first, by result (" + ", ".join(RELOAD_RESULTS) + ").",
            ["result"],
            registry=registry,
        )
        self.allowlistRules = Gauge(
            prefix + "allowlist_rules",
            "Entries in the allowlist in force (0 for any, none or no list).",
            registry=registry,
        )
        self.auditWriteErrors = Counter(
            prefix + "audit_write_errors",
            "Audit records that could not be written (the stream was not affected).",
            registry=registry,
        )
        self.relayRefusals = Counter(
            prefix + "relay_refusals",
            "What the relay asked for and the connector refused, by kind (global_request, channel_type, "
            "channel_request, limit, draining).",
            ["kind"],
            registry=registry,
        )
        # Pre-create label sets so a scrape shows zeros instead of nothing.
        for direction in ("up", "down"):
            self.bytes.labels(direction=direction)
        for result in RELOAD_RESULTS:
            self.allowlistReloads.labels(result=result)

    def trackDestinationBuffers(self, total: Callable[[], float]) -> None:
        """
        Export the bytes buffered towards destinations, over every stream.
        """
        gauge = Gauge(
            "incident_connector_destination_buffered_bytes",
            "Bytes received from the relay and not yet written to destinations, over every stream.",
            registry=self.registry,
        )
        gauge.set_function(total)

    def trackCertificate(self, secondsToExpiry: Callable[[], float]) -> None:
        """
        Export the certificate's remaining lifetime (token authentication only).
        """
        gauge = Gauge(
            "incident_connector_certificate_expiry_seconds",
            "Seconds until the SSH certificate expires.",
            registry=self.registry,
        )
        gauge.set_function(secondsToExpiry)
