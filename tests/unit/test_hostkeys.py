"""
known_hosts parsing and matching rules, as OpenSSH's C{hostfile.c} and
C{match.c} apply them (the integration layer checks the same files against
the real C{ssh} and C{ssh-keygen -F}).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.tunnel.hostkeys import (
    HostKeyMismatch,
    HostKeyPolicy,
    KnownHost,
    KnownHosts,
    knownHostsName,
    matchHostPatterns,
)


def publicLine(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def blobOf(line: bytes) -> bytes:
    return base64.b64decode(line.split()[1])


def hashed(name: bytes) -> bytes:
    salt = os.urandom(20)
    digest = hmac.new(salt, name, hashlib.sha1).digest()
    return b"|1|" + base64.b64encode(salt) + b"|" + base64.b64encode(digest)


KEY = publicLine(ed25519.Ed25519PrivateKey.generate())
OLD = publicLine(ed25519.Ed25519PrivateKey.generate())
RSA = publicLine(rsa.generate_private_key(public_exponent=65537, key_size=2048))
NAME = b"[relay.example]:2222"


class PatternTests(SynchronousTestCase):
    def test_patterns(self) -> None:
        for name, patterns, expected in [
            (b"relay.example", b"relay.example", 1),
            (b"relay.example", b"RELAY.Example", 1),
            (b"relay.example", b"other,relay.example", 1),
            (b"relay.example", b"*.example", 1),
            (b"relay.example", b"relay.exampl?", 1),
            (b"relay.example", b"r*y.*e", 1),
            (b"relay.example", b"*", 1),
            (b"relay.example", b"relay.ex", 0),
            (b"relay.example", b"?relay.example", 0),
            (b"relay.example", b"!relay.example", -1),
            (b"relay.example", b"*,!relay.example", -1),
            (b"relay.example", b"!relay.example,*", -1),
            (b"relay.example", b"!other,*", 1),
            (b"relay.example", b"!other", 0),
            (b"relay.example", b"!*.example,relay.example", -1),
            (b"[127.0.0.1]:2222", b"[127.0.0.1]:*", 1),
            (b"[127.0.0.1]:2222", b"[127.0.0.?]:2222", 1),
            (b"[127.0.0.1]:2222", b"127.0.0.1", 0),
            (b"[127.0.0.1]:2222", b"[127.0.0.1]:22", 0),
            (b"relay.example", b"relay.example," + b"x" * 1100, 0),
            (b"relay.example", b"", 0),
            (b"a" * 200, b"*a*a*a*a*a*a*a*a*a*a*a*a*b", 0),
        ]:
            self.assertEqual(matchHostPatterns(name, patterns), expected, (name, patterns))

    def test_lookupName(self) -> None:
        self.assertEqual(knownHostsName("Relay.Example", 22), b"relay.example")
        self.assertEqual(knownHostsName("relay.example", 2222), b"[relay.example]:2222")
        self.assertEqual(knownHostsName("::1", 2222), b"[::1]:2222")


class LineTests(SynchronousTestCase):
    def test_valid(self) -> None:
        entry = KnownHost.fromLine(3, b"  a,b\t" + KEY + b" a comment")
        assert entry is not None
        self.assertEqual((entry.lineno, entry.marker, entry.hosts, entry.keyType), (3, None, b"a,b", b"ssh-ed25519"))
        self.assertEqual(entry.blob, blobOf(KEY))
        for marker in [b"@revoked", b"@cert-authority"]:
            entry = KnownHost.fromLine(1, marker + b" * " + KEY)
            assert entry is not None
            self.assertEqual(entry.marker, marker)

    def test_skipped(self) -> None:
        keyType, encoded = KEY.split()
        for line in [
            b"",
            b"   ",
            b"# relay.example " + KEY,
            b"  #relay.example " + KEY,
            b"relay.example",
            b"relay.example " + keyType,
            b"@revoked",
            b"@revoked relay.example",
            b"@Revoked relay.example " + KEY,
            b"@marker relay.example " + KEY,
            b"@revoked @revoked relay.example " + KEY,
            b"relay.example ssh-rsa " + encoded,
            b"relay.example " + keyType + b" not!base64",
            b"relay.example " + keyType + b" AAAA",
        ]:
            self.assertIsNone(KnownHost.fromLine(1, line), line)

    def test_hashed(self) -> None:
        entry = KnownHost.fromLine(1, hashed(NAME) + b" " + KEY)
        assert entry is not None
        self.assertTrue(entry.matchesHost(NAME))
        self.assertFalse(entry.matchesHost(b"[relay.example]:22"))
        for broken in [b"|1|", b"|1|bad|bad", b"|2|" + hashed(NAME)[3:], b"|1|" + base64.b64encode(b"short") + b"|x"]:
            entry = KnownHost.fromLine(1, broken + b" " + KEY)
            assert entry is not None
            self.assertFalse(entry.matchesHost(NAME))


class CheckTests(SynchronousTestCase):
    def check(self, text: bytes, key: bytes = KEY, port: int = 2222) -> str | None:
        try:
            KnownHosts.fromBytes(text).check("Relay.Example", port, blobOf(key), "key")
        except HostKeyMismatch as e:
            return str(e)
        return None

    def test_anyMatchingLineAccepts(self) -> None:
        """
        During a rotation the old key's line may come first.
        """
        self.assertIsNone(self.check(NAME + b" " + OLD + b"\n" + NAME + b" " + KEY + b"\n"))
        self.assertIsNone(self.check(NAME + b" " + RSA + b"\n*.example " + OLD + b"\n[relay.*]:* " + KEY + b"\n"))

    def test_revokedWins(self) -> None:
        for text in [
            NAME + b" " + KEY + b"\n@revoked " + NAME + b" " + KEY,
            b"@revoked * " + KEY + b"\n" + NAME + b" " + KEY,
            b"@revoked " + hashed(NAME) + b" " + KEY + b"\n" + NAME + b" " + KEY,
            b"@revoked * " + KEY,
        ]:
            self.assertRegex(
                self.check(text) or "", r"^key for \[relay.example\]:2222 is revoked in known_hosts line \d$"
            )

    def test_revokedOtherKey(self) -> None:
        self.assertIsNone(self.check(b"@revoked * " + OLD + b"\n" + NAME + b" " + KEY))

    def test_revokedForAnotherHost(self) -> None:
        self.assertIsNone(self.check(b"@revoked other.example " + KEY + b"\n" + NAME + b" " + KEY))

    def test_negation(self) -> None:
        self.assertEqual(
            self.check(b"!" + NAME + b",!relay.example,* " + KEY),
            "key for [relay.example]:2222 is not in the known_hosts file",
        )
        self.assertIsNone(self.check(b"!other,* " + KEY))
        # Excluded as [host]:port, so looked up (and found) as plain host: what ssh does.
        self.assertIsNone(self.check(b"!" + NAME + b",* " + KEY))

    def test_plainHostForOtherPorts(self) -> None:
        """
        With no line about C{[host]:port}, the lines about C{host} may accept
        the key, never reject it for a reason of their own without saying so.
        """
        self.assertIsNone(self.check(b"relay.example " + KEY))
        self.assertEqual(
            self.check(b"relay.example " + OLD), "key for relay.example differs from the one in known_hosts line 1"
        )
        self.assertEqual(
            self.check(b"@revoked relay.example " + KEY + b"\nrelay.example " + KEY),
            "key for relay.example is revoked in known_hosts line 1",
        )
        self.assertEqual(
            self.check(NAME + b" " + OLD + b"\nrelay.example " + KEY),
            "key for [relay.example]:2222 differs from the one in known_hosts line 1",
        )
        self.assertEqual(self.check(NAME + b" " + KEY, port=22), "key for relay.example is not in the known_hosts file")
        self.assertIsNone(self.check(b"relay.example " + KEY, port=22))

    def test_changed(self) -> None:
        self.assertEqual(
            self.check(NAME + b" " + OLD), "key for [relay.example]:2222 differs from the one in known_hosts line 1"
        )
        self.assertEqual(
            self.check(b"# rotation\n" + NAME + b" " + OLD + b"\n\n* " + RSA),
            "key for [relay.example]:2222 differs from those in known_hosts lines 2, 4",
        )

    def test_certificateAuthorityNeverAccepts(self) -> None:
        self.assertEqual(
            self.check(b"@cert-authority [*.example]:* " + KEY),
            "key for [relay.example]:2222 is not in the known_hosts file (line 1 is @cert-authority, but host "
            "certificates are not supported: list the relay's host key itself)",
        )
        self.assertIsNone(self.check(b"@cert-authority * " + OLD + b"\n" + NAME + b" " + KEY))

    def test_hashedEntries(self) -> None:
        self.assertIsNone(self.check(hashed(NAME) + b" " + OLD + b"\n" + hashed(NAME) + b" " + KEY))
        self.assertIsNotNone(self.check(hashed(b"[other]:2222") + b" " + KEY))

    def test_malformedLinesSkipped(self) -> None:
        self.assertIsNone(self.check(b"garbage\n" + NAME + b" ssh-ed25519 !!!\n" + NAME + b" " + KEY))


class PolicyTests(SynchronousTestCase):
    def policy(self, text: bytes, port: int = 2222) -> HostKeyPolicy:
        path = Path(self.mktemp())
        path.write_bytes(text)
        return HostKeyPolicy("Relay.Example", port, knownHostsPath=str(path))

    def test_verify(self) -> None:
        policy = self.policy(b"[relay.example]:2222 " + OLD + b"\n[relay.example]:2222 " + KEY + b"\n")
        self.assertEqual(policy.verify(blobOf(KEY)).blob(), blobOf(KEY))
        self.assertRaises(HostKeyMismatch, self.policy(b"[relay.example]:22 " + KEY).verify, blobOf(KEY))
        self.assertRaises(HostKeyMismatch, self.policy(b"relay.example " + OLD).verify, blobOf(KEY))
        self.assertEqual(self.policy(b"relay.example " + KEY, 22).verify(blobOf(KEY)).blob(), blobOf(KEY))

    def test_preferredAlgorithms(self) -> None:
        offered = [b"ecdsa-sha2-nistp256", b"ssh-ed25519", b"rsa-sha2-512", b"rsa-sha2-256"]
        policy = self.policy(b"@revoked * " + OLD + b"\n[relay.*]:2222 " + RSA + b"\n")
        self.assertEqual(
            policy.preferredAlgorithms(offered),
            [b"rsa-sha2-512", b"rsa-sha2-256", b"ecdsa-sha2-nistp256", b"ssh-ed25519"],
        )
        policy = self.policy(b"@cert-authority * " + RSA + b"\n[relay.example]:2222 " + KEY + b"\n")
        self.assertEqual(policy.preferredAlgorithms(offered)[0], b"ssh-ed25519")
