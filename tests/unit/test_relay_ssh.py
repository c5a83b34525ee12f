"""
The relay's SSH server pieces in memory: certificates of an older
generation are refused at login; every channel a connector opens (a shell,
C{direct-tcpip}) is refused whatever its certificate says, with one log line;
a connection going away leaves the forward table before its half-open
channels fail, so their streams go to another connection; and the revocation
poll ends connections of an older generation.
"""

from __future__ import annotations

import base64
import struct
from pathlib import Path
from typing import Any

from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh import connection
from twisted.conch.ssh.address import SSHTransportAddress
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.transport import DISCONNECT_BY_APPLICATION, DISCONNECT_PROTOCOL_ERROR
from twisted.cred.credentials import SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.relay.ca import CertificateAuthority, loadOrCreateKey
from incident_connector.relay.forwards import Forwards, Session
from incident_connector.relay.registry import Registry
from incident_connector.relay.revocation import RevocationService
from incident_connector.relay.ssh import CertificateChecker, ConnectorAvatar, RelayConnection
from incident_connector.relay.streams import Stream

from ..integration.harness import writeKeyPair
from .test_relay_forwards import PlatformTransport


class CheckerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir()
        self.ca = CertificateAuthority(loadOrCreateKey(self.dir / "ca"), 60)
        self.registry = Registry(self.dir / "registry.sqlite3")
        self.addCleanup(self.registry.close)
        self.connectorId, _ = self.registry.add("demo")
        self.checker = CertificateChecker(self.ca, self.registry)
        self.publicLine = writeKeyPair(self.dir / "key")

    def offer(self, generation: int, user: str | None = None) -> Any:
        line, _ = self.ca.sign(self.publicLine, self.connectorId, generation)
        algorithm, blob = line.split()[:2]
        offer = SSHPrivateKey(
            (user or self.connectorId).encode(), algorithm.encode(), base64.b64decode(blob), None, None
        )
        return self.checker.requestAvatarId(offer)

    def test_currentGenerationAccepted(self) -> None:
        # Without a signature a key is only "acceptable": ValidPublicKey.
        self.failureResultOf(self.offer(0), ValidPublicKey)

    def test_olderGenerationRefused(self) -> None:
        self.registry.regenerateToken(self.connectorId)
        failure = self.failureResultOf(self.offer(0), UnauthorizedLogin)
        self.assertIn("issued before the token was regenerated or revoked", str(failure.value))
        self.failureResultOf(self.offer(1), ValidPublicKey)

    def test_unknownConnectorRefused(self) -> None:
        other = CertificateChecker(self.ca, Registry(self.dir / "empty.sqlite3"))
        self.checker = other
        failure = self.failureResultOf(self.offer(0), UnauthorizedLogin)
        self.assertIn("unknown connector", str(failure.value))


class FakeSSHTransport:
    """
    The part of Conch's server transport the connection service uses.
    """

    def __init__(self, avatar: ConnectorAvatar) -> None:
        self.avatar = avatar
        self.packets: list[tuple[int, bytes]] = []
        self.disconnected: tuple[int, bytes] | None = None

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        self.packets.append((messageType, payload))

    def getPeer(self) -> SSHTransportAddress:
        return SSHTransportAddress(IPv4Address("TCP", "192.0.2.7", 40222))

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        self.disconnected = (reason, desc)


class ConnectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.forwards = Forwards(self.reactor)

    def connect(self, generation: int = 0) -> tuple[RelayConnection, FakeSSHTransport]:
        session = Session("conn_1", generation, "", self.reactor.seconds())
        user = ConnectorAvatar(session, self.forwards)
        conn = RelayConnection()
        transport = FakeSSHTransport(user)
        conn.transport = transport  # type: ignore[assignment]
        conn.serviceStarted()
        return conn, transport

    def test_channelsRefused(self) -> None:
        """
        A shell, an exec, a C{direct-tcpip}: each refused as administratively
        prohibited, with one warning naming the connector and no traceback.
        """
        conn, transport = self.connect()
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for number, kind in enumerate([b"session", b"direct-tcpip", b"x11"]):
            conn.ssh_CHANNEL_OPEN(NS(kind) + struct.pack(">3L", number, 65536, 32768) + b"extra")
            messageType, payload = transport.packets[-1]
            self.assertEqual(messageType, connection.MSG_CHANNEL_OPEN_FAILURE)
            self.assertEqual(struct.unpack(">2L", payload[:8]), (number, connection.OPEN_ADMINISTRATIVELY_PROHIBITED))
            self.assertEqual(getNS(payload[8:])[0], b"connectors may only forward")
        self.assertEqual(conn.channels, {})
        warnings = [e for e in events if e.get("log_level") is LogLevel.warn]
        self.assertEqual(len(warnings), 3)
        self.assertEqual(
            (warnings[0]["type"], warnings[0]["id"], warnings[0]["peer"]), ("session", "conn_1", "192.0.2.7:40222")
        )
        self.assertFalse([e for e in events if e.get("log_failure") is not None])

    def test_malformedOpen(self) -> None:
        conn, transport = self.connect()
        conn.ssh_CHANNEL_OPEN(NS(b"session") + b"\x00")
        self.assertEqual(transport.disconnected, (DISCONNECT_PROTOCOL_ERROR, b"malformed CHANNEL_OPEN"))

    def test_forwardGranted(self) -> None:
        conn, _ = self.connect()
        user = conn.transport.avatar  # type: ignore[union-attr]
        ok, reply = user.global_tcpip_forward(NS(b"localhost") + struct.pack(">L", 0))
        self.assertEqual(ok, 1)
        self.assertEqual(struct.unpack(">L", reply)[0], self.forwards.portFor("conn_1"))
        self.assertEqual(user.global_tcpip_forward(b"\x00"), 0)  # malformed

    def test_heldWindowNotAdjusted(self) -> None:
        conn, transport = self.connect()

        class Channel:
            id = 3
            windowHeld = True
            localClosed = False
            localWindowLeft = 0

        channel = Channel()
        conn.channelsToRemoteChannel[channel] = 9  # type: ignore[index]
        conn.adjustWindow(channel, 100)  # type: ignore[arg-type]
        self.assertEqual(transport.packets, [])
        channel.windowHeld = False
        conn.adjustWindow(channel, 100)  # type: ignore[arg-type]
        self.assertEqual(transport.packets, [(connection.MSG_CHANNEL_WINDOW_ADJUST, struct.pack(">2L", 9, 100))])

    def test_stoppedConnectionLeavesTableFirst(self) -> None:
        """
        When a connection goes, the streams still opening on it are offered
        to another connection, never to the one going.
        """
        dying, _ = self.connect()
        dying.transport.avatar.global_tcpip_forward(NS(b"localhost") + struct.pack(">L", 0))  # type: ignore[union-attr]
        other, otherTransport = self.connect()
        other.transport.avatar.global_tcpip_forward(NS(b"localhost") + struct.pack(">L", 0))  # type: ignore[union-attr]
        stream = Stream(self.forwards, "conn_1")
        stream.makeConnection(PlatformTransport())
        self.assertEqual(len(dying.channels), 1)
        dying.serviceStopped()
        self.assertEqual(len(other.channels), 1)
        self.assertEqual(otherTransport.packets[-1][0], connection.MSG_CHANNEL_OPEN)
        self.assertEqual([s.peer for s in self.forwards.sessionsOf("conn_1")], ["192.0.2.7:40222"])

    def test_revocationPoll(self) -> None:
        """
        Within one poll interval of a generation change, the connections of
        older generations are told to go; the current ones stay.
        """
        registry = Registry(Path(self.mktemp()) / "registry.sqlite3")
        self.addCleanup(registry.close)
        connectorId, _ = registry.add("demo")

        def login(connectorId: str, generation: int) -> Session:
            session = Session(connectorId, generation, "", 0)
            session.conn = connection.SSHConnection()
            session.conn.transport = FakeSSHTransport(None)  # type: ignore[arg-type]
            self.forwards.login(session)
            return session

        old = login(connectorId, 0)
        stray = login("conn_deleted", 0)
        poll = RevocationService(self.reactor, registry, self.forwards, interval=1.0)
        poll.startService()
        self.addCleanup(poll.stopService)
        self.reactor.advance(1)
        self.assertIsNone(old.conn.transport.disconnected)
        self.assertEqual(stray.conn.transport.disconnected, (DISCONNECT_BY_APPLICATION, b"credentials revoked"))
        registry.regenerateToken(connectorId)
        new = login(connectorId, 1)
        self.reactor.advance(1)
        self.assertEqual(old.conn.transport.disconnected, (DISCONNECT_BY_APPLICATION, b"credentials revoked"))
        self.assertIsNone(new.conn.transport.disconnected)
