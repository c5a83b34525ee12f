# -*- test-case-name: tests.unit.test_transport,tests.integration.test_e2e -*-
"""
User authentication to the relay with one ed25519 key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.conch.ssh import keys, userauth
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.keys import Key
from twisted.internet import defer

from .certificates import UserCertificate
from .errors import ProtocolError, TunnelError
from .hostkeys import HostKeyPolicy
from .wire import Reader, escape

if TYPE_CHECKING:
    from twisted.conch.ssh.service import SSHService

    from .interfaces import IRelayTransport

__all__ = ["Credentials", "CredentialsSource", "RelayUserAuth", "loadIdentity"]


@dataclass(frozen=True)
class Credentials:
    """
    @ivar user: the SSH login name.
    @ivar key: the private key that signs.
    @ivar certificate: offered instead of the plain public key, if set.
    @ivar hostKeyPolicy: decides whether the relay's host key is trusted.
    """

    user: str
    key: Key
    certificate: UserCertificate | None
    hostKeyPolicy: HostKeyPolicy


class CredentialsSource(Protocol):
    """
    Where a relay connection gets what it logs in with, before every attempt:
    key files, or a certificate bought with the API token.  A failure is a
    L{CredentialsUnavailable}.
    """

    def get(self) -> defer.Deferred[Credentials]:
        """
        Credentials valid for a connection attempt starting now.
        """

    def invalidate(self) -> None:
        """
        The relay refused the last credentials: do not offer them again if
        they can be renewed.
        """


def loadIdentity(path: str) -> keys.Key:
    """
    Load an OpenSSH private key file (unencrypted).

    @raise ValueError: the file is not a usable private key.
    """
    try:
        key = keys.Key.fromFile(path)
    except OSError as e:
        raise ValueError(f"cannot read {path!r}: {e.strerror}") from None
    except keys.EncryptedKeyError:
        raise ValueError(f"{path!r} is encrypted; give an unencrypted key") from None
    except (keys.BadKeyError, ValueError, IndexError, TypeError):
        # Conch's message may quote the file: never print what could be a secret.
        raise ValueError(f"{path!r} is not an OpenSSH private key") from None
    if not key.isPublic() and key.type() in ("Ed25519", "EC"):
        return key
    raise ValueError(f"{path!r} is a {key.type()} key; use ed25519 (Conch signs RSA with SHA-1, which OpenSSH refuses)")


#: The user-auth answers a public key login can get.
_ANSWERS = frozenset({userauth.MSG_USERAUTH_FAILURE, userauth.MSG_USERAUTH_SUCCESS, userauth.MSG_USERAUTH_PK_OK})


class RelayUserAuth(userauth.SSHUserAuthClient):
    """
    Offers exactly one key, as a certificate if there is one, then gives up.

    @ivar key: the private key that signs.
    @ivar certificate: offered instead of the plain public key, if set.
    """

    preferredOrder = [b"publickey"]
    transport: IRelayTransport  # type: ignore[assignment]

    def __init__(
        self, user: bytes, instance: SSHService, key: keys.Key, certificate: UserCertificate | None = None
    ) -> None:
        super().__init__(user, instance)
        self.key = key
        self.certificate = certificate
        self._offered = False

    def auth_publickey(self) -> defer.Deferred[bool]:
        """
        Offer the key.  Conch's own version only knows C{keys.Key}; for a
        certificate the offer carries its blob under its algorithm, and Conch's
        C{PK_OK} handling signs with the plain key, which is what OpenSSH wants.
        """
        if self._offered:
            return defer.succeed(False)
        self._offered = True
        offered: Any = self.certificate or self.key.public()
        self.lastPublicKey = offered
        self.askForAuth(b"publickey", b"\x00" + NS(offered.sshType()) + NS(offered.blob()))
        return defer.succeed(True)

    def getPrivateKey(self) -> defer.Deferred[keys.Key]:
        return defer.succeed(self.key)

    def tryAuth(self, kind: bytes) -> defer.Deferred[bool] | None:
        """
        Conch tries every method the relay lists that it has code for
        (keyboard-interactive, password): the connector only offers its key.
        """
        return self.auth_publickey() if kind == b"publickey" else None

    def ssh_USERAUTH_PK_OK(self, packet: bytes) -> object:
        # Message 60 means something else for every method; only a key was asked about.
        if self.lastAuth != b"publickey":
            raise ProtocolError("the relay sent USERAUTH_PK_OK although no key was offered")
        return super().ssh_USERAUTH_PK_OK(packet)

    def packetReceived(self, messageNum: int, packet: bytes) -> object:
        if messageNum not in _ANSWERS:
            # Conch would log each one, whole, at info: the relay could fill the log.
            self.transport.sendUnimplemented()
            return None
        return super().packetReceived(messageNum, packet)

    def ssh_USERAUTH_FAILURE(self, packet: bytes) -> object:
        # Strictly, as OpenSSH: Conch's own parsing raises TypeError on a short one.
        reader = Reader(packet, "USERAUTH_FAILURE")
        methods = reader.string()
        reader.boolean()
        reader.end()
        if b"publickey" not in methods.split(b",") and not self._offered:
            self.transport.fail(
                TunnelError(
                    f"authentication failed: the relay takes no public key (it offers {escape(methods, 100)})", "auth"
                )
            )
        elif self._offered:
            what = "certificate" if self.certificate else "key"
            self.transport.fail(
                TunnelError(
                    f"authentication failed: the relay refused the {what} for user {self.user.decode()!r}",
                    "auth",
                )
            )
        return super().ssh_USERAUTH_FAILURE(packet)
