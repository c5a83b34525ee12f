# -*- test-case-name: tests.unit.test_packets -*-
"""
The SSH binary packet protocol (RFC 4253 section 6), one direction at a time,
without I/O: a L{Packetizer} seals messages into wire bytes and opens wire
bytes into messages, so every cipher can be tested byte by byte.

  - C{none} before the first key exchange;
  - C{aes128-gcm@openssh.com}, C{aes256-gcm@openssh.com} (RFC 5647 with
    OpenSSH's naming): the length in clear as additional data, the rest
    sealed with a 16-byte tag; no MAC is negotiated;
  - C{chacha20-poly1305@openssh.com} (OpenSSH's PROTOCOL.chacha20poly1305):
    the length encrypted with a second key, all of it authenticated by
    Poly1305, the nonce is the sequence number;
  - C{aes128-ctr}, C{aes192-ctr}, C{aes256-ctr} with C{hmac-sha2-256} or
    C{hmac-sha2-512} (MAC over the plaintext, RFC 4253) or their
    C{-etm@openssh.com} forms (length in clear, MAC over the ciphertext:
    OpenSSH's PROTOCOL, "encrypt then MAC").
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305

__all__ = [
    "AEAD_CIPHERS",
    "CIPHERS",
    "MACS",
    "BadPacket",
    "ChaChaPacketizer",
    "GCMPacketizer",
    "Packetizer",
    "PlainPacketizer",
    "StreamCipherPacketizer",
    "makePacketizer",
]

DISCONNECT_PROTOCOL_ERROR = 2
DISCONNECT_MAC_ERROR = 5

#: Cipher name -> (key size, IV size), for key derivation.
CIPHERS: dict[bytes, tuple[int, int]] = {
    b"aes128-gcm@openssh.com": (16, 12),
    b"aes256-gcm@openssh.com": (32, 12),
    b"chacha20-poly1305@openssh.com": (64, 0),
    b"aes128-ctr": (16, 16),
    b"aes192-ctr": (24, 16),
    b"aes256-ctr": (32, 16),
}
#: Ciphers that authenticate the packet themselves: the negotiated MAC is ignored.
AEAD_CIPHERS = frozenset([b"aes128-gcm@openssh.com", b"aes256-gcm@openssh.com", b"chacha20-poly1305@openssh.com"])
#: MAC name -> (hash, key size, encrypt-then-MAC).
MACS: dict[bytes, tuple[str, int, bool]] = {
    b"hmac-sha2-256-etm@openssh.com": ("sha256", 32, True),
    b"hmac-sha2-512-etm@openssh.com": ("sha512", 64, True),
    b"hmac-sha2-256": ("sha256", 32, False),
    b"hmac-sha2-512": ("sha512", 64, False),
}

_TAG = 16
_UINT32 = struct.Struct("!L")
#: Largest packet accepted (OpenSSH's PACKET_MAX_SIZE).
MAX_PACKET = 256 * 1024


class BadPacket(Exception):
    """
    A received packet is malformed or fails authentication.

    @ivar reason: the SSH disconnect reason code to send.
    """

    def __init__(self, message: str, reason: int = DISCONNECT_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.reason = reason


Buffer = bytes | bytearray | memoryview


class Packetizer:
    """
    One direction of the transport with one set of keys.

    @ivar blockSize: what the packet is padded to.
    """

    blockSize = 8

    def sealParts(self, head: bytes, payload: bytes | memoryview, sequence: int) -> tuple[bytes, ...]:
        """
        The wire bytes of one packet carrying C{head + payload} (the message
        type first), as pieces to write in order: the payload is copied once,
        into the plaintext.

        @param sequence: the packet sequence number.
        """
        raise NotImplementedError

    def openPacket(self, buffer: Buffer, sequence: int) -> tuple[bytes, int, int] | None:
        """
        Open the first packet in C{buffer}: C{(plain, end, used)}, where the
        message (type byte first) is C{plain[1:end]} and the packet took
        C{used} bytes of C{buffer}; or L{None} if it is not all there yet.

        @raise BadPacket: bad length, padding or authentication.
        """
        raise NotImplementedError

    def seal(self, message: bytes, sequence: int) -> bytes:
        """
        The wire bytes of one packet carrying C{message}.
        """
        return b"".join(self.sealParts(b"", message, sequence))

    def open(self, buffer: Buffer, sequence: int) -> tuple[bytes, int] | None:
        """
        The first message in C{buffer} and the bytes its packet used, or L{None}.
        """
        opened = self.openPacket(buffer, sequence)
        if opened is None:
            return None
        plain, end, used = opened
        return plain[1:end], used

    def _length(self, length: int) -> None:
        if length > MAX_PACKET or length % self.blockSize or length < self.blockSize:
            raise BadPacket(f"bad packet length {length}")


def _frame(head: bytes, payload: bytes | memoryview, block: int, counted: int) -> tuple[bytes, bytes]:
    """
    The length field and the padded body (padding length, message, padding)
    for C{head + payload}: at least 4 bytes of padding align the body, plus
    C{counted} (4 when the length field is encrypted with it), to C{block}.
    """
    size = len(head) + len(payload)
    padding = block - ((counted + 1 + size) % block)
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
    Where the message in a packet body ends (the padding begins).
    """
    padding = plain[0]
    if padding < 4 or padding >= len(plain):
        raise BadPacket("bad padding")
    return len(plain) - padding


