"""
Resolving once and dialling exactly the checked addresses (DNS rebinding).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.allowlist import Allowlist, Verdict, normalize
from incident_connector.dial import DeniedAfterResolution, dial
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
        from incident_connector.dial import classify

        self.assertEqual(classify(failures[0]), (Reply.NOT_ALLOWED, "denied"))

    def test_nameRuleAllowsWhateverItResolvesTo(self) -> None:
        reactor, _resolver, failures = self.dial("db.internal:5432", ["127.0.0.1"])
        self.assertEqual(failures, [])
        self.assertEqual(Allowlist.parse("db.internal:5432").check(normalize("db.internal"), 5432), Verdict.ALLOW)
        self.assertEqual([host for host, *_ in reactor.tcpClients], ["127.0.0.1"])
