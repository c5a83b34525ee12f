# -*- test-case-name: tests.unit.test_relay_registry -*-
"""
The connector registry: one SQLite file under the data directory, shared by
the running relay and the C{incident-relay} command.

Tokens are shown once and stored only as SHA-256 hashes (they are 256-bit
random strings, so a plain hash is enough); comparison is constant-time.

Every connector has a I{generation}, written into the key ID of each
certificate issued to it.  Regenerating or revoking the token increments it,
which refuses every earlier certificate at login and tells the running relay
(which polls it) to end the connector's live connections.
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
    last_seen REAL,
    generation INTEGER NOT NULL DEFAULT 0
);
"""

# A token hash no token has: the connector is revoked until its token is regenerated.
_REVOKED = ""


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _newToken() -> str:
    return "ict_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Connector:
    """
    One registered connector.

    @ivar generation: bumped by every token regeneration and revocation.
    @ivar revoked: no token is valid until it is regenerated.
    """

    id: str
    name: str
    description: str
    created: float
    lastSeen: float | None
    generation: int
    revoked: bool


class Registry:
    """
    @ivar path: the SQLite file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(str(path), isolation_level=None, timeout=10)
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(connectors)")}
        if "generation" not in columns:  # a registry from before revocation existed
            self._db.execute("ALTER TABLE connectors ADD COLUMN generation INTEGER NOT NULL DEFAULT 0")

    def add(self, name: str, description: str = "") -> tuple[str, str]:
        """
        Register a connector; return its ID and its token (shown only now).
        """
        connectorId = "conn_" + secrets.token_hex(8)
        token = _newToken()
        self._db.execute(
            "INSERT INTO connectors (id, name, description, token_hash, created) VALUES (?, ?, ?, ?, ?)",
            (connectorId, name, description, _hash(token), time.time()),
        )
        return connectorId, token

    def regenerateToken(self, connectorId: str) -> str | None:
        """
        A new token; the old one, and every certificate issued before, stop
        working at once.  L{None} if the connector is unknown.
        """
        token = _newToken()
        cursor = self._db.execute(
            "UPDATE connectors SET token_hash = ?, generation = generation + 1 WHERE id = ?",
            (_hash(token), connectorId),
        )
        return token if cursor.rowcount else None

    def revoke(self, connectorId: str) -> bool:
        """
        Invalidate the token and every certificate issued so far, issuing no
        new token.  Returns whether the connector exists.
        """
        cursor = self._db.execute(
            "UPDATE connectors SET token_hash = ?, generation = generation + 1 WHERE id = ?",
            (_REVOKED, connectorId),
        )
        return bool(cursor.rowcount)

    def exists(self, connectorId: str) -> bool:
        return self._db.execute("SELECT 1 FROM connectors WHERE id = ?", (connectorId,)).fetchone() is not None

    def authenticate(self, connectorId: str, token: str) -> int | None:
        """
        The connector's generation if C{token} is its current token, else L{None}.
        """
        row = self._db.execute("SELECT token_hash, generation FROM connectors WHERE id = ?", (connectorId,)).fetchone()
        if row is None or row[0] == _REVOKED or not hmac.compare_digest(row[0], _hash(token)):
            return None
        return int(row[1])

    def generation(self, connectorId: str) -> int | None:
        """
        The connector's current generation, or L{None} if it is unknown.
        """
        row = self._db.execute("SELECT generation FROM connectors WHERE id = ?", (connectorId,)).fetchone()
        return None if row is None else int(row[0])

    def generations(self) -> dict[str, int]:
        """
        Every connector's current generation (what the relay polls).
        """
        return {row[0]: int(row[1]) for row in self._db.execute("SELECT id, generation FROM connectors")}

    def seen(self, connectorId: str) -> None:
        self._db.execute("UPDATE connectors SET last_seen = ? WHERE id = ?", (time.time(), connectorId))

    def list(self) -> list[Connector]:
        rows = self._db.execute(
            "SELECT id, name, description, created, last_seen, generation, token_hash = ? "
            "FROM connectors ORDER BY created",
            (_REVOKED,),
        ).fetchall()
        return [Connector(r[0], r[1], r[2], r[3], r[4], int(r[5]), bool(r[6])) for r in rows]

    def close(self) -> None:
        self._db.close()
