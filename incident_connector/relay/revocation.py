# -*- test-case-name: tests.unit.test_relay_revocation -*-
"""
Revocation that bites: the C{incident-relay} command changes a connector's
generation in the registry (C{regenerate-token}, C{revoke}); the running relay
polls the registry and ends every live connection that logged in with a
certificate of an older generation.  New logins with such certificates are
refused by the certificate checker.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

from .forwards import Forwards
from .registry import Registry

__all__ = ["POLL_INTERVAL", "RevocationService"]

_log = Logger()

POLL_INTERVAL = 1.0
"""
Seconds between two looks at the registry: the bound on how long a revoked
connection lives on.
"""


class RevocationService(service.Service):
    """
    Ends revoked connections, looking every C{interval} seconds.
    """

    def __init__(self, clock: Any, registry: Registry, forwards: Forwards, interval: float = POLL_INTERVAL) -> None:
        self.registry = registry
        self.forwards = forwards
        self.interval = interval
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=False)

    def stopService(self) -> Any:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def check(self) -> None:
        """
        End every session whose certificate is of an older generation than
        its connector's (or whose connector is gone).
        """
        try:
            current = self.registry.generations()
        except sqlite3.Error as e:
            _log.error("cannot read the registry to check for revocations: {error}", error=str(e))
            return
        for session in self.forwards.allSessions():
            if current.get(session.connectorId) != session.generation:
                _log.info(
                    "connector {id}: ending the connection from {peer}: its token was regenerated or revoked",
                    id=session.connectorId,
                    peer=session.peer,
                )
                session.end("credentials revoked")
