"""
OpenSSH against the relay's certificates, with the real C{ssh} client:

  - against the reference relay: strict key exchange is negotiated and a
    remote forward works; a shell, C{ssh -W} and C{ssh -L} are refused;
  - against an sshd that trusts the relay's CA: a certificate from the API
    runs no shell even where sshd would allow one (its own restrictions);
  - against the sshd recipe in docs/relay.md: even a certificate with every
    permission gets no shell, no C{-W}, no C{-L}, while the connector's
    remote forward works.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from incident_connector.relay.ca import loadOrCreateKey

from .harness import REPO, Connector, Relay, echo, freePort, recvAll, socks5Connect, waitFor, writeKeyPair
from .test_token import TokenTestCase

SSH = "ssh"


def recipe(user: str, caFile: Path, principals: Path, forwarding: str = "remote") -> str:
    """
    The sshd configuration block from docs/relay.md, for C{user} and these files.
    """
    text = (REPO / "docs" / "relay.md").read_text()
    match = re.search(r"```\n(# incident-connector relay user.*?)```", text, re.S)
    assert match is not None, "no sshd recipe in docs/relay.md"
    block = match.group(1)
    for old, new in [
        ("Match User connector", f"Match User {user}"),
        ("/etc/ssh/incident-relay/user_ca.pub", str(caFile)),
        ("/etc/ssh/incident-relay/principals", str(principals)),
        ("AllowTcpForwarding remote", f"AllowTcpForwarding {forwarding}"),
    ]:
        assert old in block, old
        block = block.replace(old, new)
    return block


class OpenSSHTestCase(TokenTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.connectorId, self.token = self.relay.add("demo")
        self.key = self.dir / "connector_key"
        self.publicLine = writeKeyPair(self.key)
        self.certificate = self.dir / "connector_key-cert.pub"

    def buyCertificate(self) -> None:
        request = urllib.request.Request(
            f"{self.relay.apiURL}/v1/connectors/{self.connectorId}/ssh-certificate",
            data=json.dumps({"public_key": self.publicLine}).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            self.certificate.write_text(json.load(response)["certificate"])

    def sshCommand(self, port: int, user: str, knownHosts: Path, *args: str) -> list[str]:
        return [
            SSH, "-F", "none", "-p", str(port), "-i", str(self.key), "-o", f"CertificateFile={self.certificate}",
            "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={knownHosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ExitOnForwardFailure=yes",
            *args, f"{user}@127.0.0.1",
        ]  # fmt: skip

    def assertNothingButForwarding(self, port: int, user: str, knownHosts: Path) -> str:
        """
        No shell (C{id} prints no uid), no C{-W}, no C{-L}; returns what ssh
        said on stderr along the way.
        """
        said = []
        shell = subprocess.run(
            [*self.sshCommand(port, user, knownHosts), "id"], capture_output=True, text=True, timeout=30
        )
        self.assertNotIn("uid=", shell.stdout + shell.stderr)
        self.assertNotEqual(shell.returncode, 0)
        said.append(shell.stderr)
        tty = subprocess.run(
            [*self.sshCommand(port, user, knownHosts, "-tt"), "id"], capture_output=True, text=True, timeout=30
        )
        self.assertNotIn("uid=", tty.stdout + tty.stderr)
        said.append(tty.stderr)
        target = self.target(echo)
        stdio = subprocess.run(
            self.sshCommand(port, user, knownHosts, "-W", f"127.0.0.1:{target.port}"),
            input="ping\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertNotIn("ping", stdio.stdout)
        self.assertNotEqual(stdio.returncode, 0)
        said.append(stdio.stderr)
        localPort = freePort()
        local = subprocess.Popen(
            self.sshCommand(port, user, knownHosts, "-N", "-L", f"127.0.0.1:{localPort}:127.0.0.1:{target.port}"),
            stderr=subprocess.PIPE,
            text=True,
        )
        try:

            def listening() -> socket.socket | None:
                if local.poll() is not None:
                    raise AssertionError(f"ssh -L exited: {local.stderr.read() if local.stderr else ''}")
                try:
                    return socket.create_connection(("127.0.0.1", localPort), timeout=10)
                except OSError:
                    return None

            sock = waitFor(listening, 15, "ssh -L to listen")
            try:
                sock.sendall(b"ping\n")
                self.assertEqual(recvAll(sock), b"")  # closed unanswered
            except ConnectionResetError:
                pass
            finally:
                sock.close()
        finally:
            local.kill()
            _, stderr = local.communicate(timeout=10)
            said.append(stderr)
        self.assertEqual(target.accepts, 0)
        return "".join(said)


class ReferenceRelayTests(OpenSSHTestCase):
    def knownHosts(self) -> Path:
        path = self.dir / "relay_known_hosts"
        keyType, blob = (self.relay.dataDir / "host_ed25519.pub").read_text().split()[:2]
        path.write_text(f"[127.0.0.1]:{self.relay.sshPort} {keyType} {blob}\n")
        return path

    def test_strictKexAndForward(self) -> None:
        """
        OpenSSH's ssh negotiates strict key exchange with the relay (both
        sequence numbers then restart at 0 after NEWKEYS: a mismatch would be
        a MAC error), logs in with its certificate and gets a remote forward
        that carries a stream.
        """
        self.buyCertificate()
        target = self.target(echo)
        log = self.dir / "ssh.log"
        with open(log, "w") as stderr:
            ssh = subprocess.Popen(
                self.sshCommand(self.relay.sshPort, self.connectorId, self.knownHosts(), "-vvv", "-N", "-R", "0"),
                stderr=stderr,
            )
        try:
            match = waitFor(
                lambda: re.search(r"Allocated port (\d+) for remote forward", log.read_text()), 15, "the forward"
            )
            self.assertIn("will use strict KEX ordering", log.read_text())
            sock, code = socks5Connect(int(match.group(1)), "127.0.0.1", target.port)
            self.assertEqual(code, 0)
            sock.sendall(b"through OpenSSH\n")
            sock.shutdown(socket.SHUT_WR)
            self.assertEqual(recvAll(sock), b"through OpenSSH\n")
            sock.close()
        finally:
            # SIGKILL, as for ssh -L above: once, in CI, ssh took ~10 s to
            # act on a SIGTERM (why is not known; its log shows nothing pending).
            ssh.kill()
            ssh.wait(10)

    def test_nothingButForwarding(self) -> None:
        """
        The reference relay refuses sessions and direct-tcpip, whatever the
        certificate says.
        """
        self.buyCertificate()
        said = self.assertNothingButForwarding(self.relay.sshPort, self.connectorId, self.knownHosts())
        self.assertIn("administratively prohibited: connectors may only forward", said)


class SshdTests(OpenSSHTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.user = "root" if os.geteuid() == 0 else os.environ["USER"]
        self.principals = self.dir / "principals"
        self.principals.write_text(self.connectorId + "\n")
        self.caFile = self.relay.dataDir / "user_ca.pub"

    def sshd(self, name: str, **config: str) -> Relay:
        sshd = Relay(self.dir / name, **config)
        (sshd.dir / "authorized_keys").write_text("")  # only certificates log in
        sshd.start()
        self.addCleanup(sshd.stop)
        return sshd

    def test_certificateRestrictsItself(self) -> None:
        """
        An sshd that trusts the CA and would give its users a shell gives a
        connector certificate none (force-command, no pty).
        """
        self.buyCertificate()
        sshd = self.sshd(
            "plain", extraConfig=f"TrustedUserCAKeys {self.caFile}\nAuthorizedPrincipalsFile {self.principals}"
        )
        shell = subprocess.run(
            [*self.sshCommand(sshd.port, self.user, sshd.knownHosts()), "id"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertIn("Accepted publickey", sshd.log.read_text())
        self.assertNotIn("uid=", shell.stdout)
        self.assertEqual(shell.returncode, 1)  # /bin/false

    def test_recipe(self) -> None:
        """
        The recipe in docs/relay.md, with forwarding left at C{remote} or
        widened to C{yes}: a certificate that permits everything still gets
        no shell, no -W and no -L; the connector's forward works.
        """
        # What an older relay (or a careless CA) would issue: every permission.
        ca = loadOrCreateKey(self.relay.dataDir / "user_ca")
        public = serialization.load_ssh_public_key(self.publicLine.encode())
        assert isinstance(public, ed25519.Ed25519PublicKey)
        builder = (
            serialization.SSHCertificateBuilder()
            .public_key(public)
            .serial(1)
            .type(serialization.SSHCertificateType.USER)
            .key_id(b"permissive")
            .valid_principals([self.connectorId.encode()])
            .valid_after(int(time.time()) - 60)
            .valid_before(int(time.time()) + 3600)
        )
        for extension in [b"permit-X11-forwarding", b"permit-agent-forwarding", b"permit-port-forwarding",
                          b"permit-pty", b"permit-user-rc"]:  # fmt: skip
            builder = builder.add_extension(extension, b"")
        self.certificate.write_bytes(builder.sign(ca).public_bytes())
        http = self.target(echo)
        for forwarding in ["remote", "yes"]:
            sshd = self.sshd(
                f"recipe-{forwarding}", matchConfig=recipe(self.user, self.caFile, self.principals, forwarding)
            )
            self.assertNothingButForwarding(sshd.port, self.user, sshd.knownHosts())
            self.assertIn("Accepted publickey", sshd.log.read_text())
            connector = Connector(
                self.dir / f"connector-{forwarding}",
                [
                    "--relay-address", f"127.0.0.1:{sshd.port}", "--relay-user", self.user,
                    "--identity-file", str(self.key), "--certificate-file", str(self.certificate),
                    "--known-hosts", str(sshd.knownHosts()),
                ],
            ).start()  # fmt: skip
            self.addCleanup(connector.stop)
            sock, code = socks5Connect(connector.allocatedPort(), "127.0.0.1", http.port)
            self.assertEqual(code, 0)
            sock.sendall(b"forwarded\n")
            sock.shutdown(socket.SHUT_WR)
            self.assertEqual(recvAll(sock), b"forwarded\n")
            sock.close()
            connector.stop()
