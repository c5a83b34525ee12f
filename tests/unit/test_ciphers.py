"""
AES-GCM and chacha20-poly1305 framing, byte by byte.
"""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from incident_connector.tunnel.ciphers import AEADPacketizer, BadPacket, ChaChaPacketizer

KEY = bytes(range(16))
IV = bytes(range(100, 112))
CHACHA_KEY = bytes(range(64))

PACKETIZERS = {
    "aes-gcm": (lambda: AEADPacketizer(KEY, IV), 16),
    "chacha20-poly1305": (lambda: ChaChaPacketizer(CHACHA_KEY), 8),
}


class PacketizerTests(SynchronousTestCase):
    def test_roundTripAnySplit(self) -> None:
        """
        Packets arriving in two pieces, split anywhere, open to what was sealed.
        """
        payloads = [b"\x5e" + b"p" * n for n in (0, 1, 7, 8, 15, 16, 17, 300)]
        for name, (make, _block) in PACKETIZERS.items():
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
        Padding (at least 4) aligns what follows the length to the block size;
        a 16-byte tag ends the packet.
        """
        for name, (make, block) in PACKETIZERS.items():
            for size in range(0, 40):
                sender, receiver = make(), make()
                wire = sender.seal(b"x" * size, 3)
                result = receiver.open(wire, 3)
                assert result is not None
                self.assertEqual(result, (b"x" * size, len(wire)), name)
                body = len(wire) - 4 - 16
                self.assertEqual(body % block, 0, name)
                self.assertGreaterEqual(body - 1 - size, 4, name)

    def test_nonceAdvances(self) -> None:
        """
        The same payload twice never gives the same bytes; a replay fails.
        """
        for name, (make, _block) in PACKETIZERS.items():
            sender = make()
            first, second = sender.seal(b"same", 0), sender.seal(b"same", 1)
            self.assertNotEqual(first[4:], second[4:], name)
            receiver = make()
            receiver.open(first, 0)
            self.assertRaises(BadPacket, receiver.open, first, 1)

    def test_tampering(self) -> None:
        for name, (make, _block) in PACKETIZERS.items():
            wire = make().seal(b"secret payload", 5)
            for index in (0, 3, 4, len(wire) - 1):
                changed = bytearray(wire)
                changed[index] ^= 1
                try:
                    result = make().open(changed, 5)
                except BadPacket:
                    continue
                # A changed chacha length may just ask for more bytes: never a payload.
                self.assertIsNone(result, (name, index))

    def test_badLengths(self) -> None:
        for length in (0, 15, 17, 300 * 1024):
            exc = self.assertRaises(BadPacket, AEADPacketizer(KEY, IV).open, struct.pack("!L", length) + b"\0" * 64, 0)
            self.assertIn("bad packet length", str(exc))
