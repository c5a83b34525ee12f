"""
What the connector logs in with, in memory: the certificate bought with the
token is renewed when a third of its lifetime is left and at once when the
relay refused it, one API request however many callers wait; a certificate
that is expired, not yet valid or for another connector, or an answer of the
wrong shape, is refused as a bad response; key files that are not keys say so
without quoting them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.api import CredentialsError
from incident_connector.credentials import TokenCredentials
from incident_connector.relay.ca import CertificateAuthority
from incident_connector.tunnel.auth import loadIdentity

LIFETIME = 900


class FakeAPI:
    """
    The certificate API, signing with a real CA at the clock's time.

    @ivar requests: how many certificates were asked for.
    @ivar waiting: if set, requests wait on it (a slow API).
    @ivar failure: if set, requests fail with it.
    @ivar principal: whom certificates are for.
    @ivar offset: seconds the CA's clock is ahead of ours.
    @ivar document: if set, shapes the answer from the certificate line.
    """

    connectorId = "conn_1"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.ca = CertificateAuthority(ed25519.Ed25519PrivateKey.generate(), LIFETIME)
        self.requests = 0
        self.waiting: defer.Deferred[None] | None = None
        self.failure: CredentialsError | None = None
        self.principal = "conn_1"
        self.offset = 0.0
        self.document: Any = None

    async def requestCertificate(self, publicKeyLine: str) -> dict[str, Any]:
        self.requests += 1
        if self.waiting is not None:
            await self.waiting
        if self.failure is not None:
            raise self.failure
        line, _ = self.ca.sign(publicKeyLine, self.principal, now=self.clock.seconds() + self.offset)
        if self.document is not None:
            return self.document(line)  # type: ignore[no-any-return]
        return {"certificate": line, "known_hosts": "", "relay_user": "conn_1"}


class TokenCredentialsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.api = FakeAPI(self.clock)
        stateDir = Path(self.mktemp())
        self.source = TokenCredentials(self.clock, self.api, stateDir, "relay", 22, pin="SHA256:" + "A" * 43)  # type: ignore[arg-type]
        self.addCleanup(self.source.stop)

    def get(self) -> Any:
        return self.successResultOf(self.source.get())

    def test_renewedAtTwoThirds(self) -> None:
        first = self.get()
        self.assertEqual(first.user, "conn_1")
        self.assertEqual(self.get(), first, "a fresh certificate is reused")
        self.clock.advance(LIFETIME * 2 / 3 - 1)
        self.assertEqual(self.api.requests, 1)
        self.clock.advance(1)
        self.assertEqual(self.api.requests, 2, "renewed when a third of its lifetime was left")
        self.assertGreater(self.get().certificate.validBefore, first.certificate.validBefore)

    def test_oneRequestForManyCallers(self) -> None:
        self.api.waiting = defer.Deferred()
        calls = [self.source.get() for _ in range(5)]
        self.assertEqual(self.api.requests, 1)
        self.api.waiting.callback(None)
        results = [self.successResultOf(call) for call in calls]
        self.assertEqual(len({id(result) for result in results}), 1)

    def test_refusedCertificateReplaced(self) -> None:
        """
        After the relay refused the certificate (revoked), the next attempt
        buys a new one at once instead of retrying the old.
        """
        first = self.get()
        self.source.invalidate()
        self.assertIsNot(self.get(), first)
        self.assertEqual(self.api.requests, 2)

    def test_failureReported(self) -> None:
        self.api.failure = CredentialsError("credentials rejected", "unauthorized", retryAfter=60)
        failure = self.failureResultOf(self.source.get(), CredentialsError)
        self.assertEqual(failure.value.reason, "unauthorized")
        self.assertIs(self.source.lastError, self.api.failure)


class IdentityFileTests(SynchronousTestCase):
    def test_notAKeyNotQuoted(self) -> None:
        """
        A token file given as --identity-file by mistake: the error names the
        file, never its contents.
        """
        path = Path(self.mktemp())
        path.write_text("s3cret-token-value\n")
        error = self.assertRaises(ValueError, loadIdentity, str(path))
        self.assertEqual(str(error), f"{str(path)!r} is not an OpenSSH private key")

    def test_missing(self) -> None:
        error = self.assertRaises(ValueError, loadIdentity, "/nonexistent/key")
        self.assertEqual(str(error), "cannot read '/nonexistent/key': No such file or directory")


class UntrustedCertificateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.api = FakeAPI(self.clock)
        self.source = TokenCredentials(self.clock, self.api, Path(self.mktemp()), "relay", 22, pin="SHA256:" + "A" * 43)  # type: ignore[arg-type]
        self.addCleanup(self.source.stop)

    def refused(self) -> CredentialsError:
        failure = self.failureResultOf(self.source.get(), CredentialsError)
        self.assertEqual(failure.value.reason, "bad_response")
        self.assertIs(self.source.lastError, failure.value)
        return failure.value

    def test_expiredRefused(self) -> None:
        """
        An expired certificate is refused, and does not start a renewal every second.
        """
        self.api.offset = -3600
        result = self.source.get()
        result.addErrback(lambda f: None)
        self.clock.pump([1] * 10)
        self.assertEqual(self.api.requests, 1, "asked the API again every second")
        self.assertIn("expired", str(self.refused()))

    def test_notYetValidRefused(self) -> None:
        self.api.offset = 3600
        self.assertIn("not yet valid", str(self.refused()))

    def test_wrongPrincipalRefused(self) -> None:
        self.api.principal = "conn_2"
        self.assertIn("conn_1", str(self.refused()))

    def test_certificateNotAString(self) -> None:
        for value in (5, ["x"], {"a": 1}, None):
            self.api.document = lambda line, value=value: {"certificate": value, "relay_user": "conn_1"}
            self.refused()

    def test_unknownCertificateType(self) -> None:
        self.api.document = lambda line: {"certificate": "foo-cert-v01@openssh.com AAAAB3Nza", "relay_user": "conn_1"}
        self.refused()

    def test_relayUserDefaultsToConnectorId(self) -> None:
        """
        Without relay_user the login name is the connector ID (the contract's default), not ''.
        """
        self.api.document = lambda line: {"certificate": line, "known_hosts": ""}
        self.assertEqual(self.successResultOf(self.source.get()).user, "conn_1")
