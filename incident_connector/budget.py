# -*- test-case-name: tests.unit.test_budget -*-
"""
A cap on the bytes buffered towards destinations, over every stream.

Each stream's own share is bounded by its channel window; the sum over
thousands of streams to destinations that do not read would not be.  Past
the cap, relay connections stop giving channels more window, until the
total is back under half of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Budget", "Holder"]

#: Seconds between recounts while the cap is exceeded.
RECOUNT_INTERVAL = 0.5


class Holder(Protocol):
    def buffered(self) -> int:
        """
        The bytes it holds now (its charge may be stale: Twisted does not
        say when a write buffer drains unless a producer was paused).
        """


class Budget:
    """
    @ivar limit: the cap, in bytes (0: none).
    @ivar clock: schedules recounts while the cap is exceeded.
    @ivar total: bytes charged now (an over-estimate between recounts).
    @ivar exceeded: over the cap, and not yet back under half of it.
    """

    def __init__(self, limit: int, clock: Any) -> None:
        self.limit = limit
        self.clock = clock
        self.total = 0
        self.exceeded = False
        self._charges: dict[Holder, int] = {}
        self._listeners: list[Callable[[bool], None]] = []
        self._recount: Any = None

    def subscribe(self, listener: Callable[[bool], None]) -> None:
        """
        Call C{listener(exceeded)} whenever L{exceeded} changes.
        """
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[bool], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def update(self, holder: Holder, amount: int) -> None:
        """
        C{holder} holds C{amount} bytes now.
        """
        self.total += amount - self._charges.get(holder, 0)
        if amount:
            self._charges[holder] = amount
        else:
            self._charges.pop(holder, None)
        if self.limit and not self.exceeded and self.total > self.limit:
            self._check()

    def remove(self, holder: Holder) -> None:
        self.total -= self._charges.pop(holder, 0)

    def _check(self) -> None:
        """
        Recount exactly; hold windows while over the cap, release them under half.
        """
        self._recount = None
        self.total = 0
        for holder in list(self._charges):
            amount = holder.buffered()
            if amount:
                self._charges[holder] = amount
                self.total += amount
            else:
                del self._charges[holder]
        exceeded = self.total > (self.limit // 2 if self.exceeded else self.limit)
        if exceeded != self.exceeded:
            self.exceeded = exceeded
            for listener in list(self._listeners):
                listener(exceeded)
        if self.exceeded:
            self._recount = self.clock.callLater(RECOUNT_INTERVAL, self._check)
