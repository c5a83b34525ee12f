"""
The relay's connector registry: tokens, generations, revocation, and
registries written before generations existed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from incident_connector.relay.registry import Registry


class RegistryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp()) / "registry.sqlite3"
        self.registry = Registry(self.path)
        self.addCleanup(self.registry.close)

    def test_tokenGivesGeneration(self) -> None:
        connectorId, token = self.registry.add("demo")
        self.assertEqual(self.registry.authenticate(connectorId, token), 0)
        self.assertIsNone(self.registry.authenticate(connectorId, token + "x"))
        self.assertIsNone(self.registry.authenticate("conn_unknown", token))

    def test_regenerateBumpsGeneration(self) -> None:
        """
        A regenerated token refuses the old one and moves the generation on,
        which is what makes older certificates and connections go.
        """
        connectorId, old = self.registry.add("demo")
        new = self.registry.regenerateToken(connectorId)
        assert new is not None
        self.assertIsNone(self.registry.authenticate(connectorId, old))
        self.assertEqual(self.registry.authenticate(connectorId, new), 1)
        self.assertEqual(self.registry.generations(), {connectorId: 1})
        self.assertIsNone(self.registry.regenerateToken("conn_unknown"))

    def test_revokeLocksOut(self) -> None:
        """
        Revoking refuses the token (no new one) and moves the generation on;
        regenerating the token lets the connector in again.
        """
        connectorId, token = self.registry.add("demo")
        self.assertTrue(self.registry.revoke(connectorId))
        self.assertIsNone(self.registry.authenticate(connectorId, token))
        self.assertIsNone(self.registry.authenticate(connectorId, ""))
        self.assertEqual(self.registry.generation(connectorId), 1)
        [listed] = self.registry.list()
        self.assertTrue(listed.revoked)
        new = self.registry.regenerateToken(connectorId)
        assert new is not None
        self.assertEqual(self.registry.authenticate(connectorId, new), 2)
        self.assertFalse(self.registry.list()[0].revoked)
        self.assertFalse(self.registry.revoke("conn_unknown"))

    def test_changesSeenByAnotherProcess(self) -> None:
        """
        The CLI and the running relay each open the file: one's change is
        what the other reads next.
        """
        connectorId, _ = self.registry.add("demo")
        other = Registry(self.path)
        self.addCleanup(other.close)
        self.assertEqual(other.generation(connectorId), 0)
        other.revoke(connectorId)
        self.assertEqual(self.registry.generations(), {connectorId: 1})

    def test_olderRegistryMigrated(self) -> None:
        """
        A registry written before generations existed gains the column, at
        generation 0 for every connector, and keeps its tokens.
        """
        path = Path(self.mktemp()) / "old.sqlite3"
        path.parent.mkdir()
        db = sqlite3.connect(str(path))
        db.executescript(
            "CREATE TABLE connectors (id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL DEFAULT '',"
            " token_hash TEXT NOT NULL, created REAL NOT NULL, last_seen REAL);"
            "INSERT INTO connectors VALUES ('conn_old', 'old', '',"
            " '69fa7b0201e5e0b5e15d90e95a4f9f557dba4b8a7e4d37de36dbdc305f433944', 1.0, NULL);"
        )
        db.commit()
        db.close()
        registry = Registry(path)
        self.addCleanup(registry.close)
        self.assertEqual(registry.generations(), {"conn_old": 0})
        self.assertEqual(registry.authenticate("conn_old", "ict_old"), 0)
