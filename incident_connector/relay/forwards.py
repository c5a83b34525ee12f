# -*- test-case-name: tests.unit.test_relay_forwards -*-
"""
The forward table: every connector's live SSH connections (several replicas
of one connector, or one connector with C{--connections N}, share one
connector ID) and the one loopback port the platform dials for that connector.

A connection is I{forwarding} once it was granted C{tcpip-forward}, and
I{draining} once it sent C{cancel-tcpip-forward} (its connector is shutting
down): it keeps its open streams and gets no new one.  New streams go
round-robin over the forwarding connections (L{Forwards.pick}).  The port is
open while at least one connection is forwarding.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from twisted.conch.ssh.transport import DISCONNECT_BY_APPLICATION
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from .streams import StreamFactory

__all__ = ["Forwards", "Session"]

_log = Logger()

IDLE = "idle"
FORWARDING = "forwarding"
DRAINING = "draining"
CLOSED = "closed"


class Session:
    """
    One logged-in SSH connection of a connector.

    @ivar connectorId: the connector it logged in as.
    @ivar generation: the registry generation of the certificate it logged in with.
    @ivar peer: the connector's address, C{host:port}.
    @ivar started: when it logged in (the reactor's clock).
    @ivar conn: its C{SSHConnection}, once the connection service started.
    @ivar state: C{idle} (no forward asked for yet), C{forwarding},
        C{draining} or C{closed}.
    @ivar streams: channels open on it now.
    @ivar bindAddress: the bind address its C{tcpip-forward} named, echoed in
        every C{forwarded-tcpip} open.
    """

    def __init__(self, connectorId: str, generation: int, peer: str, started: float) -> None:
        self.connectorId = connectorId
        self.generation = generation
        self.peer = peer
        self.started = started
        self.conn: Any = None
        self.state = IDLE
        self.streams = 0
        self.bindAddress = "localhost"
        self._ending = False

    def end(self, reason: str) -> None:
        """
        Disconnect it (once), telling the connector C{reason}.
        """
        if self.conn is not None and self.state != CLOSED and not self._ending:
            self._ending = True
            self.conn.transport.sendDisconnect(DISCONNECT_BY_APPLICATION, reason.encode())

    def asJSON(self, now: float) -> dict[str, object]:
        return {
            "peer": self.peer,
            "state": self.state,
            "age_seconds": round(now - self.started, 1),
            "streams": self.streams,
        }


class _Connector:
    """
    One connector's sessions, the port the platform dials, and where the
    round-robin stands.
    """

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.port: IListeningPort | None = None
        self.next = 0

    @property
    def portNumber(self) -> int | None:
        return self.port.getHost().port if self.port is not None else None  # type: ignore[attr-defined]


class Forwards:
    """
    Every connector's sessions and ports.

    @ivar reactor: listens on the ports and tells the time.
    @ivar listenHost: where the platform connects to each connector's port.
    """

    def __init__(self, reactor: Any, listenHost: str = "127.0.0.1") -> None:
        self.reactor = reactor
        self.listenHost = listenHost
        self._connectors: dict[str, _Connector] = {}

    def login(self, session: Session) -> None:
        """
        Track C{session} (its connection service has started).
        """
        self._connectors.setdefault(session.connectorId, _Connector()).sessions.append(session)

    def logout(self, session: Session) -> None:
        """
        Forget C{session} (its connection is gone); called again harmlessly.
        """
        entry = self._connectors.get(session.connectorId)
        if entry is None or session not in entry.sessions:
            return
        wasForwarding = session.state == FORWARDING
        session.state = CLOSED
        entry.sessions.remove(session)
        if wasForwarding:
            self._closePortIfUnused(session.connectorId, entry)
        if not entry.sessions and entry.port is None:
            del self._connectors[session.connectorId]

    def grant(self, session: Session, bindAddress: str) -> int:
        """
        C{session} asked for a remote forward: it takes streams from now on.
        Returns the connector's port.
        """
        entry = self._connectors[session.connectorId]
        if entry.port is None:
            entry.port = self.reactor.listenTCP(0, StreamFactory(self, session.connectorId), interface=self.listenHost)
        session.state = FORWARDING
        session.bindAddress = bindAddress
        port = entry.portNumber
        assert port is not None
        _log.info(
            "connector {id}: {peer} forwards port {port} ({count} connections forwarding)",
            id=session.connectorId,
            peer=session.peer,
            port=port,
            count=sum(1 for s in entry.sessions if s.state == FORWARDING),
        )
        return port

    def cancel(self, session: Session) -> None:
        """
        C{session} cancelled its forward: no new streams, open ones go on.
        """
        if session.state != FORWARDING:
            return
        session.state = DRAINING
        _log.info(
            "connector {id}: {peer} is draining ({streams} open streams)",
            id=session.connectorId,
            peer=session.peer,
            streams=session.streams,
        )
        self._closePortIfUnused(session.connectorId, self._connectors[session.connectorId])

    def _closePortIfUnused(self, connectorId: str, entry: _Connector) -> None:
        if entry.port is not None and not any(s.state == FORWARDING for s in entry.sessions):
            entry.port.stopListening()
            entry.port = None
            _log.info("connector {id}: no connection forwards any more; port closed", id=connectorId)

    def pick(self, connectorId: str, tried: set[Session]) -> Session | None:
        """
        The next forwarding session of C{connectorId} (round-robin) that is not
        in C{tried}, or L{None}.
        """
        entry = self._connectors.get(connectorId)
        if entry is None:
            return None
        count = len(entry.sessions)
        for step in range(count):
            index = (entry.next + step) % count
            session = entry.sessions[index]
            if session.state == FORWARDING and session not in tried:
                entry.next = index + 1
                return session
        return None

    def portFor(self, connectorId: str) -> int | None:
        entry = self._connectors.get(connectorId)
        return entry.portNumber if entry is not None else None

    def sessionsOf(self, connectorId: str) -> list[Session]:
        entry = self._connectors.get(connectorId)
        return list(entry.sessions) if entry is not None else []

    def allSessions(self) -> Iterator[Session]:
        for entry in list(self._connectors.values()):
            yield from list(entry.sessions)