class PlainPacketizer(Packetizer):
    """
    Before the first NEWKEYS: no encryption, no MAC.
    """

    def sealParts(self, head: bytes, payload: bytes | memoryview, sequence: int) -> tuple[bytes, ...]:
        return _frame(head, payload, self.blockSize, 4)

    def openPacket(self, buffer: Buffer, sequence: int) -> tuple[bytes, int, int] | None:
        if len(buffer) < 4:
            return None
        (length,) = struct.unpack_from("!L", buffer)
        if length > MAX_PACKET or (length + 4) % self.blockSize or length < 5:
            raise BadPacket(f"bad packet length {length}")
        if len(buffer) < 4 + length:
            return None
        plain = bytes(memoryview(buffer)[4 : 4 + length])
        return plain, _payloadEnd(plain), 4 + length


class GCMPacketizer(Packetizer):
    """
    One direction of AES-GCM.

    @ivar fixed: the IV's fixed 4 bytes.
    @ivar counter: the IV's invocation counter (its last 8 bytes), +1 per packet.
    """

    blockSize = 16

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
        length, plain = _frame(head, payload, self.blockSize, 0)
        return length, self._aead.encrypt(self._nonce(), plain, length)

    def openPacket(self, buffer: Buffer, sequence: int) -> tuple[bytes, int, int] | None:
        # The hot path of every upload: Packetizer._length, _nonce and
        # _payloadEnd written out inline (bench/packetloop.py measured the
        # calls); a change to those rules belongs here too.
        if len(buffer) < 4:
            return None
        (length,) = _UINT32.unpack_from(buffer)
        if length > MAX_PACKET or length & 15 or length < 16:
            raise BadPacket(f"bad packet length {length}")
        used = 4 + length + _TAG
        if len(buffer) < used:
            return None
        view = buffer if type(buffer) is memoryview else memoryview(buffer)
        counter = self.counter
        self.counter = (counter + 1) & 0xFFFFFFFFFFFFFFFF
        try:
            plain = self._aead.decrypt(self.fixed + counter.to_bytes(8, "big"), view[4:used], view[:4])
        except InvalidTag:
            raise BadPacket("bad MAC", DISCONNECT_MAC_ERROR) from None
        padding = plain[0]
        if padding < 4 or padding >= length:
            raise BadPacket("bad padding")
        return plain, length - padding, used


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

    blockSize = 8

    def __init__(self, key: bytes) -> None:
        self.mainKey = key[:32]
        self.lengthKey = key[32:64]

    @staticmethod
    def _keystream(key: bytes, sequence: int) -> CipherContext:
        """
        ChaCha20 from block 0 for this packet: one set-up serves both the
        Poly1305 key (block 0) and the body (from block 1).
        """
        iv = bytes(8) + (sequence & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
        return Cipher(algorithms.ChaCha20(key, iv), mode=None).encryptor()

    def sealParts(self, head: bytes, payload: bytes | memoryview, sequence: int) -> tuple[bytes, ...]:
        length, plain = _frame(head, payload, self.blockSize, 0)
        sealedLength = self._keystream(self.lengthKey, sequence).update(length)
        main = self._keystream(self.mainKey, sequence)
        mac = Poly1305(main.update(_CHACHA_BLOCK0)[:32])
        body = main.update(plain)
        mac.update(sealedLength)
        mac.update(body)
        return sealedLength, body, mac.finalize()

    def openPacket(self, buffer: Buffer, sequence: int) -> tuple[bytes, int, int] | None:
        if len(buffer) < 4:
            return None
        view = memoryview(buffer)
        (length,) = struct.unpack("!L", self._keystream(self.lengthKey, sequence).update(view[:4]))
        self._length(length)
        used = 4 + length + _TAG
        if len(buffer) < used:
            return None
        main = self._keystream(self.mainKey, sequence)
        mac = Poly1305(main.update(_CHACHA_BLOCK0)[:32])
        mac.update(view[: 4 + length])
        try:
            mac.verify(bytes(view[4 + length : used]))
        except InvalidSignature:
            raise BadPacket("bad MAC", DISCONNECT_MAC_ERROR) from None
        plain = main.update(view[4 : 4 + length])
        return plain, _payloadEnd(plain), used


class StreamCipherPacketizer(Packetizer):
    """
    One direction of AES-CTR with an HMAC: over the plaintext (RFC 4253), or
    over the ciphertext with the length in clear (C{-etm@openssh.com}).

    @ivar etm: encrypt-then-MAC.
    """

    blockSize = 16

    def __init__(self, key: bytes, iv: bytes, macName: bytes, macKey: bytes) -> None:
        digest, keySize, self.etm = MACS[macName]
        self._hmac = hmac.new(macKey[:keySize], digestmod=getattr(hashlib, digest))
        self._macSize = self._hmac.digest_size
        cipher = Cipher(algorithms.AES(key), modes.CTR(iv[:16]))
        # One keystream per direction, so one context for sealing or opening.
        self._encrypt = cipher.encryptor()
        self._decrypt = cipher.decryptor()
        #: The first block of a packet whose rest has not arrived yet.
        self._first: bytes | None = None

    def _mac(self, sequence: int, *parts: Buffer) -> bytes:
        mac = self._hmac.copy()
        mac.update(struct.pack("!L", sequence & 0xFFFFFFFF))
        for part in parts:
            mac.update(part)
        return mac.digest()

    def sealParts(self, head: bytes, payload: bytes | memoryview, sequence: int) -> tuple[bytes, ...]:
        if self.etm:
            length, body = _frame(head, payload, self.blockSize, 0)
            sealed = self._encrypt.update(body)
            return length, sealed, self._mac(sequence, length, sealed)
        length, body = _frame(head, payload, self.blockSize, 4)
        sealed = self._encrypt.update(length + body)
        return sealed, self._mac(sequence, length, body)

    def openPacket(self, buffer: Buffer, sequence: int) -> tuple[bytes, int, int] | None:
        view = memoryview(buffer)
        if self.etm:
            if len(buffer) < 4:
                return None
            (length,) = struct.unpack_from("!L", buffer)
            self._length(length)
            used = 4 + length + self._macSize
            if len(buffer) < used:
                return None
            if not hmac.compare_digest(self._mac(sequence, view[: 4 + length]), view[4 + length : used]):
                raise BadPacket("bad MAC", DISCONNECT_MAC_ERROR)
            plain = self._decrypt.update(view[4 : 4 + length])
            return plain, _payloadEnd(plain), used
        if self._first is None:
            if len(buffer) < self.blockSize:
                return None
            self._first = self._decrypt.update(view[: self.blockSize])
        (length,) = struct.unpack_from("!L", self._first)
        if length > MAX_PACKET or (length + 4) % self.blockSize or length < 5:
            raise BadPacket(f"bad packet length {length}")
        used = 4 + length + self._macSize
        if len(buffer) < used:
            return None
        packet = self._first + self._decrypt.update(view[self.blockSize : 4 + length])
        self._first = None
        if not hmac.compare_digest(self._mac(sequence, packet), view[4 + length : used]):
            raise BadPacket("bad MAC", DISCONNECT_MAC_ERROR)
        plain = packet[4:]
        return plain, _payloadEnd(plain), used


def makePacketizer(cipher: bytes, mac: bytes | None, key: bytes, iv: bytes, macKey: bytes) -> Packetizer:
    """
    The packetizer for a negotiated cipher (and MAC, unless the cipher is AEAD).

    @param key: at least the cipher's key size of derived key.
    @param iv: at least the cipher's IV size of derived IV.
    """
    keySize, ivSize = CIPHERS[cipher]
    if cipher == b"chacha20-poly1305@openssh.com":
        return ChaChaPacketizer(key[:keySize])
    if cipher in AEAD_CIPHERS:
        return GCMPacketizer(key[:keySize], iv[:ivSize])
    assert mac is not None
    return StreamCipherPacketizer(key[:keySize], iv[:ivSize], mac, macKey)
