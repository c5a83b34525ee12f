# -*- test-case-name: tests.unit.test_window -*-
"""
How much window each channel gets: sized to the queue the relay builds.

The relay may queue towards us as much as the windows we grant.  On a fast
link that queue drains in moments; on a slow one, 2 MiB per channel is
seconds of data, and everything else the relay sends us (an interactive
stream's reply, a new stream's handshake, a keepalive's answer) waits behind
it in the relay's buffers, where we cannot reorder it.  So the window follows
the queueing delay that the relay's answers to our requests show (a channel
request timed while data flows, keepalives on a quiet link), as LEDBAT
(RFC 6817) does: a round trip less the smallest seen lately is time
spent in queues.  Above L{TARGET} the window shrinks in proportion, well
under it the window grows again, between L{MIN_WINDOW} and the most a
channel ever gets; and never under twice each busy channel's share of what
the link holds in flight (the rate data came at, times the smallest round
trip), so a long link stays full: a window is topped up only once half of it
is used.  With N channels at L{MIN_WINDOW}, the relay may still queue N x 64
KiB: that is the floor of what this can do.

Only round trips taken while the relay was sending us channel data, and we
were not sending much ourselves, move the window: with our own uploads
queued, a long round trip says nothing about the relay's queue.  Those
"loaded" round trips may lower the smallest but never age it out: under a
transfer that never pauses, every round trip carries the queue the windows
leave, and forgetting the quiet ones would take that queue for the path.

No I/O here: the connection sends the probes and reports what came back.
"""

from __future__ import annotations

from collections import deque

__all__ = ["MIN_WINDOW", "TARGET", "WindowSizer"]

#: Queueing delay the windows aim to stay under.
TARGET = 0.1
#: The smallest window a channel is given: two full packets, so the relay
#: always has one to send while we take the other.
MIN_WINDOW = 64 * 1024
#: The smallest round trip is kept per bucket of this many seconds...
BASE_BUCKET = 60.0
#: ... over this many buckets: a path that got longer for good is learnt
#: within ten minutes of quiet round trips (keepalives, probes with no data
#: arriving).
BASE_BUCKETS = 10
#: A window adapted to a slow moment goes back to the most after this long
#: with no loaded round trip: the next transfer starts at full speed and
#: shrinks again within a few round trips if the link is still slow.  (A
#: relay that never answers leaves the window where it was.)
IDLE_RESET = 30.0
#: Bounds of one step: halve at most, grow by a quarter at most.
MOST_SHRINK = 0.5
MOST_GROWTH = 1.25


class WindowSizer:
    """
    The window each channel of one relay connection is topped up to.

    @ivar size: bytes of window per channel now.
    @ivar largest: the most a channel ever gets.
    @ivar roundTrip: the last round trip, in seconds (L{None} before one).
    @ivar baseHistory: the smallest round trip in each of the last
        L{BASE_BUCKETS} buckets, as C{[bucket start, seconds]}.
    @ivar lastLoaded: when a loaded round trip last came back (L{None}: not
        since the start or the last reset).
    """

    def __init__(self, largest: int) -> None:
        self.largest = largest
        self.size = largest
        self.roundTrip: float | None = None
        self.baseHistory: deque[list[float]] = deque(maxlen=BASE_BUCKETS)
        self.lastLoaded: float | None = None

    @property
    def base(self) -> float | None:
        """
        The smallest round trip seen lately: the path without queues.
        """
        return min((seconds for _, seconds in self.baseHistory), default=None)

    def current(self, now: float) -> int:
        """
        The window to give a channel at C{now}: the most again once no
        loaded round trip came back for L{IDLE_RESET} seconds.
        """
        last = self.lastLoaded
        if last is not None and not 0 <= now - last <= IDLE_RESET:
            self.size = self.largest
            self.lastLoaded = None
        return self.size

    def sample(self, seconds: float, now: float, loaded: bool, received: int = 0, channels: int = 1) -> None:
        """
        A request sent C{seconds} before C{now} was answered;
        C{loaded}: the relay sent channel data meanwhile (C{received} bytes,
        on C{channels} channels) and we sent little.  A negative round trip
        (the wall clock was stepped back) is ignored.
        """
        if seconds < 0:
            return
        self.roundTrip = seconds
        history = self.baseHistory
        if history and (loaded or 0 <= now - history[-1][0] < BASE_BUCKET):
            history[-1][1] = min(history[-1][1], seconds)
        else:
            history.append([now, seconds])
        if not loaded:
            return
        self.current(now)
        self.lastLoaded = now
        base = self.base
        assert base is not None
        queued = seconds - base
        if queued > TARGET:
            factor = max(MOST_SHRINK, TARGET / queued)
        elif queued < TARGET / 2:
            factor = MOST_GROWTH
        else:
            return
        inFlight = received / seconds * base / max(channels, 1) if seconds > 0 else 0
        least = max(MIN_WINDOW, min(self.largest, int(2 * inFlight)))
        self.size = max(least, min(self.largest, int(self.size * factor)))
