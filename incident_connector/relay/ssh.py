# -*- test-case-name: tests.unit.test_relay_ssh -*-
"""
The relay's SSH server: accepts only certificates from its own CA, issued in
the connector's current registry generation; grants C{tcpip-forward} (the
forward table is L{forwards}); refuses every channel a connector asks to open
(sessions, C{direct-tcpip}), whatever its certificate says.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from twisted.conch import avatar, error, interfaces
from twisted.conch.ssh import connection, factory, forwarding, keys, userauth
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.transport import DISCONNECT_PROTOCOL_ERROR
from twisted.cred import checkers, credentials, portal
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from .ca import CertificateAuthority, CertificateRejected, parseKeyId
from .forwards import Forwards, Session
from .registry import Registry
from .transport import StrictKexServerTransport

__all__ = ["makeServerFactory"]

_log = Logger()


class CertificateUserAuth(userauth.SSHUserAuthServer):
    """
    Conch's server parses every public key blob with C{keys.Key}, which knows
    no certificates, and fails before asking the portal.  This passes the raw
    algorithm and blob on to the portal; L{CertificateChecker} decides.
    """

    def auth_publickey(self, packet: bytes) -> defer.Deferred[Any]:
        assert self.transport is not None and self.transport.sessionID is not None
        assert self.user is not None and self.nextService is not None
        hasSignature = packet[0]
        algorithm, blob, rest = getNS(packet[1:], 2)
        if hasSignature:
            signedData = (
                NS(self.transport.sessionID)
                + bytes((userauth.MSG_USERAUTH_REQUEST,))
                + NS(self.user)
                + NS(self.nextService)
                + NS(b"publickey")
                + b"\x01"
                + NS(algorithm)
                + NS(blob)
            )
            offer = credentials.SSHPrivateKey(self.user, algorithm, blob, signedData, getNS(rest)[0])
            return self.portal.login(offer, None, interfaces.IConchUser)
        query = credentials.SSHPrivateKey(self.user, algorithm, blob, None, None)
        return self.portal.login(query, None, interfaces.IConchUser).addErrback(self._ebCheckKey, packet[1:])


@implementer(checkers.ICredentialsChecker)
class CertificateChecker:
    """
    Accepts a login whose certificate the CA signed, for that user, now, in
    the connector's current generation.  The avatar ID is the certificate's
    key ID (C{conn_... generation N}).
    """

    credentialInterfaces = [credentials.ISSHPrivateKey]

    def __init__(self, ca: CertificateAuthority, registry: Registry) -> None:
        self.ca = ca
        self.registry = registry

    def requestAvatarId(self, offer: Any) -> defer.Deferred[bytes | tuple[()]]:
        user = offer.username.decode("utf-8", "replace")
        try:
            identity = self.ca.verifyLogin(user, offer.algName, offer.blob, offer.sigData, offer.signature)
            self._checkGeneration(user, identity)
        except CertificateRejected as e:
            _log.warn("refused login as {user}: {reason}", user=user, reason=str(e))
            return defer.fail(UnauthorizedLogin(str(e)))
        if offer.signature is None:
            return defer.fail(error.ValidPublicKey())
        return defer.succeed(identity.encode())

    def _checkGeneration(self, user: str, identity: str) -> None:
        parsed = parseKeyId(identity)
        if parsed is None or parsed[0] != user:
            raise CertificateRejected(f"key ID {identity!r} does not name {user!r}")
        current = self.registry.generation(user)
        if current is None:
            raise CertificateRejected("unknown connector")
        if parsed[1] != current:
            raise CertificateRejected("certificate issued before the token was regenerated or revoked")


class ConnectorAvatar(avatar.ConchUser):
    """
    A logged-in connector: may ask for a remote forward, cancel it, and
    nothing else.

    @ivar session: its entry in the forward table.
    """

    conn: connection.SSHConnection | None = None

    def __init__(self, session: Session, forwards: Forwards) -> None:
        super().__init__()
        self.session = session
        self.forwards = forwards

    def global_tcpip_forward(self, data: bytes) -> Any:
        # Whatever port it asks for, it gets its connector's loopback port.
        try:
            bindAddress, _ = forwarding.unpackGlobal_tcpip_forward(data)
        except (struct.error, UnicodeDecodeError):
            return 0
        port = self.forwards.grant(self.session, bindAddress)
        return 1, struct.pack(">L", port)

    def global_cancel_tcpip_forward(self, data: bytes) -> int:
        self.forwards.cancel(self.session)
        return 1

    def logout(self) -> None:
        self.forwards.logout(self.session)


class RelayConnection(connection.SSHConnection):
    """
    Conch's connection service, with three changes: it enters its session in
    the forward table when it starts; it refuses every channel the connector
    opens; and it sends no window adjustment for a channel whose platform
    socket is full (C{windowHeld}), so memory stays bounded.
    """

    def serviceStarted(self) -> None:
        super().serviceStarted()
        user = self._avatar()
        assert self.transport is not None
        peer = self.transport.getPeer().address
        user.session.peer = f"{peer.host}:{peer.port}"
        user.session.conn = self
        user.forwards.login(user.session)

    def serviceStopped(self) -> None:
        # Out of the table first: the channels still opening on this
        # connection fail below, and their streams must go elsewhere.
        user = self._avatar()
        user.forwards.logout(user.session)
        super().serviceStopped()

    def _avatar(self) -> ConnectorAvatar:
        assert self.transport is not None
        user = self.transport.avatar
        assert isinstance(user, ConnectorAvatar)
        return user

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        assert self.transport is not None
        try:
            channelType, rest = getNS(packet)
            (senderChannel,) = struct.unpack(">L", rest[:4])
        except (struct.error, IndexError):
            self.transport.sendDisconnect(DISCONNECT_PROTOCOL_ERROR, b"malformed CHANNEL_OPEN")
            return
        session = self._avatar().session
        _log.warn(
            "refused a {type} channel from connector {id} at {peer}: connectors may only forward",
            type=channelType[:64].decode("ascii", "replace"),
            id=session.connectorId,
            peer=session.peer,
        )
        self.transport.sendPacket(
            connection.MSG_CHANNEL_OPEN_FAILURE,
            struct.pack(">2L", senderChannel, connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
            + NS(b"connectors may only forward")
            + NS(b""),
        )

    def adjustWindow(self, channel: Any, bytesToAdd: int) -> None:
        if getattr(channel, "windowHeld", False):
            return
        super().adjustWindow(channel, bytesToAdd)


@implementer(portal.IRealm)
class _Realm:
    def __init__(self, reactor: Any, forwards: Forwards, registry: Registry) -> None:
        self.reactor = reactor
        self.forwards = forwards
        self.registry = registry

    def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: object, *interfaces_: Any
    ) -> tuple[Any, Any, Callable[[], None]]:
        assert isinstance(avatarId, bytes)
        parsed = parseKeyId(avatarId.decode())
        assert parsed is not None  # CertificateChecker checked it
        connectorId, generation = parsed
        self.registry.seen(connectorId)
        session = Session(connectorId, generation, "", self.reactor.seconds())
        user = ConnectorAvatar(session, self.forwards)
        return interfaces.IConchUser, user, user.logout


class _RelaySSHFactory(factory.SSHFactory):
    """
    Conch's server factory, with the portal its user auth asks for declared.
    """

    portal: portal.Portal
    noisy = False
    protocol = StrictKexServerTransport


def makeServerFactory(
    reactor: Any, hostKey: keys.Key, ca: CertificateAuthority, registry: Registry, forwards: Forwards
) -> factory.SSHFactory:
    """
    The SSH server factory of the relay.
    """
    serverFactory = _RelaySSHFactory()
    serverFactory.publicKeys = {b"ssh-ed25519": hostKey.public()}
    serverFactory.privateKeys = {b"ssh-ed25519": hostKey}
    serverFactory.services = {b"ssh-userauth": CertificateUserAuth, b"ssh-connection": RelayConnection}
    serverFactory.portal = portal.Portal(_Realm(reactor, forwards, registry), [CertificateChecker(ca, registry)])
    return serverFactory
