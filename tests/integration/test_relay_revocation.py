"""
Revocation that bites, end to end: C{incident-relay regenerate-token} (or
C{revoke}) ends the connector's live SSH connection within seconds; the
connector cannot log in again with the certificate it holds, and buying a new
one with the old token gets 401.  After C{revoke}, only a regenerated token
lets it back in.
"""

from __future__ import annotations

import re

from .harness import waitFor
from .test_token import TokenTestCase


class RevocationTests(TokenTestCase):
    # Long enough that the certificate is still valid when the connection is
    # ended; short enough that the connector soon tries to buy a new one.
    lifetime = "12s"

    def assertCutOff(self, connectorId: str, token: str, command: str) -> None:
        connector = self.startConnector(connectorId, token)
        connector.allocatedPort()
        mark = len(connector.text())
        relayMark = len(self.relay.log.read_text())
        self.relay.cli(command, connectorId)

        def offline() -> bool:
            return "online" not in self.relay.cli("list")

        waitFor(offline, 5, "the connection to end")
        connector.waitForLog("connection lost after .*: relay disconnected: credentials revoked", after=mark, timeout=5)
        waitFor(
            lambda: (
                "certificate issued before the token was regenerated or revoked"
                in self.relay.log.read_text()[relayMark:]
            ),
            15,
            "a login with the old certificate to be refused",
        )
        connector.waitForLog("authentication failed: the relay refused the certificate", after=mark)
        connector.waitForLog("credentials rejected: the API token is wrong or was regenerated", after=mark, timeout=20)
        self.assertNotRegex(connector.text()[mark:], re.compile("Allocated port"))
        self.assertEqual(connector.get("/readyz")[0], 503)
        self.assertNotIn(token, connector.text())

    def test_regenerateEndsSessions(self) -> None:
        connectorId, token = self.relay.add("demo")
        self.assertCutOff(connectorId, token, "regenerate-token")

    def test_revoke(self) -> None:
        """
        C{revoke} cuts the connector off the same way and issues no token;
        C{regenerate-token} lets it in again with the new token.
        """
        connectorId, token = self.relay.add("demo")
        self.assertCutOff(connectorId, token, "revoke")
        self.assertRegex(self.relay.cli("list"), rf"{connectorId}\s+demo\s+revoked\s+connections=0")
        newToken = self.relay.cli("regenerate-token", connectorId).strip()
        self.dir = self.dir / "again"
        connector = self.startConnector(connectorId, newToken)
        connector.allocatedPort()
