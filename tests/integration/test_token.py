"""
Token authentication end to end: the connector buys a short-lived SSH
certificate with its API token from the reference relay (or logs in to a real
sshd that trusts the relay's CA), and the relay serves it.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.relay.ca import CertificateAuthority, loadOrCreateKey

from .harness import (
    Connector,
    ReferenceRelay,
    Relay,
    Target,
    echo,
    http200,
    recvExactly,
    socks5Connect,
    waitFor,
    writeKeyPair,
)


class TokenTestCase(SynchronousTestCase):
    lifetime = "15m"

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.relay = ReferenceRelay(self.dir / "relay", self.lifetime).start()
        self.addCleanup(self.relay.stop)

    def startConnector(self, connectorId: str, token: str, *extra: str, apiURL: str | None = None) -> Connector:
        connector = Connector(
            self.dir / "connector",
            [
                "--connector-id", connectorId,
                "--api-url", apiURL or self.relay.apiURL,
                "--relay-address", f"127.0.0.1:{self.relay.sshPort}",
                "--state-dir", str(self.dir / "state"),
                "--reconnect-initial-delay", "0.1", "--reconnect-max-delay", "0.5",
                *extra,
            ],
            env={"INCIDENT_CONNECTOR_API_TOKEN": token},
        ).start()  # fmt: skip
        self.addCleanup(connector.stop)
        return connector

    def target(self, handler) -> Target:  # type: ignore[no-untyped-def]
        target = Target(handler)
        self.addCleanup(target.close)
        return target

    def probe(self, connectorId: str, destination: str) -> str:
        """
        The relay's test call, through C{incident-relay test} and the admin socket.
        """
        return self.relay.cli("test", connectorId, destination).strip()


class TokenTests(TokenTestCase):
    def test_tokenEndToEnd(self) -> None:
        """
        A connector ID and a token are all the connector needs: it gets a
        certificate, logs in, and curl works through the relay's port.
        """
        http = self.target(http200)
        connectorId, token = self.relay.add("demo")
        connector = self.startConnector(connectorId, token)
        port = connector.allocatedPort()
        result = subprocess.run(
            [
                "curl",
                "-sS",
                "--max-time",
                "10",
                "--socks5-hostname",
                f"127.0.0.1:{port}",
                f"http://localhost:{http.port}/",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(result.stdout, "hello from the private network\n", result.stderr)
        key = self.dir / "state" / "id_ed25519"
        self.assertEqual(stat.S_IMODE(key.stat().st_mode), 0o600)
        self.assertRegex(self.relay.cli("list"), rf"{connectorId}\s+demo\s+online\s+connections=1\s+port={port}")
        self.assertNotIn(token, connector.text())
        self.assertNotIn(token, self.relay.log.read_text())
        _status, metrics = connector.get("/metrics")
        self.assertRegex(metrics, r"incident_connector_certificate_expiry_seconds (8\d\d|9\d\d)\.")
        self.assertNotIn(token, metrics)

    def test_keyReusedAcrossRestarts(self) -> None:
        connectorId, token = self.relay.add("demo")
        first = self.startConnector(connectorId, token)
        first.allocatedPort()
        key = (self.dir / "state" / "id_ed25519").read_bytes()
        first.stop()
        second = self.startConnector(connectorId, token)
        second.allocatedPort()
        self.assertEqual((self.dir / "state" / "id_ed25519").read_bytes(), key)

    def test_testCallOutcomes(self) -> None:
        """
        The relay's test call tells apart the four outcomes.
        """
        allowed = self.target(echo)
        forbidden = self.target(echo)
        closed = Target(echo)
        closed.close()
        connectorId, token = self.relay.add("demo")
        offlineId, _ = self.relay.add("never-connected")
        connector = self.startConnector(
            connectorId, token, "--forward-dest-allowlist", f"127.0.0.1:{allowed.port} 127.0.0.1:{closed.port}"
        )
        connector.allocatedPort()
        self.assertEqual(self.probe(connectorId, f"127.0.0.1:{allowed.port}"), "ok")
        self.assertEqual(self.probe(connectorId, f"127.0.0.1:{forbidden.port}"), "destination_not_allowed")
        self.assertEqual(self.probe(connectorId, f"127.0.0.1:{closed.port}"), "connection_refused")
        self.assertEqual(self.probe(offlineId, f"127.0.0.1:{allowed.port}"), "proxy_unreachable")
        self.assertEqual(forbidden.accepts, 0)

    def test_unknownConnector(self) -> None:
        connector = self.startConnector("conn_doesnotexist", "ict_whatever")
        connector.waitForLog("unknown connector ID conn_doesnotexist")
        self.assertNotIn("Allocated port", connector.text())

    def test_wrongTokenBacksOff(self) -> None:
        connectorId, _ = self.relay.add("demo")
        connector = self.startConnector(connectorId, "ict_wrong-token")
        connector.waitForLog("credentials rejected: the API token is wrong or was regenerated")
        connector.waitForLog(r"retrying relay \S+ in (6\d|7\d)\.\d s")  # minutes-scale, not hammering
        self.assertNotIn("ict_wrong-token", connector.text())


class RenewalTests(TokenTestCase):
    lifetime = "6s"

    def test_renewedBeforeReconnect(self) -> None:
        """
        Certificates are renewed before a third of their lifetime is left, so
        a reconnect after the first one expired logs in with a fresh one.
        """
        http = self.target(http200)
        connectorId, token = self.relay.add("demo")
        connector = self.startConnector(connectorId, token)
        connector.allocatedPort()
        started = time.monotonic()
        waitFor(lambda: connector.text().count("certificate issued") >= 3, 20, "two renewals")
        self.assertGreater(time.monotonic() - started, 6)  # the first certificate has expired
        mark = len(connector.text())
        self.relay.stop()
        self.relay.start()
        port = connector.allocatedPort(after=mark)
        sock, code = socks5Connect(port, "127.0.0.1", http.port)
        self.assertEqual(code, 0)
        sock.close()

    def test_expiredCertificateRefused(self) -> None:
        """
        The relay refuses a certificate past its validity.
        """
        connectorId, _ = self.relay.add("demo")
        ca = CertificateAuthority(loadOrCreateKey(self.relay.dataDir / "user_ca"), 6)
        keyPath = self.dir / "key"
        publicLine = writeKeyPair(keyPath)
        certificate, _ = ca.sign(publicLine, connectorId, now=time.time() - 3600)
        (self.dir / "key-cert.pub").write_text(certificate)
        knownHosts = self.dir / "known_hosts"
        hostKey = (self.relay.dataDir / "host_ed25519.pub").read_text().split()
        knownHosts.write_text(f"[127.0.0.1]:{self.relay.sshPort} {hostKey[0]} {hostKey[1]}\n")
        connector = Connector(
            self.dir / "expired",
            [
                "--relay-address", f"127.0.0.1:{self.relay.sshPort}", "--relay-user", connectorId,
                "--identity-file", str(keyPath), "--certificate-file", str(self.dir / "key-cert.pub"),
                "--known-hosts", str(knownHosts),
            ],
        ).start()  # fmt: skip
        self.addCleanup(connector.stop)
        connector.waitForLog("authentication failed: the relay refused the certificate")
        waitFor(lambda: "expired or not yet valid" in self.relay.log.read_text(), 10, "the relay's reason")


class OpenSSHTrustsRelayCATests(TokenTestCase):
    def test_certificateLogsInToSshd(self) -> None:
        """
        A certificate from the reference relay's API logs in to a real sshd
        that trusts the relay's CA (--identity-file with --certificate-file).
        """
        connectorId, token = self.relay.add("demo")
        keyPath = self.dir / "connector_key"
        publicLine = writeKeyPair(keyPath)
        request = urllib.request.Request(
            f"{self.relay.apiURL}/v1/connectors/{connectorId}/ssh-certificate",
            data=json.dumps({"public_key": publicLine}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            document = json.load(response)
        certificateFile = self.dir / "connector_key-cert.pub"
        certificateFile.write_text(document["certificate"])
        principals = self.dir / "principals"
        principals.write_text(connectorId + "\n")
        sshd = Relay(
            self.dir / "sshd",
            extraConfig=f"TrustedUserCAKeys {self.relay.dataDir / 'user_ca.pub'}\n"
            f"AuthorizedPrincipalsFile {principals}",
        )
        (sshd.dir / "authorized_keys").write_text("")  # only the certificate can log in
        sshd.start()
        self.addCleanup(sshd.stop)
        http = self.target(http200)
        connector = Connector(
            self.dir / "c",
            [
                "--relay-address", f"127.0.0.1:{sshd.port}",
                "--relay-user", "root" if os.geteuid() == 0 else os.environ["USER"],
                "--identity-file", str(keyPath), "--certificate-file", str(certificateFile),
                "--known-hosts", str(sshd.knownHosts()),
            ],
        ).start()  # fmt: skip
        self.addCleanup(connector.stop)
        port = connector.allocatedPort()
        self.assertIn("Accepted publickey", sshd.log.read_text())
        self.assertIn("ED25519-CERT", sshd.log.read_text())
        sock, code = socks5Connect(port, "127.0.0.1", http.port)
        self.assertEqual(code, 0)
        sock.close()


def makeTLS(directory: Path, withIP: bool = True, name: str = "localhost") -> tuple[Path, Path, Path]:
    """
    A CA, and a server certificate it signs for C{name} (and 127.0.0.1).
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    caKey = ec.generate_private_key(ec.SECP256R1())
    caName = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(caName)
        .issuer_name(caName)
        .public_key(caKey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(caKey, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(caName)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name)] + ([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))] if withIP else [])
            ),
            critical=False,
        )
        .sign(caKey, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    caFile, certFile, keyFile = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    caFile.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certFile.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    keyFile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return caFile, certFile, keyFile


class HTTPSTests(TokenTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.caFile, certFile, keyFile = makeTLS(self.dir / "tls")
        relay = ReferenceRelay(self.dir / "relay", scheme="https")
        relay.apiListen = f"ssl:{relay.apiPort}:interface=127.0.0.1:privateKey={keyFile}:certKey={certFile}"
        relay.apiURL = f"https://localhost:{relay.apiPort}"
        self.relay = relay.start()
        self.addCleanup(self.relay.stop)

    def test_privateCA(self) -> None:
        connectorId, token = self.relay.add("demo")
        connector = self.startConnector(connectorId, token, "--api-ca-file", str(self.caFile))
        connector.allocatedPort()

    def test_wrongHostName(self) -> None:
        """
        A trusted certificate that does not name the host dialled is refused,
        and the line says so.
        """
        self.relay.stop()
        caFile, certFile, keyFile = makeTLS(self.dir / "tls-names", withIP=False)
        relay = ReferenceRelay(self.dir / "relay-names", scheme="https")
        relay.apiListen = f"ssl:{relay.apiPort}:interface=127.0.0.1:privateKey={keyFile}:certKey={certFile}"
        self.relay = relay.start()
        self.addCleanup(relay.stop)
        connectorId, token = relay.add("demo")
        connector = self.startConnector(
            connectorId, token, "--api-ca-file", str(caFile), apiURL=f"https://127.0.0.1:{relay.apiPort}"
        )
        connector.waitForLog(
            rf"TLS verification of https://127\.0\.0\.1:{relay.apiPort} failed: "
            "the server certificate does not name this host"
        )

    def test_untrustedCertificate(self) -> None:
        connectorId, token = self.relay.add("demo")
        connector = self.startConnector(connectorId, token)
        connector.waitForLog(
            rf"TLS verification of https://localhost:{self.relay.apiPort} failed: the server certificate is not trusted"
        )


__all__ = ["recvExactly"]
