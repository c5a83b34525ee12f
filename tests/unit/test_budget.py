"""
The cap on bytes buffered towards destinations: exceeded past the limit,
released under half of it, recounting stale charges.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.budget import RECOUNT_INTERVAL, Budget


class Holder:
    def __init__(self, amount: int) -> None:
        self.amount = amount

    def buffered(self) -> int:
        return self.amount


class BudgetTests(SynchronousTestCase):
    def test_holdsAndReleases(self) -> None:
        clock = Clock()
        budget = Budget(1000, clock)
        changes: list[bool] = []
        budget.subscribe(changes.append)
        a, b = Holder(600), Holder(600)
        budget.update(a, 600)
        self.assertFalse(budget.exceeded)
        budget.update(b, 600)
        self.assertTrue(budget.exceeded)
        a.amount, b.amount = 400, 200  # drained some, nobody told the budget
        clock.advance(RECOUNT_INTERVAL)
        self.assertTrue(budget.exceeded, "600 is not under half the cap")
        b.amount = 0
        clock.advance(RECOUNT_INTERVAL)
        self.assertFalse(budget.exceeded)
        self.assertEqual(budget.total, 400)
        self.assertEqual(changes, [True, False])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_staleChargesDoNotHold(self) -> None:
        """
        A charge that drained without telling does not hold windows: the
        recount finds it gone.
        """
        budget = Budget(1000, Clock())
        stale = Holder(0)
        budget.update(stale, 900)
        budget.update(Holder(200), 200)
        self.assertFalse(budget.exceeded)
        self.assertEqual(budget.total, 200)
