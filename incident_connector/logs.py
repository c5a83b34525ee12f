# -*- test-case-name: tests.integration.test_observability -*-
"""
Log observers: human text by default, one JSON object per line on request.
Both are the observers C{twisted.logger} ships, filtered by level.
"""

from __future__ import annotations

from typing import IO

from twisted.internet.interfaces import IReactorTime
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)

__all__ = ["Throttle", "makeObserver"]


def makeObserver(format: str, level: str, stream: IO[str]) -> ILogObserver:
    """
    An observer writing to C{stream} in C{format} (C{text} or C{json}) the
    events at C{level} or above.
    """
    # No RFC 7464 record separator: one JSON object per line, as log shippers expect.
    inner = jsonFileLogObserver(stream, recordSeparator="") if format == "json" else textFileLogObserver(stream)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    if level != "debug":
        # Conch narrates every channel and packet at info.
        predicate.setLogLevelForNamespace("twisted.conch", LogLevel.warn)
        # ClientService's own retry line; the relay service logs a clearer one.
        predicate.setLogLevelForNamespace("twisted.application._client_service", LogLevel.warn)
        # Agent's connection pool announces every HTTP connection it opens.
        predicate.setLogLevelForNamespace("twisted.web.client._HTTP11ClientFactory", LogLevel.warn)
    return FilteringLogObserver(inner, [predicate])


class Throttle:
    """
    Decides whether a repeated line may be logged now: at most once per
    C{interval} seconds per key, so that what an outsider repeats cannot
    flood the log.

    @ivar clock: tells the time.
    @ivar interval: seconds between two lines of one key.
    """

    def __init__(self, clock: IReactorTime, interval: float) -> None:
        self.clock = clock
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, key: str) -> int | None:
        """
        L{None} if a line of C{key} was logged less than C{interval} ago
        (this one is counted instead); else how many were not logged since.
        """
        now = self.clock.seconds()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)
