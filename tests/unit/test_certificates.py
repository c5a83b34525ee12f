"""
OpenSSH user certificates: parsing, and the reference relay CA.
"""

from __future__ import annotations

import time
from pathlib import Path

from twisted.conch.ssh.keys import Key
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.relay.ca import CertificateAuthority, CertificateRejected, loadOrCreateKey
from incident_connector.tunnel.certificates import CertificateError, UserCertificate

from ..integration.harness import (
    writeKeyPair,
)


class CertificateUnitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir()
        self.ca = CertificateAuthority(loadOrCreateKey(self.dir / "ca"), 60)
        self.publicLine = writeKeyPair(self.dir / "key")
        self.key = Key.fromFile(str(self.dir / "key"))

    def test_parsedForItsKey(self) -> None:
        line, validBefore = self.ca.sign(self.publicLine, "conn_1")
        certificate = UserCertificate.fromLine(line, self.key)
        self.assertEqual(certificate.principals, ("conn_1",))
        self.assertEqual(certificate.validBefore, validBefore)
        self.assertEqual(certificate.sshType(), b"ssh-ed25519-cert-v01@openssh.com")

    def test_otherKeyRefused(self) -> None:
        line, _ = self.ca.sign(writeKeyPair(self.dir / "other"), "conn_1")
        self.assertRaises(CertificateError, UserCertificate.fromLine, line, self.key)

    def test_notACertificate(self) -> None:
        self.assertRaises(CertificateError, UserCertificate.fromLine, self.publicLine)

    def test_loginChecks(self) -> None:
        line, _ = self.ca.sign(self.publicLine, "conn_1")
        certificate = UserCertificate.fromLine(line)
        verify = self.ca.verifyLogin
        verify("conn_1", certificate.algorithm, certificate.blob(), None, None)
        for user, algorithm, expected in [
            ("conn_2", certificate.algorithm, "not valid for user"),
            ("conn_1", b"ssh-ed25519", "only ssh-ed25519-cert-v01"),
        ]:
            exc = self.assertRaises(CertificateRejected, verify, user, algorithm, certificate.blob(), None, None)
            self.assertIn(expected, str(exc))
        other = CertificateAuthority(loadOrCreateKey(self.dir / "other_ca"), 60)
        exc = self.assertRaises(
            CertificateRejected, other.verifyLogin, "conn_1", certificate.algorithm, certificate.blob(), None, None
        )
        self.assertIn("not signed by this relay's CA", str(exc))
        expired, _ = self.ca.sign(self.publicLine, "conn_1", now=time.time() - 3600)
        old = UserCertificate.fromLine(expired)
        exc = self.assertRaises(CertificateRejected, verify, "conn_1", old.algorithm, old.blob(), None, None)
        self.assertIn("expired", str(exc))
