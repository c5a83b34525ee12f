"""
The window sizer: what round trips do to the window each channel gets.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from incident_connector.tunnel.window import (
    BASE_BUCKET,
    BASE_BUCKETS,
    IDLE_RESET,
    MIN_WINDOW,
    TARGET,
    WindowSizer,
)

MiB = 1024 * 1024


def sizer(base: float = 0.01) -> WindowSizer:
    """
    A sizer at 2 MiB that has seen a quiet round trip of C{base} seconds.
    """
    windows = WindowSizer(2 * MiB)
    windows.sample(base, 0.0, loaded=False)
    return windows


class WindowSizerTests(SynchronousTestCase):
    def test_shrinksWithTheRelaysQueue(self) -> None:
        """
        A loaded round trip well past the quiet one halves the window at
        most per answer, down to L{MIN_WINDOW} and no further.
        """
        windows = sizer()
        windows.sample(0.01 + 3 * TARGET, 1.0, loaded=True)
        self.assertEqual(windows.size, MiB)
        windows.sample(0.01 + 1.5 * TARGET, 2.0, loaded=True)
        self.assertEqual(windows.size, int(MiB / 1.5))
        for second in range(3, 20):
            windows.sample(3.0, second, loaded=True)
        self.assertEqual(windows.size, MIN_WINDOW)

    def test_growsBackOnceTheQueueIsGone(self) -> None:
        """
        Round trips under half the target grow it by a quarter each, up to
        the most a channel gets; between half and the target it holds.
        """
        windows = sizer()
        windows.sample(1.0, 1.0, loaded=True)
        small = windows.size
        windows.sample(0.01 + 0.75 * TARGET, 2.0, loaded=True)
        self.assertEqual(windows.size, small)
        windows.sample(0.01, 3.0, loaded=True)
        self.assertEqual(windows.size, int(small * 1.25))
        for second in range(4, 30):
            windows.sample(0.01, second, loaded=True)
        self.assertEqual(windows.size, 2 * MiB)

    def test_unloadedRoundTripsOnlyTeachTheBase(self) -> None:
        """
        A long round trip the connection did not call loaded moves nothing
        but what "quiet" means.
        """
        windows = WindowSizer(2 * MiB)
        windows.sample(0.5, 0.0, loaded=False)
        windows.sample(0.2, 1.0, loaded=False)
        self.assertEqual((windows.size, windows.base, windows.roundTrip), (2 * MiB, 0.2, 0.2))

    def test_aLongLinkStaysFull(self) -> None:
        """
        However long the queue looks, the window stays at twice what the
        link holds in flight (rate x quiet round trip): half a window is
        the least the relay may send before our next adjustment.
        """
        windows = sizer(base=0.1)
        # 4 MiB/s: 400 KiB in flight on a 100 ms path.
        for second in range(1, 5):
            windows.sample(0.5, second, loaded=True, received=2 * MiB)
        self.assertEqual(windows.size, int(2 * 4 * MiB * 0.1))

    def test_baseForgetsAnOldPath(self) -> None:
        """
        The quiet round trip is the smallest over the last ten minutes: a
        path that got longer for good is learnt.
        """
        windows = sizer(base=0.01)
        for bucket in range(1, BASE_BUCKETS):
            windows.sample(0.2, bucket * BASE_BUCKET, loaded=False)
        self.assertEqual(windows.base, 0.01)
        windows.sample(0.2, BASE_BUCKETS * BASE_BUCKET, loaded=False)
        self.assertEqual(windows.base, 0.2)

    def test_startsAfreshAfterIdle(self) -> None:
        """
        A window shrunk on a slow moment is back to the most for a transfer
        that starts after a quiet spell, and shrinks again from there.
        """
        windows = sizer()
        for second in range(1, 10):
            windows.sample(3.0, second, loaded=True)
        self.assertEqual(windows.size, MIN_WINDOW)
        self.assertEqual(windows.current(9 + IDLE_RESET), MIN_WINDOW)
        self.assertEqual(windows.current(10 + IDLE_RESET), 2 * MiB)
        windows.sample(3.0, 11 + IDLE_RESET, loaded=True)
        self.assertEqual(windows.size, MiB)

    def test_aSteadyQueueIsNotTakenForThePath(self) -> None:
        """
        Under a transfer that never pauses, every round trip carries what
        the windows leave queued; over an hour of them the quiet round trip
        is still the one seen before, and the windows stay small.
        """
        windows = sizer(base=0.05)
        for second in range(1, 3600):
            windows.sample(0.05 + 2 * TARGET, float(second), loaded=True)
        self.assertEqual((windows.base, windows.size), (0.05, MIN_WINDOW))

    def test_aClockSteppedBack(self) -> None:
        """
        The wall clock stepped back: a negative round trip is ignored, and
        round trips after it count as usual.
        """
        windows = sizer(base=0.05)
        windows.sample(-2.0, 100.0, loaded=True)
        self.assertEqual((windows.base, windows.size, windows.roundTrip), (0.05, 2 * MiB, 0.05))
        windows.sample(0.05 + 3 * TARGET, 50.0, loaded=True)
        self.assertEqual(windows.size, MiB)
        windows.sample(0.01, 40.0, loaded=False)
        self.assertEqual(windows.base, 0.01)

    def test_theFloorIsEachChannelsShare(self) -> None:
        """
        Twice the link's bytes in flight is shared among the channels that
        carried data: with four, each keeps a quarter.
        """
        windows = sizer(base=0.1)
        for second in range(1, 5):
            windows.sample(0.5, second, loaded=True, received=2 * MiB, channels=4)
        self.assertEqual(windows.size, int(2 * 4 * MiB * 0.1 / 4))
