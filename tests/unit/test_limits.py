"""
The descriptor budget: raising the soft limit, and how many streams fit.
"""

from __future__ import annotations

import resource
from typing import Any

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from incident_connector import limits
from incident_connector.limits import DescriptorLimitError, fitMaxStreams, raiseDescriptorLimit, streamsThatFit
from incident_connector.web import MAX_CONNECTIONS


class FakeLimits:
    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.soft, self.hard, self.refuse = soft, hard, refuse

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.soft, self.hard

    def setrlimit(self, which: int, value: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        if self.refuse:
            raise ValueError("not allowed")
        self.soft, self.hard = value


class LimitTests(SynchronousTestCase):
    def fake(self, soft: int, hard: int, refuse: bool = False, inUse: int = 10) -> FakeLimits:
        fake = FakeLimits(soft, hard, refuse)
        self.patch(resource, "getrlimit", fake.getrlimit)
        self.patch(resource, "setrlimit", fake.setrlimit)
        self.patch(limits, "openDescriptors", lambda: inUse)
        return fake

    def warnings(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    def test_softRaisedToHard(self) -> None:
        fake = self.fake(1024, 524288)
        self.assertEqual(raiseDescriptorLimit(), 524288)
        self.assertEqual((fake.soft, fake.hard), (524288, 524288))

    def test_refusedRaiseKeepsSoft(self) -> None:
        self.fake(1024, 524288, refuse=True)
        self.assertEqual(raiseDescriptorLimit(), 1024)

    def test_infiniteHardLeftAlone(self) -> None:
        fake = self.fake(4096, resource.RLIM_INFINITY)
        self.assertEqual(raiseDescriptorLimit(), 4096)
        self.assertEqual(fake.soft, 4096)

    def test_streamsThatFit(self) -> None:
        reserved = 10 + MAX_CONNECTIONS + limits.RESERVE + 2
        self.assertEqual(streamsThatFit(reserved + 100, 10, 1), 100)
        self.assertEqual(streamsThatFit(reserved + 2 + 100, 10, 2), 50)
        self.assertEqual(streamsThatFit(50, 10, 1), 0)

    def test_fitsAsAsked(self) -> None:
        events = self.warnings()
        self.fake(1024, 65536)
        self.assertEqual(fitMaxStreams(1024, 2), 1024)
        self.assertEqual(events, [])

    def test_loweredWithOneLine(self) -> None:
        events = self.warnings()
        self.fake(256, 256, inUse=10)
        fits = 256 - 10 - MAX_CONNECTIONS - limits.RESERVE - 2
        self.assertEqual(fitMaxStreams(1024, 1), fits)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["fits"], fits)
        self.assertEqual(events[0]["log_level"].name, "warn")

    def test_tooLow(self) -> None:
        self.fake(64, 64)
        error = self.assertRaises(DescriptorLimitError, fitMaxStreams, 1024, 1)
        self.assertIn("the file descriptor limit (64) leaves no room for streams", str(error))
