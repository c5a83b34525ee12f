# -*- test-case-name: tests.test_ciphers -*-
"""
AES-GCM for the SSH transport, as OpenSSH does it (C{aes128-gcm@openssh.com},
C{aes256-gcm@openssh.com}; RFC 5647 with OpenSSH's naming): the 4-byte packet
length travels in clear as additional authenticated data, the rest is
sealed with a 16-byte tag, and no MAC is negotiated.  Conch has no AEAD
ciphers: L{Ciphers} adds them next to Conch's own, and L{AEADPacketizer}
frames packets for them without I/O, so it can be tested byte by byte.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.conch.ssh import transport
from twisted.python.randbytes import secureRandom

__all__ = ["GCM_KEY_SIZES", "AEADPacketizer", "BadPacket", "Ciphers"]

#: Cipher name -> key size in bytes.
GCM_KEY_SIZES = {b"aes128-gcm@openssh.com": 16, b"aes256-gcm@openssh.com": 32}

_BLOCK = 16
_TAG = 16
#: Largest packet OpenSSH sends or accepts.
MAX_PACKET = 256 * 1024


class BadPacket(Exception):
    """
    A received packet is malformed or fails authentication.

    @ivar reason: the SSH disconnect reason code to send.
    """

    def __init__(self, message: str, reason: int) -> None:
        super().__init__(message)
        self.reason = reason


class AEADPacketizer:
    """
    One direction of an AES-GCM SSH transport.

    @ivar key: the AES key.
    @ivar fixed: the IV's fixed 4 bytes.
    @ivar counter: the IV's invocation counter (the last 8 bytes), +1 per packet.
    """

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._aead = AESGCM(key)
        self.fixed = iv[:4]
        self.counter = int.from_bytes(iv[4:12], "big")

    def _nonce(self) -> bytes:
        nonce = self.fixed + self.counter.to_bytes(8, "big")
        self.counter = (self.counter + 1) & 0xFFFFFFFFFFFFFFFF
        return nonce

    def seal(self, payload: bytes) -> bytes:
        """
        The wire bytes of one packet carrying C{payload} (message type included).
        """
        # Padding aligns everything after the clear length (RFC 5647 7.2).
        padding = _BLOCK - ((1 + len(payload)) % _BLOCK)
        if padding < 4:
            padding += _BLOCK
        length = struct.pack("!L", 1 + len(payload) + padding)
        plain = bytes((padding,)) + payload + secureRandom(padding)
        return length + self._aead.encrypt(self._nonce(), plain, length)

    def open(self, buffer: bytes | bytearray | memoryview) -> tuple[bytes, int] | None:
        """
        The payload of the first whole packet in C{buffer} and the bytes it
        used, or L{None} if the packet is not all there yet.

        @raise BadPacket: bad length or authentication failure.
        """
        if len(buffer) < 4:
            return None
        (length,) = struct.unpack_from("!L", buffer)
        if length > MAX_PACKET or length % _BLOCK or length < _BLOCK:
            raise BadPacket(f"bad packet length {length}", transport.DISCONNECT_PROTOCOL_ERROR)
        used = 4 + length + _TAG
        if len(buffer) < used:
            return None
        view = memoryview(buffer)
        try:
            plain = self._aead.decrypt(self._nonce(), view[4:used], view[:4])
        except InvalidTag:
            raise BadPacket("bad MAC", transport.DISCONNECT_MAC_ERROR) from None
        padding = plain[0]
        if padding < 4 or padding >= len(plain):
            raise BadPacket("bad padding", transport.DISCONNECT_PROTOCOL_ERROR)
        return plain[1:-padding], used


class Ciphers(transport.SSHCiphers):
    """
    Conch's cipher state, plus AES-GCM.

    @ivar outAEAD: the sending packetizer when an AEAD cipher was negotiated.
    @ivar inAEAD: the receiving packetizer when an AEAD cipher was negotiated.
    """

    outAEAD: AEADPacketizer | None = None
    inAEAD: AEADPacketizer | None = None

    def setKeys(self, outIV: bytes, outKey: bytes, inIV: bytes, inKey: bytes, outInteg: bytes, inInteg: bytes) -> None:
        outGCM = self.outCipType in GCM_KEY_SIZES
        inGCM = self.inCipType in GCM_KEY_SIZES
        # Let Conch set up whatever is not GCM; "none" stands in for the GCM side.
        saved = self.outCipType, self.inCipType, self.outMACType, self.inMACType
        if outGCM:
            self.outCipType, self.outMACType = b"aes128-ctr", b"none"
        if inGCM:
            self.inCipType, self.inMACType = b"aes128-ctr", b"none"
        super().setKeys(outIV, outKey, inIV, inKey, outInteg, inInteg)
        self.outCipType, self.inCipType, self.outMACType, self.inMACType = saved
        if outGCM:
            self.outAEAD = AEADPacketizer(outKey[: GCM_KEY_SIZES[self.outCipType]], outIV)
            self.encBlockSize = _BLOCK
        if inGCM:
            self.inAEAD = AEADPacketizer(inKey[: GCM_KEY_SIZES[self.inCipType]], inIV)
            self.decBlockSize = _BLOCK
            self.verifyDigestSize = _TAG
