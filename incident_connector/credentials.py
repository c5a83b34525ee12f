# -*- test-case-name: tests.integration.test_token -*-
"""
What the connector logs in to the relay with, per connection attempt: a
login name, a private key, optionally a certificate, and the host key policy.

Two sources: L{StaticCredentials} (key files, for self-hosted relays) and
L{TokenCredentials} (a short-lived certificate bought with the API token,
renewed before a third of its lifetime is left).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.conch.ssh.keys import Key
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from .api import CertificateAPI, CredentialsError
from .keyfiles import checkPrivateFile, createKeyFile, ensurePrivateDirectory
from .tunnel.auth import Credentials, CredentialsSource
from .tunnel.certificates import CertificateError, UserCertificate
from .tunnel.hostkeys import HostKeyPolicy

__all__ = ["Credentials", "CredentialsSource", "StaticCredentials", "TokenCredentials", "loadOrCreateKey"]

_log = Logger()

#: How far ahead of this machine's clock a certificate's start may be (the
#: relay, not us, checks it, with its own clock).
CLOCK_SKEW = 300.0


class StaticCredentials:
    """
    Credentials from files that do not change while running.
    """

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials

    def get(self) -> defer.Deferred[Credentials]:
        return defer.succeed(self.credentials)

    def invalidate(self) -> None:
        """
        Key files cannot be renewed: the next attempt uses them again.
        """


def loadOrCreateKey(stateDir: Path) -> Key:
    """
    The connector's ed25519 key under C{stateDir}, generated (0600) on first
    use; C{stateDir} is created (0700) if missing.

    @raise UnsafePermissions: others could replace the directory's files or
        the key, or read the key.
    """
    ensurePrivateDirectory(stateDir)
    path = stateDir / "id_ed25519"
    if createKeyFile(path):
        _log.info("generated a new ed25519 key at {path}", path=str(path))
    checkPrivateFile(path)
    return Key.fromFile(str(path))


class TokenCredentials:
    """
    Buys a certificate with the API token and keeps it fresh.

    @ivar lastError: the most recent API failure, or L{None}.
    """

    def __init__(
        self,
        reactor: Any,
        api: CertificateAPI,
        stateDir: Path,
        relayHost: str,
        relayPort: int,
        relayUser: str | None = None,
        pin: str | None = None,
    ) -> None:
        self.reactor = reactor
        self.api = api
        self.stateDir = stateDir
        self.relayHost = relayHost
        self.relayPort = relayPort
        self.relayUser = relayUser
        self.pin = pin
        self.key = loadOrCreateKey(stateDir)
        self._lifetime = 0.0
        self.lastError: CredentialsError | None = None
        self._credentials: Credentials | None = None
        self._waiting: list[defer.Deferred[Credentials]] = []
        self._renewal: Any = None

    @property
    def certificate(self) -> UserCertificate | None:
        """
        The current certificate, or L{None} before the first.
        """
        return self._credentials.certificate if self._credentials is not None else None

    def secondsToExpiry(self) -> float:
        if self.certificate is None:
            return 0.0
        return max(0.0, self.certificate.validBefore - self.reactor.seconds())

    def _fresh(self) -> bool:
        if self._credentials is None:
            return False
        return self.secondsToExpiry() > self._lifetime / 3

    def get(self) -> defer.Deferred[Credentials]:
        if self._fresh():
            assert self._credentials is not None
            return defer.succeed(self._credentials)
        mine: defer.Deferred[Credentials] = defer.Deferred()
        self._waiting.append(mine)
        if len(self._waiting) == 1:  # one request to the API, however many callers
            defer.ensureDeferred(self._renew()).addBoth(self._deliver)
        return mine

    def invalidate(self) -> None:
        """
        The relay refused the certificate (revoked, or the token was
        regenerated): buy a new one before the next attempt instead of
        retrying this one until its renewal time.
        """
        self._credentials = None

    def _deliver(self, result: Credentials | Failure) -> None:
        waiting, self._waiting = self._waiting, []
        for deferred in waiting:
            if isinstance(result, Failure):
                deferred.errback(result)
            else:
                deferred.callback(result)

    async def _renew(self) -> Credentials:
        publicLine = self.key.public().toString("openssh").decode() + " incident-connector"
        try:
            response = await self.api.requestCertificate(publicLine)
        except CredentialsError as e:
            self.lastError = e
            raise
        try:
            certificate, user, knownHostsText = self._check(response)
        except CertificateError as e:
            error = CredentialsError(f"the certificate API returned an unusable certificate: {e}", "bad_response")
            self.lastError = error
            raise error from None
        knownHosts = self.stateDir / "known_hosts"
        try:
            knownHosts.write_text(knownHostsText)
        except (OSError, UnicodeError) as e:
            error = CredentialsError(f"cannot write {knownHosts}: {e}", "bad_response")
            self.lastError = error
            raise error from None
        policy = HostKeyPolicy(self.relayHost, self.relayPort, self.pin, str(knownHosts))
        self.lastError = None
        self._credentials = Credentials(user, self.key, certificate, policy)
        # From now, not from valid_after: relays backdate that for clock skew.
        self._lifetime = self.secondsToExpiry()
        _log.info("certificate issued for {user}: valid for {seconds:.0f} s", user=user, seconds=self._lifetime)
        self._scheduleRenewal(max(1.0, self._lifetime * 2 / 3))
        return self._credentials

    def _check(self, response: dict[str, Any]) -> tuple[UserCertificate, str, str]:
        """
        The certificate, login name and known_hosts text of the API's
        answer, which is untrusted.

        @raise CertificateError: unusable: malformed, for another key or
            connector, expired or not yet valid.
        """
        certificate = UserCertificate.fromLine(response.get("certificate"), self.key)
        now = self.reactor.seconds()
        if certificate.validBefore <= now:
            raise CertificateError(
                f"it expired {now - certificate.validBefore:.0f} s ago (is this machine's clock right?)"
            )
        if certificate.validAfter > now + CLOCK_SKEW:
            raise CertificateError(
                f"it is not yet valid for {certificate.validAfter - now:.0f} s (is this machine's clock right?)"
            )
        connectorId = self.api.connectorId
        if connectorId not in certificate.principals:
            raise CertificateError(f"it is not valid for connector {connectorId}")
        relayUser = response.get("relay_user")
        knownHostsText = response.get("known_hosts", "")
        if not isinstance(relayUser, (str, type(None))) or not isinstance(knownHostsText, str):
            raise CertificateError("relay_user and known_hosts must be strings")
        user = self.relayUser or relayUser or connectorId
        return certificate, user, knownHostsText

    def _scheduleRenewal(self, delay: float) -> None:
        if self._renewal is not None and self._renewal.active():
            self._renewal.cancel()

        def renew() -> None:
            self._renewal = None
            self.get().addErrback(lambda f: _log.warn("certificate renewal failed: {error}", error=f.value))

        self._renewal = self.reactor.callLater(delay, renew)

    def stop(self) -> None:
        if self._renewal is not None and self._renewal.active():
            self._renewal.cancel()
