# -*- test-case-name: tests.unit.test_limits,tests.integration.test_limits -*-
"""
File descriptors: at start the connector raises its soft C{RLIMIT_NOFILE} to
the hard limit, then checks that C{--max-streams} fits under it.  If it does
not, it says so in one line and serves fewer streams, so that a busy tunnel
refuses the extra channels (C{OPEN_RESOURCE_SHORTAGE}) instead of failing
random C{accept}s and C{connect}s with C{EMFILE}.

Windows has no C{RLIMIT_NOFILE} (no C{resource} module): there the check is
skipped and C{--max-streams} is taken as given.  (Its default reactor,
select, handles at most 512 sockets: use C{--max-streams} below that.)
"""

from __future__ import annotations

import os

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

from twisted.logger import Logger

from .web import MAX_CONNECTIONS

__all__ = ["DescriptorLimitError", "fitMaxStreams", "raiseDescriptorLimit", "streamsThatFit"]

#: Descriptors a stream holds: the connection to its destination.  (Its
#: other end is an SSH channel, which holds none.)
PER_STREAM = 1

#: Descriptors held apart from streams, beyond those open at start and the
#: metrics listener's connections: each relay connection (and its proxy),
#: name resolution (up to the reactor's 10 resolver threads, each with a
#: socket or two), a destination connection being retried, log rotation.
RESERVE = 32

_log = Logger()


class DescriptorLimitError(ValueError):
    """
    The descriptor limit is too low to run at all; the message says what to raise.
    """


def raiseDescriptorLimit() -> int | None:
    """
    Raise the soft C{RLIMIT_NOFILE} to the hard limit, if allowed; return the
    soft limit now in force, or L{None} where there is no such limit.
    """
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # some platforms cap below the hard limit
            pass
    return soft


def streamsThatFit(limit: int, inUse: int, connections: int, listenerConnections: int = MAX_CONNECTIONS) -> int:
    """
    How many streams each of C{connections} relay connections may carry
    under a limit of C{limit} descriptors, C{inUse} of them already open.
    """
    spare = limit - inUse - listenerConnections - RESERVE - 2 * connections
    return max(0, spare // (PER_STREAM * connections))


def openDescriptors() -> int:
    """
    Descriptors this process has open now (0 where that cannot be told).
    """
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder))
        except OSError:
            continue
    return 0


def fitMaxStreams(requested: int, connections: int) -> int:
    """
    Raise the descriptor limit and return how many streams each relay
    connection may carry: C{requested} (C{--max-streams}), or fewer if that
    many would not fit, with one log line saying so.

    @raise DescriptorLimitError: not even one stream fits.
    """
    limit = raiseDescriptorLimit()
    if limit is None:
        return requested
    inUse = openDescriptors()
    fits = streamsThatFit(limit, inUse, connections)
    if fits >= requested:
        return requested
    perConnection = " per relay connection" if connections > 1 else ""
    if fits < 1:
        needed = inUse + MAX_CONNECTIONS + RESERVE + (2 + PER_STREAM) * connections
        raise DescriptorLimitError(
            f"the file descriptor limit ({limit}) leaves no room for streams: it must be at least {needed}, "
            "and about one more per stream (raise LimitNOFILE, or ulimit -n)"
        )
    _log.warn(
        "the file descriptor limit ({limit}) fits {fits} streams{perConnection}, not --max-streams {requested}: "
        "serving at most {fits} (raise LimitNOFILE, or ulimit -n)",
        limit=limit,
        fits=fits,
        perConnection=perConnection,
        requested=requested,
    )
    return fits
