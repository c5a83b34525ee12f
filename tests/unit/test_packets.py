"""
The binary packet protocol byte by byte, for every cipher and MAC offered:
round trips split anywhere, framing, nonces and sequence numbers, tampering,
bad lengths; and AES-CTR with HMAC checked against Conch's own implementation.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from twisted.conch.ssh import transport as conch
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.tunnel.packets import (
    BadPacket,
    ChaChaPacketizer,
    GCMPacketizer,
    Packetizer,
    PlainPacketizer,
    StreamCipherPacketizer,
    makePacketizer,
)

KEY = bytes(range(16))
IV = bytes(range(100, 116))
MAC_KEY = bytes(range(200, 256)) + bytes(8)
CHACHA_KEY = bytes(range(64))

#: name -> (make, block size, trailer size, length field encrypted with the body)
PACKETIZERS: dict[str, tuple[Callable[[], Packetizer], int, int, bool]] = {
    "none": (PlainPacketizer, 8, 0, True),
    "aes128-gcm": (lambda: GCMPacketizer(KEY, IV[:12]), 16, 16, False),
    "chacha20-poly1305": (lambda: ChaChaPacketizer(CHACHA_KEY), 8, 16, False),
    "aes128-ctr hmac-sha2-256": (lambda: StreamCipherPacketizer(KEY, IV, b"hmac-sha2-256", MAC_KEY), 16, 32, True),
    "aes128-ctr hmac-sha2-512": (lambda: StreamCipherPacketizer(KEY, IV, b"hmac-sha2-512", MAC_KEY), 16, 64, True),
    "aes128-ctr hmac-sha2-256-etm": (
        lambda: StreamCipherPacketizer(KEY, IV, b"hmac-sha2-256-etm@openssh.com", MAC_KEY),
        16,
        32,
        False,
    ),
    "aes256-ctr hmac-sha2-512-etm": (
        lambda: StreamCipherPacketizer(bytes(32), IV, b"hmac-sha2-512-etm@openssh.com", MAC_KEY),
        16,
        64,
        False,
    ),
}


class PacketizerTests(SynchronousTestCase):
    def test_roundTripAnySplit(self) -> None:
        """
        Packets arriving in two pieces, split anywhere, open to what was sealed.
        """
        payloads = [b"\x5e" + b"p" * n for n in (0, 1, 7, 8, 15, 16, 17, 300)]
        for name, (make, _block, _trailer, _counted) in PACKETIZERS.items():
            sender = make()
            wire = b"".join(sender.seal(payload, 7 + n) for n, payload in enumerate(payloads))
            for split in range(0, len(wire), 7):
                receiver = make()
                buffer = bytearray()
                opened: list[bytes] = []
                for piece in (wire[:split], wire[split:]):
                    buffer += piece
                    while (result := receiver.open(buffer, 7 + len(opened))) is not None:
                        opened.append(result[0])
                        del buffer[: result[1]]
                self.assertEqual(opened, payloads, (name, split))
                self.assertEqual(buffer, b"")

    def test_framing(self) -> None:
        """
        Padding (at least 4) aligns the packet to the block size (counting the
        length field where it is encrypted); the tag or MAC ends it.
        """
        for name, (make, block, trailer, counted) in PACKETIZERS.items():
            for size in range(0, 40):
                sender, receiver = make(), make()
                wire = sender.seal(b"x" * size, 3)
                result = receiver.open(wire, 3)
                assert result is not None
                self.assertEqual(result, (b"x" * size, len(wire)), name)
                body = len(wire) - trailer - (0 if counted else 4)
                self.assertEqual(body % block, 0, (name, size))
                self.assertGreaterEqual(body - (5 if counted else 1) - size, 4, name)

    def test_sequenceMatters(self) -> None:
        """
        The same message twice never gives the same bytes; a replay or a
        packet under the wrong sequence number fails.
        """
        for name, (make, _block, _trailer, _counted) in PACKETIZERS.items():
            if name == "none":
                continue
            sender = make()
            first, second = sender.seal(b"same", 0), sender.seal(b"same", 1)
            self.assertNotEqual(first[4:], second[4:], name)
            receiver = make()
            receiver.open(first, 0)
            self.assertRaises(BadPacket, receiver.open, first, 1)

    def test_tampering(self) -> None:
        for name, (make, _block, _trailer, _counted) in PACKETIZERS.items():
            if name == "none":
                continue
            wire = make().seal(b"secret payload", 5)
            for index in (0, 3, 4, len(wire) - 1):
                changed = bytearray(wire)
                changed[index] ^= 1
                try:
                    result = make().open(changed, 5)
                except BadPacket:
                    continue
                # A changed encrypted length may just ask for more bytes: never a message.
                self.assertIsNone(result, (name, index))

    def test_badLengths(self) -> None:
        for length in (0, 15, 17, 300 * 1024):
            exc = self.assertRaises(
                BadPacket, GCMPacketizer(KEY, IV[:12]).open, struct.pack("!L", length) + b"\0" * 64, 0
            )
            self.assertIn("bad packet length", str(exc))
        for length in (0, 4, 11, 300 * 1024):
            exc = self.assertRaises(BadPacket, PlainPacketizer().open, struct.pack("!L", length) + b"\0" * 64, 0)
            self.assertIn("bad packet length", str(exc))

    def test_smallestCTRPacket(self) -> None:
        """
        With a 16-byte block the shortest packet's length field reads 12.
        """
        sender = StreamCipherPacketizer(KEY, IV, b"hmac-sha2-256", MAC_KEY)
        wire = sender.seal(b"\x02", 0)
        opened = StreamCipherPacketizer(KEY, IV, b"hmac-sha2-256", MAC_KEY).open(wire, 0)
        self.assertEqual(opened, (b"\x02", len(wire)))


class ConchAgreesTests(SynchronousTestCase):
    """
    AES-CTR with HMAC-SHA2 as Conch's own (independent) code frames it.
    """

    def test_conchOpensOurs(self) -> None:
        for cipher in (b"aes128-ctr", b"aes256-ctr"):
            for mac in (b"hmac-sha2-256", b"hmac-sha2-512"):
                ours = makePacketizer(cipher, mac, bytes(range(32)), IV, MAC_KEY)
                theirs = conch.SSHCiphers(b"none", cipher, b"none", mac)
                theirs.setKeys(b"", b"", IV, bytes(range(32)), b"", MAC_KEY)
                wire = ours.seal(b"\x5ehello conch", 9)
                decrypted = theirs.decrypt(wire[: -theirs.verifyDigestSize])
                self.assertTrue(theirs.verify(9, decrypted, wire[-theirs.verifyDigestSize :]), (cipher, mac))
                length, padding = struct.unpack("!LB", decrypted[:5])
                self.assertEqual(decrypted[5 : 4 + length - padding + 0], b"\x5ehello conch")
