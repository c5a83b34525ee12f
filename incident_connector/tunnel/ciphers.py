# -*- test-case-name: tests.test_ciphers -*-
"""
AEAD ciphers for the SSH transport, as OpenSSH does them.  Conch has none:
L{Ciphers} adds them next to Conch's own, and the packetizers frame packets
without I/O, so they can be tested byte by byte.

  - C{aes128-gcm@openssh.com}, C{aes256-gcm@openssh.com} (RFC 5647 with
    OpenSSH's naming): the 4-byte length in clear as additional
    authenticated data, the rest sealed with a 16-byte tag.
  - C{chacha20-poly1305@openssh.com} (OpenSSH's PROTOCOL.chacha20poly1305):
    the length encrypted with a second key, the payload with the first,
    both authenticated by Poly1305; the nonce is the packet sequence number.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305
from twisted.conch.ssh import transport

__all__ = ["AEAD_CIPHERS", "AEADPacketizer", "BadPacket", "ChaChaPacketizer", "Ciphers", "Packetizer"]

#: Cipher name -> key size in bytes.
GCM_KEY_SIZES = {b"aes128-gcm@openssh.com": 16, b"aes256-gcm@openssh.com": 32}
CHACHA = b"chacha20-poly1305@openssh.com"
AEAD_CIPHERS = frozenset([*GCM_KEY_SIZES, CHACHA])

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


class Packetizer:
    """
    One direction of an AEAD SSH transport: frames and seals packets, and
    opens them, without I/O.  Subclasses provide L{sealParts} and
    L{openPacket}.
    """

    def sealParts(self, head: bytes, payload: bytes | memoryview, sequence: int) -> tuple[bytes, ...]:
        """
        The wire bytes of one packet carrying C{head + payload} (message type
        included), as pieces to write in order, so the payload is copied
        once, into the plaintext.

        @param sequence: the packet sequence number.
        """
        raise NotImplementedError

    def openPacket(self, buffer: bytes | bytearray | memoryview, sequence: int) -> tuple[bytes, int, int] | None:
        """
        Like L{open}, without copying the payload out: C{(plain, end, used)},
        where the payload (message type first) is C{plain[1:end]}.
        """
        raise NotImplementedError

    def seal(self, payload: bytes, sequence: int) -> bytes:
        """
        The wire bytes of one packet carrying C{payload} (message type included).
        """
        return b"".join(self.sealParts(b"", payload, sequence))

    def open(self, buffer: bytes | bytearray | memoryview, sequence: int) -> tuple[bytes, int] | None:
        """
        The payload of the first whole packet in C{buffer} and the bytes it
        used, or L{None} if the packet is not all there yet.

        @raise BadPacket: bad length, padding or authentication failure.
        """
        opened = self.openPacket(buffer, sequence)
        if opened is None:
            return None
        plain, end, used = opened
        return plain[1:end], used


class AEADPacketizer(Packetizer):
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

    def sealParts(self, head: bytes, payload: bytes | memoryview, sequence: int) -> tuple[bytes, ...]:
        # GCM counts packets itself; the sequence number is not used.
        length, plain = _frame(head, payload, _BLOCK)
        return length, self._aead.encrypt(self._nonce(), plain, length)

    def openPacket(self, buffer: bytes | bytearray | memoryview, sequence: int) -> tuple[bytes, int, int] | None:
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
        return plain, _payloadEnd(plain), used


def _frame(head: bytes, payload: bytes | memoryview, block: int) -> tuple[bytes, bytes]:
    """
    The length field and the padded packet body for C{head + payload}:
    padding (at least 4 bytes) aligns everything after the length to
    C{block} (RFC 5647 7.2; OpenSSH does the same for chacha20-poly1305).
    """
    size = len(head) + len(payload)
    padding = block - ((1 + size) % block)
    if padding < 4:
        padding += block
    body = b"".join((bytes((padding,)), head, payload, _padding.take(padding)))
    return struct.pack("!L", 1 + size + padding), body


class _RandomPool:
    """
    Random padding bytes, fetched from the OS a few kilobytes at a time
    rather than once per packet.
    """

    SIZE = 4096

    def __init__(self) -> None:
        self._bytes = b""
        self._offset = 0

    def take(self, count: int) -> bytes:
        if self._offset + count > len(self._bytes):
            self._bytes, self._offset = os.urandom(self.SIZE), 0
        start = self._offset
        self._offset = start + count
        return self._bytes[start : start + count]


_padding = _RandomPool()


def _payloadEnd(plain: bytes) -> int:
    """
    Where the payload of a decrypted packet body ends (the padding begins).
    """
    padding = plain[0]
    if padding < 4 or padding >= len(plain):
        raise BadPacket("bad padding", transport.DISCONNECT_PROTOCOL_ERROR)
    return len(plain) - padding


_CHACHA_BLOCK = 8
#: One ChaCha20 block of zeros: encrypting it yields block 0 of the keystream.
_CHACHA_BLOCK0 = bytes(64)


class ChaChaPacketizer(Packetizer):
    """
    One direction of C{chacha20-poly1305@openssh.com}.

    ChaCha20 here is the original one (64-bit counter, 64-bit nonce); its
    state equals C{cryptography}'s RFC 7539 ChaCha20 given a 16-byte IV of
    the counter (8 bytes, little-endian) then the nonce (the sequence
    number, 8 bytes, big-endian).

    @ivar mainKey: K_2, for the packet body and the Poly1305 key.
    @ivar lengthKey: K_1, for the length field.
    """

    def __init__(self, key: bytes) -> None:
        self.mainKey = key[:32]
        self.lengthKey = key[32:64]

    @staticmethod
    def _keystream(key: bytes, sequence: int) -> CipherContext:
        """
        ChaCha20 from block 0 for this packet: one set-up serves both the
        Poly1305 key (block 0) and the body (from block 1).
        """
        iv = bytes(8) + sequence.to_bytes(8, "big")
        return Cipher(algorithms.ChaCha20(key, iv), mode=None).encryptor()

    def sealParts(self, head: bytes, payload: bytes | memoryview, sequence: int) -> tuple[bytes, ...]:
        length, plain = _frame(head, payload, _CHACHA_BLOCK)
        sealedLength = self._keystream(self.lengthKey, sequence).update(length)
        main = self._keystream(self.mainKey, sequence)
        mac = Poly1305(main.update(_CHACHA_BLOCK0)[:32])
        body = main.update(plain)
        mac.update(sealedLength)
        mac.update(body)
        return sealedLength, body, mac.finalize()

    def openPacket(self, buffer: bytes | bytearray | memoryview, sequence: int) -> tuple[bytes, int, int] | None:
        if len(buffer) < 4:
            return None
        view = memoryview(buffer)
        (length,) = struct.unpack("!L", self._keystream(self.lengthKey, sequence).update(view[:4]))
        if length > MAX_PACKET or length % _CHACHA_BLOCK or length < _CHACHA_BLOCK:
            raise BadPacket(f"bad packet length {length}", transport.DISCONNECT_PROTOCOL_ERROR)
        used = 4 + length + _TAG
        if len(buffer) < used:
            return None
        main = self._keystream(self.mainKey, sequence)
        mac = Poly1305(main.update(_CHACHA_BLOCK0)[:32])
        mac.update(view[: 4 + length])
        try:
            mac.verify(bytes(view[4 + length : used]))
        except InvalidSignature:
            raise BadPacket("bad MAC", transport.DISCONNECT_MAC_ERROR) from None
        plain = main.update(view[4 : 4 + length])
        return plain, _payloadEnd(plain), used


class Ciphers(transport.SSHCiphers):
    """
    Conch's cipher state, plus AES-GCM.

    @ivar outAEAD: the sending packetizer when an AEAD cipher was negotiated.
    @ivar inAEAD: the receiving packetizer when an AEAD cipher was negotiated.
    """

    outAEAD: Packetizer | None = None
    inAEAD: Packetizer | None = None

    def setKeys(self, outIV: bytes, outKey: bytes, inIV: bytes, inKey: bytes, outInteg: bytes, inInteg: bytes) -> None:
        outAEAD = self.outCipType in AEAD_CIPHERS
        inAEAD = self.inCipType in AEAD_CIPHERS
        # Let Conch set up whatever is not AEAD; a placeholder stands in for the AEAD side.
        saved = self.outCipType, self.inCipType, self.outMACType, self.inMACType
        if outAEAD:
            self.outCipType, self.outMACType = b"aes128-ctr", b"none"
        if inAEAD:
            self.inCipType, self.inMACType = b"aes128-ctr", b"none"
        super().setKeys(outIV, outKey, inIV, inKey, outInteg, inInteg)
        self.outCipType, self.inCipType, self.outMACType, self.inMACType = saved
        if outAEAD:
            self.outAEAD = _packetizer(self.outCipType, outKey, outIV)
            self.encBlockSize = _CHACHA_BLOCK if self.outCipType == CHACHA else _BLOCK
        if inAEAD:
            self.inAEAD = _packetizer(self.inCipType, inKey, inIV)
            self.decBlockSize = _CHACHA_BLOCK if self.inCipType == CHACHA else _BLOCK
            self.verifyDigestSize = _TAG


def _packetizer(name: bytes, key: bytes, iv: bytes) -> Packetizer:
    if name == CHACHA:
        return ChaChaPacketizer(key)
    return AEADPacketizer(key[: GCM_KEY_SIZES[name]], iv)
