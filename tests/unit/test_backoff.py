"""
The reconnect policy.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from incident_connector.tunnel.service import Backoff


class BackoffTests(SynchronousTestCase):
    def test_doublesToCap(self) -> None:
        backoff = Backoff(1.0, 30.0, jitter=lambda: 0.0)
        self.assertEqual([backoff(n) for n in range(1, 8)], [1, 2, 4, 8, 16, 30, 30])

    def test_flappingConnectionsKeepBackingOff(self) -> None:
        """
        Connections that drop at once keep the delays growing although
        ClientService restarts its count at every connection.
        """
        backoff = Backoff(1.0, 30.0, stableAfter=30, jitter=lambda: 0.0)
        delays = []
        for _ in range(4):
            backoff.connectionEnded(uptime=2)
            delays.append(backoff(1))
        self.assertEqual(delays, [1, 2, 4, 8])
        backoff.connectionEnded(uptime=60)
        self.assertEqual(backoff(1), 1)
