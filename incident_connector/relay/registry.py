# -*- test-case-name: tests.test_token -*-
"""
The connector registry: one SQLite file under the data directory.

Tokens are shown once and stored only as SHA-256 hashes (they are 256-bit
random strings, so a plain hash is enough); comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Connector", "Registry"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS connectors (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    token_hash TEXT NOT NULL,
    created REAL NOT NULL,
    last_seen REAL
);
CREATE TABLE IF NOT EXISTS status (
    id TEXT PRIMARY KEY,
    connections INTEGER NOT NULL,
    allocated_port INTEGER
);
"""


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Connector:
    """
    One registered connector and its live status.
    """

    id: str
    name: str
    description: str
    created: float
    lastSeen: float | None
    connections: int
    allocatedPort: int | None

    @property
    def online(self) -> bool:
        return self.connections > 0

    def asJSON(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "status": "online" if self.online else "offline",
            "connections": self.connections,
            "allocated_port": self.allocatedPort,
            "created": self.created,
            "last_seen": self.lastSeen,
        }


class Registry:
    """
    @ivar path: the SQLite file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.executescript(_SCHEMA)

    def add(self, name: str, description: str = "") -> tuple[str, str]:
        """
        Register a connector; return its ID and its token (shown only now).
        """
        connectorId = "conn_" + secrets.token_hex(8)
        token = "ict_" + secrets.token_urlsafe(32)
        self._db.execute(
            "INSERT INTO connectors (id, name, description, token_hash, created) VALUES (?, ?, ?, ?, ?)",
            (connectorId, name, description, _hash(token), time.time()),
        )
        return connectorId, token

    def regenerateToken(self, connectorId: str) -> str | None:
        """
        A new token; the old one stops working at once.  L{None} if unknown.
        """
        token = "ict_" + secrets.token_urlsafe(32)
        cursor = self._db.execute("UPDATE connectors SET token_hash = ? WHERE id = ?", (_hash(token), connectorId))
        return token if cursor.rowcount else None

    def exists(self, connectorId: str) -> bool:
        return self._db.execute("SELECT 1 FROM connectors WHERE id = ?", (connectorId,)).fetchone() is not None

    def checkToken(self, connectorId: str, token: str) -> bool:
        row = self._db.execute("SELECT token_hash FROM connectors WHERE id = ?", (connectorId,)).fetchone()
        return row is not None and hmac.compare_digest(row[0], _hash(token))

    def seen(self, connectorId: str) -> None:
        self._db.execute("UPDATE connectors SET last_seen = ? WHERE id = ?", (time.time(), connectorId))

    def setStatus(self, connectorId: str, connections: int, allocatedPort: int | None) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO status (id, connections, allocated_port) VALUES (?, ?, ?)",
            (connectorId, connections, allocatedPort),
        )

    def clearStatus(self) -> None:
        """
        Forget live status (at relay start: no connection survives a restart).
        """
        self._db.execute("DELETE FROM status")

    def list(self) -> list[Connector]:
        rows = self._db.execute(
            "SELECT c.id, c.name, c.description, c.created, c.last_seen, "
            "COALESCE(s.connections, 0), s.allocated_port "
            "FROM connectors c LEFT JOIN status s ON s.id = c.id ORDER BY c.created"
        ).fetchall()
        return [Connector(*row) for row in rows]

    def close(self) -> None:
        self._db.close()
