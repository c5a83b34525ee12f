"""
What the relay's CA puts into a certificate: nothing but forwarding, and the
registry generation it was issued in.
"""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.relay.ca import CertificateAuthority, keyId, loadOrCreateKey, parseKeyId

from ..integration.harness import writeKeyPair


class CertificateContentTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir()
        self.ca = CertificateAuthority(loadOrCreateKey(self.dir / "ca"), 60)
        self.publicLine = writeKeyPair(self.dir / "key")

    def issue(self, generation: int = 0) -> serialization.SSHCertificate:
        line, _ = self.ca.sign(self.publicLine, "conn_1", generation)
        return serialization.load_ssh_public_identity(line.encode())  # type: ignore[return-value]

    def test_onlyForwarding(self) -> None:
        """
        The certificate forces a command that does nothing and permits port
        forwarding alone: no pty, agent or X11 forwarding, no user rc.
        """
        certificate = self.issue()
        self.assertEqual(certificate.critical_options, {b"force-command": b"/bin/false"})
        self.assertEqual(certificate.extensions, {b"permit-port-forwarding": b""})

    def test_generationInKeyId(self) -> None:
        certificate = self.issue(3)
        self.assertEqual(certificate.key_id, b"conn_1 generation 3")
        blob = base64.b64decode(certificate.public_bytes().split()[1])
        identity = self.ca.verifyLogin("conn_1", self.ca.CERT_ALGORITHM, blob, None, None)
        self.assertEqual(parseKeyId(identity), ("conn_1", 3))

    def test_parseKeyId(self) -> None:
        self.assertEqual(parseKeyId(keyId("conn_ab", 12)), ("conn_ab", 12))
        # Certificates issued before generations existed named the connector alone.
        self.assertEqual(parseKeyId("conn_ab"), ("conn_ab", 0))
        for bad in ["", "conn_ab generation x", " generation 1", "conn ab", "conn_ab generation -1"]:
            self.assertIsNone(parseKeyId(bad), bad)
