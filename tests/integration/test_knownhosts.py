"""
known_hosts against the reference: for each file, the connector's verdict on
the relay's host key is the real OpenSSH client's (C{ssh -o
StrictHostKeyChecking=yes} against a throwaway sshd), and the lines it finds
for a name are the ones C{ssh-keygen -F} finds.  Then the connector itself,
end to end, during a key rotation and with the key revoked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from incident_connector.tunnel.hostkeys import (
    CERT_AUTHORITY,
    REVOKED,
    HostKeyMismatch,
    HostKeyPolicy,
    KnownHosts,
    knownHostsName,
)

from .harness import TunnelTestCase, writeKeyPair


def hashedName(name: str) -> str:
    salt = os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


@dataclass
class Case:
    """
    @ivar text: the known_hosts file.
    @ivar accepted: whether the relay's key is accepted (what ssh does, checked).
    @ivar wellFormed: every line is valid (ssh-keygen -F lists lines whose key it
        does not parse, so only these are compared with it).
    """

    text: str
    accepted: bool
    wellFormed: bool = True


class ReferenceTests(TunnelTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.name = f"[127.0.0.1]:{self.relay.port}"
        keyType, blob = self.relay.hostKeyLine.split()[:2]
        self.key = f"{keyType} {blob}"
        self.blob = base64.b64decode(blob)
        self.other = " ".join(writeKeyPair(self.dir / "other").split()[:2])
        rsa = self.dir / "rsa"
        subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(rsa)], check=True)
        self.rsa = " ".join(rsa.with_suffix(".pub").read_text().split()[:2])

    def cases(self) -> dict[str, Case]:
        name, key, other, rsa, port = self.name, self.key, self.other, self.rsa, self.relay.port
        mislabelled = "ssh-rsa " + key.split()[1]
        return {
            "plain": Case(f"{name} {key}\n", True),
            "rotation, old key first": Case(f"{name} {other}\n{name} {key}\n", True),
            "rotation, hashed": Case(f"{hashedName(name)} {other}\n{hashedName(name)} {key}\n", True),
            "changed": Case(f"{name} {other}\n", False),
            "revoked after": Case(f"{name} {key}\n@revoked {name} {key}\n", False),
            "revoked first, wildcard": Case(f"@revoked * {key}\n{name} {key}\n", False),
            "revoked, hashed": Case(f"@revoked {hashedName(name)} {key}\n{name} {key}\n", False),
            "revoked alone": Case(f"@revoked * {key}\n", False),
            "another key revoked": Case(f"@revoked * {other}\n{name} {key}\n", True),
            "revoked for another host": Case(f"@revoked other.example {key}\n{name} {key}\n", True),
            # Excluded as [host]:port, then looked up (and found) as plain host.
            "negated first": Case(f"!{name},* {key}\n", True),
            "negated last": Case(f"*,!{name} {key}\n", True),
            "negated both names": Case(f"!{name},!127.0.0.1,* {key}\n", False),
            "negated wildcard": Case(f"!*.0.0.1]:*,!127.*,* {key}\n", False),
            "another host negated": Case(f"!other.example,* {key}\n", True),
            "port wildcard": Case(f"[127.0.0.1]:* {key}\n", True),
            "question mark": Case(f"[127.0.0.?]:{port} {key}\n", True),
            "list": Case(f"other.example,{name},[::1]:{port} {key}\n", True),
            "domain wildcard": Case(f"[*.example]:* {key}\n", False),
            "plain host": Case(f"127.0.0.1 {key}\n", True),
            "plain host, other key": Case(f"127.0.0.1 {other}\n", False),
            "plain host, revoked": Case(f"@revoked 127.0.0.1 {key}\n127.0.0.1 {key}\n", False),
            "plain host ignored when [host]:port listed": Case(f"{name} {other}\n127.0.0.1 {key}\n", False),
            "other port": Case(f"[127.0.0.1]:22 {key}\n", False),
            "two types": Case(f"{name} {rsa}\n{name} {key}\n", True),
            "other type only": Case(f"{name} {rsa}\n", False),
            "cert-authority only": Case(f"@cert-authority * {key}\n", False),
            "cert-authority and plain": Case(f"@cert-authority * {other}\n{name} {key}\n", True),
            "comments, blanks, tabs": Case(f"# relay\n\n   {name}\t{key}   relay key\n", True),
            "malformed lines skipped": Case(
                f"garbage\n{name} ssh-ed25519 !!!\n{name} {mislabelled}\n@bogus {name} {key}\n{name} {key}\n",
                True,
                wellFormed=False,
            ),
            "malformed only": Case(f"{name} {mislabelled}\n@bogus {name} {key}\n", False, wellFormed=False),
        }

    def write(self, label: str, text: str) -> Path:
        path = self.dir / ("known_hosts-" + re.sub(r"\W+", "-", label))
        path.write_text(text)
        return path

    def sshAccepts(self, path: Path) -> bool:
        user = "root" if os.geteuid() == 0 else os.environ.get("USER", "root")
        result = subprocess.run(
            ["ssh", "-F", "/dev/null", "-p", str(self.relay.port), "-i", str(self.relay.userKey),
             "-o", f"UserKnownHostsFile={path}", "-o", "GlobalKnownHostsFile=/dev/null",
             "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
             "-o", "CheckHostIP=no", "-o", "UpdateHostKeys=no", f"{user}@127.0.0.1", "true"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if result.returncode == 0:
            return True
        if "Host key verification failed" in result.stderr:
            return False
        raise AssertionError(f"ssh failed for another reason ({result.returncode}): {result.stderr}")

    def connectorAccepts(self, path: Path) -> bool:
        try:
            HostKeyPolicy("127.0.0.1", self.relay.port, knownHostsPath=str(path)).verify(self.blob)
        except HostKeyMismatch:
            return False
        return True

    def test_sameVerdictAsSsh(self) -> None:
        verdicts = {}
        for label, case in self.cases().items():
            path = self.write(label, case.text)
            verdicts[label] = (case.accepted, self.sshAccepts(path), self.connectorAccepts(path))
        wrong = {label: v for label, v in verdicts.items() if len(set(v)) != 1}
        self.assertEqual(wrong, {}, "(expected, ssh, connector)")

    def test_sameLinesAsSshKeygen(self) -> None:
        labels = {None: "", REVOKED: "REVOKED", CERT_AUTHORITY: "CA"}
        names = [self.name, "127.0.0.1", "other.example", f"[::1]:{self.relay.port}", "Relay.Example"]
        differences = []
        for label, case in self.cases().items():
            if not case.wellFormed:
                continue
            path = self.write(label, case.text)
            knownHosts = KnownHosts.fromPath(str(path))
            for name in names:
                output = subprocess.run(
                    ["ssh-keygen", "-F", name, "-f", str(path)], capture_output=True, text=True, timeout=30
                ).stdout
                theirs = [
                    (int(n), kind) for n, kind in re.findall(r"^# Host \S+ found: line (\d+) ?(\w*)", output, re.M)
                ]
                lookup = knownHostsName(name, 22) if not name.startswith("[") else name.lower().encode()
                ours = [(entry.lineno, labels[entry.marker]) for entry in knownHosts.forHost(lookup)]
                if ours != theirs:
                    differences.append((label, name, ours, theirs))
        self.assertEqual(differences, [])


class ConnectorKnownHostsTests(TunnelTestCase):
    def connectorArgs(self) -> list[str]:
        args = super().connectorArgs()
        return args[: args.index("--known-hosts")]

    def test_rotationOldKeyFirst(self) -> None:
        """
        A known_hosts listing the old key before the new one, as during a
        rotation, lets the connector in (Conch's KnownHostsFile refused).
        """
        old = writeKeyPair(self.dir / "old").split()
        path = self.dir / "rotation"
        name = f"[127.0.0.1]:{self.relay.port}"
        keyType, blob = self.relay.hostKeyLine.split()[:2]
        path.write_text(f"{name} {old[0]} {old[1]}\n{name} {keyType} {blob}\n")
        self.startConnector("--known-hosts", str(path)).allocatedPort()

    def test_revokedRefused(self) -> None:
        name = f"[127.0.0.1]:{self.relay.port}"
        keyType, blob = self.relay.hostKeyLine.split()[:2]
        path = self.dir / "revoked"
        path.write_text(f"{name} {keyType} {blob}\n@revoked * {keyType} {blob}\n")
        connector = self.startConnector("--known-hosts", str(path))
        connector.waitForLog(
            rf"host key verification failed: relay host key SHA256:\S+ \(ssh-ed25519\) for \[127\.0\.0\.1\]:"
            rf"{self.relay.port} is revoked in known_hosts line 2"
        )
        self.assertNotIn("Allocated port", connector.text())
        self.assertNotIn("Accepted publickey", self.relay.log.read_text())
