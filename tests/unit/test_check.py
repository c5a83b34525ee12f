"""
incident-connector check: a lost connection is blamed on the step it was at.
"""

from __future__ import annotations

from types import SimpleNamespace

from twisted.trial.unittest import SynchronousTestCase

from incident_connector.check import _reached


class ReachedTests(SynchronousTestCase):
    def test_lostBeforeKeyExchange(self) -> None:
        """
        A relay address that closes before the key exchange (an HTTP
        server, say) fails the key exchange step; before, every lost
        connection was blamed on the forward, and key exchange, host key
        and login were reported ok.
        """
        transport = SimpleNamespace(negotiated=None, hostKeyFingerprint=None, connection=None, phase="closed")
        self.assertEqual(_reached(transport), 0)  # type: ignore[arg-type]
        transport.negotiated, transport.hostKeyFingerprint = object(), "SHA256:x"
        self.assertEqual(_reached(transport), 2)  # type: ignore[arg-type]
        transport.connection = object()
        self.assertEqual(_reached(transport), 3)  # type: ignore[arg-type]
