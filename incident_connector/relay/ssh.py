# -*- test-case-name: tests.test_token -*-
"""
The relay's SSH server: accepts only certificates from its own CA, grants
C{tcpip-forward} on loopback, and opens a C{forwarded-tcpip} channel for
every connection the SaaS side makes to a connector's port, spread over that
connector's live SSH connections.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from twisted.conch import avatar, error, interfaces
from twisted.conch.ssh import connection, factory, forwarding, keys, userauth
from twisted.conch.ssh.common import NS, getNS
from twisted.cred import checkers, credentials, portal
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from zope.interface import implementer

from .ca import CertificateAuthority, CertificateRejected
from .registry import Registry

__all__ = ["Forwards", "makeServerFactory"]

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
    Accepts a login whose certificate the CA signed, for that user, now.
    """

    credentialInterfaces = [credentials.ISSHPrivateKey]

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca

    def requestAvatarId(self, offer: Any) -> defer.Deferred[bytes | tuple[()]]:
        user = offer.username.decode("utf-8", "replace")
        try:
            self.ca.verifyLogin(user, offer.algName, offer.blob, offer.sigData, offer.signature)
        except CertificateRejected as e:
            _log.warn("refused login as {user}: {reason}", user=user, reason=str(e))
            return defer.fail(UnauthorizedLogin(str(e)))
        if offer.signature is None:
            return defer.fail(error.ValidPublicKey())
        return defer.succeed(offer.username)


class _ConnectorForward:
    """
    One connector's listening port and the SSH connections it feeds.
    """

    def __init__(self, connectorId: str) -> None:
        self.connectorId = connectorId
        self.port: IListeningPort | None = None
        self.connections: list[connection.SSHConnection] = []
        self._next = 0

    @property
    def portNumber(self) -> int | None:
        return self.port.getHost().port if self.port is not None else None  # type: ignore[attr-defined]

    def nextConnection(self) -> connection.SSHConnection | None:
        if not self.connections:
            return None
        self._next = (self._next + 1) % len(self.connections)
        return self.connections[self._next]


class _RoundRobinFactory(forwarding.SSHListenForwardingFactory):
    """
    Opens each accepted connection as a channel on the connector's next live
    SSH connection.
    """

    def __init__(self, forward: _ConnectorForward) -> None:
        self.forward = forward
        self.klass = forwarding.SSHListenServerForwardingChannel

    def buildProtocol(self, addr: Any) -> Any:
        conn = self.forward.nextConnection()
        if conn is None:
            return None
        self.conn = conn
        self.hostport = ("localhost", self.forward.portNumber)
        return super().buildProtocol(addr)


class Forwards:
    """
    Every connector's forward: one loopback listening port per connector,
    opened with its first forward and closed with its last.

    @ivar listenHost: where the SaaS side connects.
    """

    def __init__(self, reactor: Any, registry: Registry, listenHost: str = "127.0.0.1") -> None:
        self.reactor = reactor
        self.registry = registry
        self.listenHost = listenHost
        self._forwards: dict[str, _ConnectorForward] = {}

    def portFor(self, connectorId: str) -> int | None:
        forward = self._forwards.get(connectorId)
        return forward.portNumber if forward is not None else None

    def add(self, connectorId: str, conn: connection.SSHConnection) -> int:
        forward = self._forwards.setdefault(connectorId, _ConnectorForward(connectorId))
        if forward.port is None:
            forward.port = self.reactor.listenTCP(0, _RoundRobinFactory(forward), interface=self.listenHost)
        if conn not in forward.connections:
            forward.connections.append(conn)
        port = forward.portNumber
        assert port is not None
        self._report(forward)
        _log.info("connector {id}: forward on port {port}", id=connectorId, port=port)
        return port

    def remove(self, connectorId: str, conn: connection.SSHConnection) -> None:
        forward = self._forwards.get(connectorId)
        if forward is None or conn not in forward.connections:
            return
        forward.connections.remove(conn)
        if not forward.connections:
            assert forward.port is not None
            forward.port.stopListening()
            forward.port = None
            del self._forwards[connectorId]
        self._report(forward)

    def _report(self, forward: _ConnectorForward) -> None:
        self.registry.setStatus(forward.connectorId, len(forward.connections), forward.portNumber)


class ConnectorAvatar(avatar.ConchUser):
    """
    A logged-in connector: may ask for a remote forward and nothing else.
    """

    conn: connection.SSHConnection | None = None

    def __init__(self, connectorId: str, forwards: Forwards) -> None:
        super().__init__()
        self.connectorId = connectorId
        self.forwards = forwards

    def global_tcpip_forward(self, data: bytes) -> Any:
        # Whatever the connector asks for, it gets its loopback port.
        if self.conn is None:
            return 0
        port = self.forwards.add(self.connectorId, self.conn)
        return 1, struct.pack(">L", port)

    def global_cancel_tcpip_forward(self, data: bytes) -> int:
        if self.conn is not None:
            self.forwards.remove(self.connectorId, self.conn)
        return 1

    def logout(self) -> None:
        if self.conn is not None:
            self.forwards.remove(self.connectorId, self.conn)


@implementer(portal.IRealm)
class _Realm:
    def __init__(self, forwards: Forwards, registry: Registry) -> None:
        self.forwards = forwards
        self.registry = registry

    def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: object, *interfaces_: Any
    ) -> tuple[Any, Any, Callable[[], None]]:
        assert isinstance(avatarId, bytes)
        connectorId = avatarId.decode()
        self.registry.seen(connectorId)
        user = ConnectorAvatar(connectorId, self.forwards)
        return interfaces.IConchUser, user, user.logout


class _RelaySSHFactory(factory.SSHFactory):
    """
    Conch's server factory, with the portal its user auth asks for declared.
    """

    portal: portal.Portal
    noisy = False


def makeServerFactory(hostKey: keys.Key, ca: CertificateAuthority, forwards: Forwards) -> factory.SSHFactory:
    """
    The SSH server factory of the relay.
    """
    serverFactory = _RelaySSHFactory()
    serverFactory.publicKeys = {b"ssh-ed25519": hostKey.public()}
    serverFactory.privateKeys = {b"ssh-ed25519": hostKey}
    serverFactory.services = {b"ssh-userauth": CertificateUserAuth, b"ssh-connection": connection.SSHConnection}
    serverFactory.portal = portal.Portal(_Realm(forwards, forwards.registry), [CertificateChecker(ca)])
    return serverFactory
