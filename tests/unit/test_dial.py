"""
Resolving once and dialling exactly the checked addresses (DNS rebinding);
lookups bounded and shared by the streams asking for one name.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.allowlist import Allowlist, Verdict, normalize
from incident_connector.dial import DeniedAfterResolution, Lookups, classify, dial
from incident_connector.socks import Reply


class _Resolver:
    """
    A resolver that answers differently each time (DNS rebinding).
    """

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.calls = 0

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0, **kw: Any) -> None:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        receiver.resolutionBegan(None)
        receiver.addressResolved(IPv4Address("TCP", answer, portNumber))
        receiver.resolutionComplete()


class RebindingTests(SynchronousTestCase):
    def dial(self, allowlist: str, answers: list[str]) -> tuple[MemoryReactorClock, _Resolver, list[Any]]:
        reactor = MemoryReactorClock()
        resolver = _Resolver(answers)
        reactor.nameResolver = resolver  # type: ignore[attr-defined]
        parsed = Allowlist.parse(allowlist)
        destination = normalize("db.internal")
        verdict = parsed.check(destination, 5432)
        failures: list[Any] = []
        dial(reactor, parsed, destination, verdict, 5432, object(), 10).addErrback(failures.append)  # type: ignore[arg-type]
        return reactor, resolver, failures

    def test_dialsTheCheckedAddress(self) -> None:
        """
        Resolved once; the connection goes to the address that was checked,
        whatever a second lookup would say.
        """
        reactor, resolver, failures = self.dial("10.0.0.0/8:5432", ["10.0.0.5", "127.0.0.1"])
        self.assertEqual(failures, [])
        self.assertEqual(resolver.calls, 1)
        self.assertEqual([(host, port) for host, port, *_ in reactor.tcpClients], [("10.0.0.5", 5432)])

    def test_forbiddenAnswerDenied(self) -> None:
        reactor, _resolver, failures = self.dial("10.0.0.0/8:5432", ["127.0.0.1", "10.0.0.5"])
        self.assertEqual(len(failures), 1)
        failures[0].trap(DeniedAfterResolution)
        self.assertEqual(reactor.tcpClients, [])
        self.assertEqual(classify(failures[0]), (Reply.NOT_ALLOWED, "denied"))

    def test_nameRuleAllowsWhateverItResolvesTo(self) -> None:
        reactor, _resolver, failures = self.dial("db.internal:5432", ["127.0.0.1"])
        self.assertEqual(failures, [])
        self.assertEqual(Allowlist.parse("db.internal:5432").check(normalize("db.internal"), 5432), Verdict.ALLOW)
        self.assertEqual([host for host, *_ in reactor.tcpClients], ["127.0.0.1"])


class _SlowResolver:
    """
    A resolver that answers only when told to (C{answer}), as a DNS server
    that does not answer for a while, or ever.
    """

    def __init__(self) -> None:
        self.asked: list[tuple[Any, str]] = []

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0, **kw: Any) -> None:
        receiver.resolutionBegan(None)
        self.asked.append((receiver, hostName))

    def answer(self, address: str | None) -> None:
        for receiver, _ in self.asked:
            if address is not None:
                receiver.addressResolved(IPv4Address("TCP", address, 0))
            receiver.resolutionComplete()
        self.asked = []


class LookupTests(SynchronousTestCase):
    """
    Names are looked up at most L{Lookups.limit} at a time, one lookup per
    name for every stream asking for it meanwhile.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.resolver = _SlowResolver()
        self.reactor.nameResolver = self.resolver  # type: ignore[attr-defined]
        self.lookups = Lookups(limit=8)

    def test_oneLookupPerName(self) -> None:
        """
        A burst of streams to one name waits for one lookup, and each gets
        the addresses.
        """
        results: list[Any] = []
        for _ in range(100):
            self.lookups.resolve(self.reactor, "db.internal", 5432).addBoth(results.append)
        self.assertEqual(len(self.resolver.asked), 1)
        self.resolver.answer("10.0.0.5")
        self.assertEqual(results, [[ipaddress.ip_address("10.0.0.5")]] * 100)
        self.assertEqual(self.lookups.pending, {})

    def test_boundedWhileDNSDoesNotAnswer(self) -> None:
        """
        Names whose DNS does not answer hold at most C{limit} lookups; a new
        name past it fails at once (SOCKS 0x04, dns_error), and streams that
        gave up leave nothing waiting.  Once the DNS answers, names are looked
        up again.
        """
        results: list[Any] = []
        for n in range(20):
            resolving = self.lookups.resolve(self.reactor, f"h{n}.slow.test", 443)
            resolving.addErrback(lambda f: results.append(classify(f)) or None)
            resolving.cancel()  # the stream's dial timed out
        self.assertEqual(len(self.resolver.asked), 8)
        self.assertEqual(results[8:], [(Reply.HOST_UNREACHABLE, "dns_error")] * 12)
        self.assertEqual(results[:8], [(Reply.HOST_UNREACHABLE, "timeout")] * 8)
        self.assertEqual(sum(len(waiting) for waiting in self.lookups.pending.values()), 0)
        self.resolver.answer(None)
        self.assertEqual(self.lookups.pending, {})
        answered: list[Any] = []
        self.lookups.resolve(self.reactor, "db.internal", 5432).addCallback(answered.append)
        self.resolver.answer("10.0.0.5")
        self.assertEqual(answered, [[ipaddress.ip_address("10.0.0.5")]])

    def test_noAddress(self) -> None:
        failures: list[Any] = []
        self.lookups.resolve(self.reactor, "nx.internal", 5432).addErrback(failures.append)
        self.resolver.answer(None)
        self.assertEqual(classify(failures[0]), (Reply.HOST_UNREACHABLE, "dns_error"))
