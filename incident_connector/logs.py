# -*- test-case-name: tests.test_observability -*-
"""
Log observers: human text by default, one JSON object per line on request.
Both are the observers C{twisted.logger} ships, filtered by level.
"""

from __future__ import annotations

from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)

__all__ = ["makeObserver"]


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
