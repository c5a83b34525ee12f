"""
Key exchange without I/O: KEXINIT parsing, negotiation (AEAD ciphers need no
MAC, EtM-only relays, strict key exchange markers), and the errors that say
what each side offered.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from incident_connector.tunnel.errors import ProtocolError
from incident_connector.tunnel.kex import (
    CIPHER_PREFERENCE,
    HOST_KEY_PREFERENCE,
    KEX_PREFERENCE,
    MAC_PREFERENCE,
    STRICT_CLIENT,
    STRICT_SERVER,
    KexInit,
    NegotiationError,
    deriveKeys,
    negotiate,
)

OURS = KexInit.build([*KEX_PREFERENCE, STRICT_CLIENT], HOST_KEY_PREFERENCE, CIPHER_PREFERENCE, MAC_PREFERENCE)


def relay(
    kex: list[bytes] | None = None,
    ciphers: list[bytes] | None = None,
    macs: list[bytes] | None = None,
    hostKeys: list[bytes] | None = None,
) -> KexInit:
    return KexInit.build(
        kex or [b"curve25519-sha256"],
        hostKeys or [b"ssh-ed25519"],
        ciphers or [b"aes256-gcm@openssh.com"],
        macs or [b"hmac-sha2-256"],
    )


class NegotiationTests(SynchronousTestCase):
    def test_aeadNeedsNoMAC(self) -> None:
        """
        With AES-GCM the MAC lists do not matter, as in OpenSSH.
        """
        negotiated = negotiate(OURS, relay(macs=[b"umac-128@openssh.com"]), True)
        self.assertEqual(
            (negotiated.cipherOut, negotiated.macOut, negotiated.macIn), (CIPHER_PREFERENCE[1], None, None)
        )

    def test_etmOnlyRelay(self) -> None:
        negotiated = negotiate(OURS, relay(ciphers=[b"aes256-ctr"], macs=[b"hmac-sha2-512-etm@openssh.com"]), True)
        self.assertEqual(negotiated.macOut, b"hmac-sha2-512-etm@openssh.com")

    def test_clientPreferenceWins(self) -> None:
        negotiated = negotiate(
            OURS,
            relay(ciphers=[b"aes256-ctr", b"aes128-ctr"], macs=[b"hmac-sha2-512", b"hmac-sha2-256-etm@openssh.com"]),
            True,
        )
        self.assertEqual((negotiated.cipherOut, negotiated.macOut), (b"aes128-ctr", b"hmac-sha2-256-etm@openssh.com"))

    def test_errorsNameBothLists(self) -> None:
        cases = {
            "key exchange method": relay(kex=[b"diffie-hellman-group1-sha1"]),
            "host key algorithm": relay(hostKeys=[b"ssh-dss"]),
            "cipher (connector to relay)": relay(ciphers=[b"3des-cbc"]),
            "MAC (connector to relay)": relay(ciphers=[b"aes128-ctr"], macs=[b"hmac-md5"]),
        }
        for part, theirs in cases.items():
            error = self.assertRaises(NegotiationError, negotiate, OURS, theirs, True)
            self.assertTrue(str(error).startswith(f"no common {part}: relay offers "), str(error))
            self.assertIn("; connector supports ", str(error))
            self.assertEqual(error.reason, "negotiation")

    def test_strictOnlyInitially(self) -> None:
        theirs = relay(kex=[b"curve25519-sha256", STRICT_SERVER])
        self.assertTrue(negotiate(OURS, theirs, True).strict)
        self.assertFalse(negotiate(OURS, theirs, False).strict)
        self.assertFalse(negotiate(OURS, relay(), True).strict)

    def test_markersAreNeverMethods(self) -> None:
        """
        A relay listing only the strict marker has no key exchange method.
        """
        self.assertRaises(NegotiationError, negotiate, OURS, relay(kex=[STRICT_CLIENT]), True)


class KexInitTests(SynchronousTestCase):
    def test_roundTrip(self) -> None:
        parsed = KexInit.parse(OURS.payload)
        self.assertEqual(parsed, OURS)
        self.assertEqual(parsed.ciphers[0], tuple(CIPHER_PREFERENCE))
        self.assertFalse(parsed.firstFollows)

    def test_truncated(self) -> None:
        for cut in (0, 10, 17, 30, len(OURS.payload) - 1):
            self.assertRaises(ProtocolError, KexInit.parse, OURS.payload[:cut])


class DerivationTests(SynchronousTestCase):
    def test_lengthsPerAlgorithm(self) -> None:
        """
        Each direction gets what its cipher and MAC need, derived past one
        hash block where needed (chacha20-poly1305 takes 64 bytes).
        """
        negotiated = negotiate(
            OURS,
            KexInit.build([b"curve25519-sha256"], [b"ssh-ed25519"], [b"chacha20-poly1305@openssh.com"], [b"x"]),
            True,
        )
        out, into = deriveKeys("sha256", b"\x00\x00\x00\x01\x05", b"H" * 32, b"S" * 32, negotiated)
        self.assertEqual((len(out.key), len(out.iv), len(out.mac)), (64, 0, 0))
        self.assertNotEqual(out.key, into.key)
        self.assertEqual(
            out.key[:32], deriveKeys("sha256", b"\x00\x00\x00\x01\x05", b"H" * 32, b"S" * 32, negotiated)[0].key[:32]
        )
