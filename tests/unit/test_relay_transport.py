"""
Strict key exchange on the relay's SSH server, in memory against Conch's
client taught the client half of it: the server advertises it, resets both
sequence numbers after each NEWKEYS (a client that does the same gets its
first service), and drops a client that sends anything else during the
first key exchange, or anything before its KEXINIT.  A client that did not
ask for strict key exchange is served as before.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import factory, keys, service, transport
from twisted.conch.ssh.common import NS, getNS
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.relay.transport import KEX_STRICT_CLIENT, KEX_STRICT_SERVER, StrictKexServerTransport


class _ServerService(service.SSHService):
    name = b"ssh-userauth"
    started = False

    def serviceStarted(self) -> None:
        _ServerService.started = True


class _ClientService(service.SSHService):
    name = b"ssh-userauth"


class _Client(transport.SSHClientTransport):
    """
    Conch's client, optionally asking for strict key exchange (and then doing
    its half: counters back to 0 after each NEWKEYS), optionally misbehaving.

    @ivar error: the DISCONNECT the server sent, C{(code, description)}.
    @ivar secure: the first key exchange completed.
    """

    def __init__(self, strict: bool = True, ignoreBeforeKexinit: bool = False, ignoreBeforeNewkeys: bool = False):
        self.strict = strict
        self.ignoreBeforeKexinit = ignoreBeforeKexinit
        self.ignoreBeforeNewkeys = ignoreBeforeNewkeys
        self.error: tuple[int, bytes] | None = None
        self.secure = False
        self.service: Any = None

    def connectionMade(self) -> None:
        if self.strict:
            self.supportedKeyExchanges = [*self.supportedKeyExchanges, KEX_STRICT_CLIENT]
        super().connectionMade()

    def sendKexInit(self) -> None:
        if self.ignoreBeforeKexinit:
            self.sendPacket(transport.MSG_IGNORE, NS(b"first"))
        super().sendKexInit()

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        if messageType == transport.MSG_NEWKEYS and self.ignoreBeforeNewkeys:
            super().sendPacket(transport.MSG_IGNORE, NS(b"prefix"))
        super().sendPacket(messageType, payload)
        if messageType == transport.MSG_NEWKEYS and self.strict:
            self.outgoingPacketSequence = 0

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        super().dispatchMessage(messageNum, payload)
        if messageNum == transport.MSG_NEWKEYS and self.strict:
            self.incomingPacketSequence = 0

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> defer.Deferred[bool]:
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        self.secure = True
        self.requestService(_ClientService())

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self.error = (reasonCode, description)


class _Server(StrictKexServerTransport):
    """
    @ivar disconnected: what the server disconnected with, C{(code, description)}.
    """

    disconnected: tuple[int, bytes] | None = None

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        self.disconnected = (reason, desc)
        super().sendDisconnect(reason, desc)


class StrictKexTests(SynchronousTestCase):
    def setUp(self) -> None:
        _ServerService.started = False
        hostKey = keys.Key(ed25519.Ed25519PrivateKey.generate())
        self.factory = factory.SSHFactory()
        self.factory.protocol = _Server
        self.factory.publicKeys = {b"ssh-ed25519": hostKey.public()}
        self.factory.privateKeys = {b"ssh-ed25519": hostKey}
        self.factory.services = {b"ssh-userauth": _ServerService}
        self.factory.startFactory()

    def connect(self, client: _Client) -> tuple[_Server, iosim.IOPump]:
        server = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2222))
        assert isinstance(server, _Server)
        _, _, pump = iosim.connectedServerAndClient(lambda: server, lambda: client, greet=False)
        pump.flush()
        return server, pump

    def test_advertised(self) -> None:
        server, _ = self.connect(_Client())
        kexAlgorithms = getNS(server.ourKexInitPayload[17:])[0].split(b",")
        self.assertIn(KEX_STRICT_SERVER, kexAlgorithms)

    def test_strictClientServed(self) -> None:
        """
        Both sides reset their sequence numbers after NEWKEYS, so the client's
        service request and the server's answer (MACs over sequence 0) pass.
        """
        client = _Client()
        server, _ = self.connect(client)
        self.assertIsNone(server.disconnected)
        self.assertTrue(server.strictKex)
        self.assertTrue(client.secure)
        self.assertTrue(_ServerService.started)
        self.assertIs(client.service.__class__, _ClientService)

    def test_ignoreBeforeNewkeys(self) -> None:
        """
        An IGNORE slipped into the first key exchange (what a Terrapin
        attacker does) ends the connection.
        """
        client = _Client(ignoreBeforeNewkeys=True)
        server, _ = self.connect(client)
        self.assertEqual(
            server.disconnected,
            (
                transport.DISCONNECT_PROTOCOL_ERROR,
                b"strict KEX violation: unexpected message 2 during the first key exchange",
            ),
        )
        self.assertFalse(_ServerService.started)
        self.assertTrue(server.transport.disconnecting)  # type: ignore[union-attr]

    def test_kexinitNotFirst(self) -> None:
        client = _Client(ignoreBeforeKexinit=True)
        server, _ = self.connect(client)
        self.assertEqual(
            server.disconnected,
            (transport.DISCONNECT_PROTOCOL_ERROR, b"strict KEX violation: KEXINIT was not the first packet"),
        )
        self.assertEqual(client.error, server.disconnected)  # still in the clear
        self.assertFalse(client.secure)

    def test_notStrictUnchanged(self) -> None:
        """
        A client that did not ask for strict key exchange may send IGNORE
        during it, and its sequence numbers run on.
        """
        client = _Client(strict=False, ignoreBeforeKexinit=True, ignoreBeforeNewkeys=True)
        server, _ = self.connect(client)
        self.assertIsNone(server.disconnected)
        self.assertFalse(server.strictKex)
        self.assertTrue(_ServerService.started)
