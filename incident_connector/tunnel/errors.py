# -*- test-case-name: tests.unit.test_transport -*-
"""
Why a relay connection could not be established or ended: one exception type,
whose message is the line operators read and whose reason is the metric label.
"""

from __future__ import annotations

__all__ = ["REASONS", "CredentialsUnavailable", "ProtocolError", "TunnelError"]

#: Every C{reason} a failed attempt or lost connection is counted under
#: (C{incident_connector_connection_failures_total{reason}}).
REASONS = {
    "unreachable": "the relay (or its proxy) could not be reached",
    "setup_timeout": "connected, but the forward was not granted within --setup-timeout",
    "negotiation": "no algorithm in common, or the key exchange failed",
    "host_key": "the relay's host key is not the trusted one",
    "auth": "the relay refused the key or certificate",
    "credentials": "no certificate could be bought with the API token",
    "forward_refused": "the relay refused the remote forward",
    "protocol": "the relay sent a malformed or unexpected message",
    "keepalive_timeout": "the relay stopped answering",
    "disconnected": "the relay closed the connection with a reason",
    "connection_lost": "the connection ended before the forward was granted",
    "lost": "an established connection ended, no other reason known (the relay closed the socket)",
    "internal": "the connector failed acting on a relay message (a bug: its log has the traceback)",
}


class TunnelError(Exception):
    """
    The tunnel could not be established, or ended; the message says why, for
    operators (one line, relay text already escaped).

    @ivar reason: a key of L{REASONS}, for metrics.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ProtocolError(TunnelError):
    """
    The relay broke the SSH protocol: malformed or unexpected input.  The
    connection is dropped with C{SSH_MSG_DISCONNECT} C{code}.

    @ivar code: the SSH disconnect reason code to send.
    """

    def __init__(self, message: str, reason: str = "protocol", code: int = 2) -> None:
        super().__init__(message, reason)
        self.code = code


class CredentialsUnavailable(TunnelError):
    """
    Nothing to log in with this time (the certificate API refused or failed).

    @ivar retryAfter: the least delay before asking again, in seconds.
    """

    def __init__(self, message: str, reason: str, retryAfter: float = 0.0) -> None:
        super().__init__(message, reason)
        self.retryAfter = retryAfter
