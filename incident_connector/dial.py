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

__all__ = ["LOOKUPS", "MAX_LOOKUPS", "DeniedAfterResolution", "Lookups", "classify", "dial", "resolve"]


class DeniedAfterResolution(Exception):
    """
    The name resolved to an address the IP rules do not allow.
    """


#: Names looked up at once, at most, by all streams together.  A lookup
#: outlives the stream that asked for it (the resolver's threads cannot be
#: cancelled), so without a bound a client asking for names whose DNS never
#: answers would queue lookups for ever; past it, a new name fails at once
#: (SOCKS 0x04, dns_error).  Streams asking for a name already being looked
#: up wait for that lookup, so a burst of streams to a few names uses few.
MAX_LOOKUPS = 256


class Lookups:
    """
    The names being looked up, each with the streams waiting for it.

    @ivar limit: the most names looked up at once.
    @ivar pending: for each resolver and name being looked up, the Deferreds
        of the streams waiting for its addresses.
    """

    def __init__(self, limit: int = MAX_LOOKUPS) -> None:
        self.limit = limit
        self.pending: dict[tuple[object, str], list[defer.Deferred[list[IPAddress]]]] = {}

    def resolve(self, reactor: Any, name: str, port: int) -> defer.Deferred[list[IPAddress]]:
        """
        Every address C{name} resolves to, in the resolver's order, each once.
        """
        resolver = reactor.nameResolver
        key = (resolver, name)
        waiting = self.pending.get(key)
        first = waiting is None
        if waiting is None:
            if len(self.pending) >= self.limit:
                return defer.fail(error.DNSLookupError(f"{self.limit} names are being looked up already"))
            waiting = self.pending[key] = []

        def forget(result: defer.Deferred[list[IPAddress]]) -> None:
            # The stream gave up (its dial timed out, or it ended).
            if result in waiting:
                waiting.remove(result)

        result: defer.Deferred[list[IPAddress]] = defer.Deferred(forget)
        waiting.append(result)
        if first:
            self._lookUp(resolver, key, port)  # may answer at once
        return result

    def _lookUp(self, resolver: Any, key: tuple[object, str], port: int) -> None:
        name = key[1]
        addresses: list[IPAddress] = []
        lookups = self

        @implementer(IResolutionReceiver)
        class Receiver:
            def resolutionBegan(self, resolution: IHostResolution) -> None:
                pass

            def addressResolved(self, address: Any) -> None:
                parsed = ipaddress.ip_address(address.host.split("%")[0])
                if parsed not in addresses:
                    addresses.append(parsed)

            def resolutionComplete(self) -> None:
                for waiting in lookups.pending.pop(key, []):
                    if addresses:
                        waiting.callback(list(addresses))
                    else:
                        waiting.errback(error.DNSLookupError(f"no address for {name!r}"))

        resolver.resolveHostName(
            Receiver(), name, portNumber=port, addressTypes=[IPv4Address, IPv6Address], transportSemantics="TCP"
        )


#: The lookups of every stream in this process (they share the reactor's resolver).
LOOKUPS = Lookups()


def resolve(reactor: Any, name: str, port: int) -> defer.Deferred[list[IPAddress]]:
    """
    Every address C{name} resolves to, in the resolver's order, each once
    (L{LOOKUPS}).
    """
    return LOOKUPS.resolve(reactor, name, port)


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
