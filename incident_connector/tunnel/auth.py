# -*- test-case-name: tests.test_tunnel -*-
"""
User authentication to the relay with one ed25519 key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.conch.ssh import keys, userauth
from twisted.internet import defer

from .transport import TunnelError

if TYPE_CHECKING:
    from twisted.conch.ssh.service import SSHService

    from .transport import RelayTransport

__all__ = ["RelayUserAuth", "loadIdentity"]


def loadIdentity(path: str) -> keys.Key:
    """
    Load an OpenSSH private key file (unencrypted).

    @raise ValueError: the file is not a usable private key.
    """
    try:
        key = keys.Key.fromFile(path)
    except (keys.BadKeyError, keys.EncryptedKeyError, OSError) as e:
        raise ValueError(f"cannot load {path!r}: {e}") from None
    if not key.isPublic() and key.type() in ("Ed25519", "EC"):
        return key
    raise ValueError(f"{path!r} is a {key.type()} key; use ed25519 (Conch signs RSA with SHA-1, which OpenSSH refuses)")


class RelayUserAuth(userauth.SSHUserAuthClient):
    """
    Offers exactly one public key, then gives up.

    @ivar key: the private key.
    """

    preferredOrder = [b"publickey"]
    transport: RelayTransport

    def __init__(self, user: bytes, instance: SSHService, key: keys.Key) -> None:
        super().__init__(user, instance)
        self.key = key
        self._offered = False

    def getPublicKey(self) -> keys.Key | None:
        if self._offered:
            return None
        self._offered = True
        return self.key.public()

    def getPrivateKey(self) -> defer.Deferred[keys.Key]:
        return defer.succeed(self.key)

    def ssh_USERAUTH_FAILURE(self, packet: bytes) -> object:
        if self._offered:
            self.transport.fail(
                TunnelError(
                    f"authentication failed: the relay refused the key for user {self.user.decode()!r}",
                    "auth",
                )
            )
        return super().ssh_USERAUTH_FAILURE(packet)
