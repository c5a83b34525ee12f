# -*- test-case-name: tests.test_dial -*-
"""
Connecting to a stream's destination, and naming why that failed in SOCKS
terms (reply code) and in metric terms (result label).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.python.failure import Failure

from .socks import Reply

__all__ = ["classify", "dial"]


def dial(reactor: Any, host: str, port: int, factory: IProtocolFactory, timeout: float) -> defer.Deferred[IProtocol]:
    """
    Connect to C{host}:C{port} (a name or an IP literal), trying every address
    the name resolves to, all within C{timeout} seconds including resolution.
    """
    try:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
        connecting = endpoint.connect(factory)
    except Exception:
        # A name IDNA cannot encode, or with bytes no resolver accepts.
        return defer.fail(error.DNSLookupError(f"invalid host name {host!r}"))
    return connecting.addTimeout(timeout, reactor)


def classify(reason: Failure) -> tuple[Reply, str]:
    """
    Map a dial failure to the SOCKS reply and the C{streams_total} result label.
    """
    value = reason.value
    if isinstance(value, error.DNSLookupError):
        return Reply.HOST_UNREACHABLE, "dns_error"
    if isinstance(value, error.ConnectionRefusedError):
        return Reply.CONNECTION_REFUSED, "refused"
    if isinstance(value, (error.TimeoutError, defer.TimeoutError, defer.CancelledError)):
        return Reply.HOST_UNREACHABLE, "timeout"
    if isinstance(value, error.NoRouteError):
        return Reply.HOST_UNREACHABLE, "unreachable"
    if isinstance(value, error.ConnectError) and "Network is unreachable" in str(value):
        return Reply.NETWORK_UNREACHABLE, "unreachable"
    return Reply.HOST_UNREACHABLE, "unreachable"
