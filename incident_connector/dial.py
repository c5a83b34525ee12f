# -*- test-case-name: tests.unit.test_dial -*-
"""
Connecting to a stream's destination: resolve a name once, check the
addresses if the allowlist says so, and dial exactly those addresses (a
second lookup could be answered differently: DNS rebinding).  Failures are
named in SOCKS terms (reply code) and metric terms (result label).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IHostResolution, IProtocol, IProtocolFactory, IResolutionReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from .allowlist import Allowlist, Destination, IPAddress, Verdict
from .socks import Reply

__all__ = ["DeniedAfterResolution", "classify", "dial", "resolve"]


class DeniedAfterResolution(Exception):
    """
    The name resolved to an address the IP rules do not allow.
    """


def resolve(reactor: Any, name: str, port: int) -> defer.Deferred[list[IPAddress]]:
    """
    Every address C{name} resolves to, in the resolver's order, each once.
    """
    result: defer.Deferred[list[IPAddress]] = defer.Deferred()
    addresses: list[IPAddress] = []

    @implementer(IResolutionReceiver)
    class Receiver:
        def resolutionBegan(self, resolution: IHostResolution) -> None:
            pass

        def addressResolved(self, address: Any) -> None:
            parsed = ipaddress.ip_address(address.host.split("%")[0])
            if parsed not in addresses:
                addresses.append(parsed)

        def resolutionComplete(self) -> None:
            if addresses:
                result.callback(addresses)
            else:
                result.errback(error.DNSLookupError(f"no address for {name!r}"))

    reactor.nameResolver.resolveHostName(
        Receiver(), name, portNumber=port, addressTypes=[IPv4Address, IPv6Address], transportSemantics="TCP"
    )
    return result


async def _connectFirst(
    reactor: Any, addresses: list[IPAddress], port: int, factory: IProtocolFactory, timeout: float
) -> IProtocol:
    failure: Exception = error.ConnectError("no address")
    for address in addresses:
        endpointType = TCP6ClientEndpoint if address.version == 6 else TCP4ClientEndpoint
        try:
            return await endpointType(reactor, str(address), port, timeout=timeout).connect(factory)
        except error.ConnectError as e:
            failure = e
    raise failure


async def _dial(
    reactor: Any,
    allowlist: Allowlist,
    destination: Destination,
    verdict: Verdict,
    port: int,
    factory: IProtocolFactory,
    timeout: float,
    onResolved: Callable[[list[IPAddress]], None] | None,
) -> IProtocol:
    if destination.address is not None:
        addresses = [destination.address]
    else:
        assert destination.name is not None
        addresses = await resolve(reactor, destination.name, port)
        if onResolved is not None:
            onResolved(addresses)
        if verdict is Verdict.CHECK_ADDRESSES and not allowlist.allowsAddresses(addresses, port):
            raise DeniedAfterResolution(f"{destination} resolves to {', '.join(map(str, addresses))}")
    return await _connectFirst(reactor, addresses, port, factory, timeout)


def dial(
    reactor: Any,
    allowlist: Allowlist,
    destination: Destination,
    verdict: Verdict,
    port: int,
    factory: IProtocolFactory,
    timeout: float,
    onResolved: Callable[[list[IPAddress]], None] | None = None,
) -> defer.Deferred[IProtocol]:
    """
    Connect to an allowed destination, all within C{timeout} seconds
    including resolution.

    @param verdict: what L{Allowlist.check} said (never L{Verdict.DENY}).
    @param onResolved: told the addresses a name resolved to, before they
        are checked and dialled (for the stream's record).
    """
    dialing = defer.ensureDeferred(_dial(reactor, allowlist, destination, verdict, port, factory, timeout, onResolved))
    return dialing.addTimeout(timeout, reactor)


def classify(reason: Failure) -> tuple[Reply, str]:
    """
    Map a dial failure to the SOCKS reply and the C{streams_total} result label.
    """
    value = reason.value
    if isinstance(value, DeniedAfterResolution):
        return Reply.NOT_ALLOWED, "denied"
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
