# -*- test-case-name: tests.unit.test_kex -*-
"""
Key exchange without I/O: the algorithms the connector offers and why,
C{KEXINIT} messages, negotiation (with OpenSSH's strict key exchange), the
key agreement methods, and key derivation (RFC 4253 sections 7 and 8).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

try:  # ML-KEM came with cryptography 46; without it the hybrid is not offered.
    from cryptography.hazmat.primitives.asymmetric import mlkem
except ImportError:  # pragma: no cover - depends on the installed cryptography
    mlkem = None  # type: ignore[assignment]

from .errors import ProtocolError
from .packets import AEAD_CIPHERS, CIPHERS, MACS
from .wire import Reader, escape, mpint, string

__all__ = [
    "CIPHER_PREFERENCE",
    "HOST_KEY_PREFERENCE",
    "KEX_PREFERENCE",
    "MAC_PREFERENCE",
    "STRICT_CLIENT",
    "STRICT_SERVER",
    "KexInit",
    "KeyAgreement",
    "Negotiated",
    "NegotiationError",
    "deriveKeys",
    "negotiate",
]

# What the connector offers, best first.  Key exchange: the post-quantum
# hybrid OpenSSH 10 prefers, then curve25519 (every SSH server since 2014),
# then NIST curves and a 2048-bit group for servers restricted to FIPS lists.
# No SHA-1, no group exchange (its groups come from the server).
KEX_PREFERENCE = [
    *([b"mlkem768x25519-sha256"] if mlkem is not None else []),
    b"curve25519-sha256",
    b"curve25519-sha256@libssh.org",
    b"ecdh-sha2-nistp256",
    b"ecdh-sha2-nistp384",
    b"ecdh-sha2-nistp521",
    b"diffie-hellman-group14-sha256",
]
# Host keys: the types OpenSSH's ssh accepts by default, minus SHA-1 RSA.
HOST_KEY_PREFERENCE = [
    b"ssh-ed25519",
    b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521",
    b"rsa-sha2-512",
    b"rsa-sha2-256",
]
# Ciphers in order of CPU per byte here: AES-GCM (one AEAD call per packet);
# chacha20-poly1305 (two cipher set-ups and a Poly1305 per packet); AES-CTR
# with an HMAC.  No CBC, no 3DES.
CIPHER_PREFERENCE = [
    b"aes128-gcm@openssh.com",
    b"aes256-gcm@openssh.com",
    b"chacha20-poly1305@openssh.com",
    b"aes128-ctr",
    b"aes256-ctr",
    b"aes192-ctr",
]
# MACs (for CTR ciphers only): encrypt-then-MAC first, as OpenSSH orders
# them and as hardening guides require; no SHA-1, no MD5, no UMAC.
MAC_PREFERENCE = [
    b"hmac-sha2-256-etm@openssh.com",
    b"hmac-sha2-512-etm@openssh.com",
    b"hmac-sha2-256",
    b"hmac-sha2-512",
]

#: Strict key exchange markers (OpenSSH's PROTOCOL, the Terrapin fix,
#: CVE-2023-48795): pseudo-algorithms in the first KEXINIT's kex list.
STRICT_CLIENT = b"kex-strict-c-v00@openssh.com"
STRICT_SERVER = b"kex-strict-s-v00@openssh.com"

MSG_KEXINIT = 20


class NegotiationError(ProtocolError):
    """
    No algorithm in common for some part of the key exchange; the message
    names the part and both sides' lists.
    """


@dataclass(frozen=True)
class KexInit:
    """
    A C{SSH_MSG_KEXINIT} message (RFC 4253 section 7.1).

    @ivar kex: key exchange algorithms (with the strict markers, if any).
    @ivar hostKeys: host key algorithms.
    @ivar ciphers: (client to server, server to client).
    @ivar macs: (client to server, server to client).
    @ivar compressions: (client to server, server to client).
    @ivar firstFollows: the sender guessed and sent its first kex packet already.
    @ivar payload: the message as sent, type byte included (hashed into H).
    """

    kex: tuple[bytes, ...]
    hostKeys: tuple[bytes, ...]
    ciphers: tuple[tuple[bytes, ...], tuple[bytes, ...]]
    macs: tuple[tuple[bytes, ...], tuple[bytes, ...]]
    compressions: tuple[tuple[bytes, ...], tuple[bytes, ...]]
    firstFollows: bool
    payload: bytes

    @classmethod
    def build(
        cls, kex: Sequence[bytes], hostKeys: Sequence[bytes], ciphers: Sequence[bytes], macs: Sequence[bytes]
    ) -> KexInit:
        """
        Our own KEXINIT: the same lists both ways, no compression.
        """
        fields = [kex, hostKeys, ciphers, ciphers, macs, macs, [b"none"], [b"none"], [], []]
        payload = b"".join(
            [bytes((MSG_KEXINIT,)), os.urandom(16), *(string(b",".join(f)) for f in fields), b"\x00", bytes(4)]
        )
        return cls.parse(payload)

    @classmethod
    def parse(cls, payload: bytes) -> KexInit:
        """
        @param payload: the whole message, type byte first.
        @raise ProtocolError: malformed.
        """
        reader = Reader(payload, "KEXINIT")
        reader.take(17)
        lists = [tuple(filter(None, reader.string().split(b","))) for _ in range(10)]
        firstFollows = reader.boolean()
        reader.uint32()
        return cls(
            lists[0],
            lists[1],
            (lists[2], lists[3]),
            (lists[4], lists[5]),
            (lists[6], lists[7]),
            firstFollows,
            payload,
        )


@dataclass(frozen=True)
class Negotiated:
    """
    What one key exchange agreed, seen from the client.

    @ivar kex: the key exchange method.
    @ivar hostKey: the host key (signature) algorithm.
    @ivar cipherOut: client to server cipher; C{cipherIn} server to client.
    @ivar macOut: client to server MAC, L{None} with an AEAD cipher; C{macIn} likewise.
    @ivar strict: both sides do strict key exchange.
    """

    kex: bytes
    hostKey: bytes
    cipherOut: bytes
    cipherIn: bytes
    macOut: bytes | None
    macIn: bytes | None
    strict: bool


def _first(what: str, ours: Sequence[bytes], theirs: Sequence[bytes]) -> bytes:
    """
    The client's first choice the server also has (RFC 4253 section 7.1).
    """
    for name in ours:
        if name in theirs:
            return name
    raise NegotiationError(
        f"no common {what}: relay offers {_names(theirs)}; connector supports {_names(ours)}",
        reason="negotiation",
    )


def _names(names: Sequence[bytes]) -> str:
    shown = ", ".join(escape(n, 64) for n in names[:20])
    return shown if len(names) <= 20 else shown + ", ..."


def negotiate(client: KexInit, server: KexInit, initial: bool) -> Negotiated:
    """
    Agree on the algorithms of one key exchange.

    @param initial: this is the connection's first key exchange (the only one
        whose strict markers count).
    @raise NegotiationError: some part has nothing in common.
    """
    markers = (STRICT_CLIENT, STRICT_SERVER, b"ext-info-c", b"ext-info-s")
    kex = _first("key exchange method", [k for k in client.kex if k not in markers], server.kex)
    hostKey = _first("host key algorithm", client.hostKeys, server.hostKeys)
    cipherOut = _first("cipher (connector to relay)", client.ciphers[0], server.ciphers[0])
    cipherIn = _first("cipher (relay to connector)", client.ciphers[1], server.ciphers[1])
    # An AEAD cipher authenticates its packets: OpenSSH ignores the MAC lists
    # for it, and so must we, or a relay offering only EtM MACs with
    # AES-GCM would be refused for a MAC nobody uses.
    macOut = None if cipherOut in AEAD_CIPHERS else _first("MAC (connector to relay)", client.macs[0], server.macs[0])
    macIn = None if cipherIn in AEAD_CIPHERS else _first("MAC (relay to connector)", client.macs[1], server.macs[1])
    _first("compression (connector to relay)", client.compressions[0], server.compressions[0])
    _first("compression (relay to connector)", client.compressions[1], server.compressions[1])
    strict = initial and STRICT_CLIENT in client.kex and STRICT_SERVER in server.kex
    return Negotiated(kex, hostKey, cipherOut, cipherIn, macOut, macIn, strict)


class KeyAgreement:
    """
    The client's side of one key agreement method: the public value it
    sends in message 30, the server's reply (message 31) parsed, and the
    shared secret.

    @ivar hashName: the exchange hash function.
    """

    hashName = "sha256"

    def initPayload(self) -> bytes:
        """
        The body of our message 30 (KEXDH_INIT, KEX_ECDH_INIT, KEX_HYBRID_INIT).
        """
        raise NotImplementedError

    def finish(self, serverPublic: bytes) -> bytes:
        """
        The shared secret K, encoded as it is hashed (an mpint, or a string
        for the hybrid), from the server's public value as it was sent.

        @raise ProtocolError: the server's value is invalid.
        """
        raise NotImplementedError

    def serverPublic(self, reader: Reader) -> bytes:
        """
        Read the server's public value out of its reply, in its encoded form.
        """
        return reader.string()

    def exchangeHash(self, parts: Sequence[bytes], serverPublic: bytes, secret: bytes) -> bytes:
        """
        H = HASH(V_C || V_S || I_C || I_S || K_S || e || f || K), each part
        encoded as its method says.

        @param parts: C{string}-encoded V_C, V_S, I_C, I_S and K_S.
        """
        h = hashlib.new(self.hashName)
        for part in parts:
            h.update(part)
        h.update(self.initPayload())
        h.update(serverPublic)
        h.update(secret)
        return h.digest()


class _Curve25519(KeyAgreement):
    def __init__(self) -> None:
        self._private = x25519.X25519PrivateKey.generate()
        self._public = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def initPayload(self) -> bytes:
        return string(self._public)

    def finish(self, serverPublic: bytes) -> bytes:
        try:
            peer = x25519.X25519PublicKey.from_public_bytes(Reader(serverPublic, "Q_S").string())
            shared = self._private.exchange(peer)
        except ValueError:
            raise ProtocolError("the relay sent an invalid curve25519 public key", reason="negotiation") from None
        return mpint(int.from_bytes(shared, "big"))

    def serverPublic(self, reader: Reader) -> bytes:
        return string(reader.string())


class _NISTCurve(KeyAgreement):
    def __init__(self, curve: ec.EllipticCurve, hashName: str) -> None:
        self.hashName = hashName
        self._curve = curve
        self._private = ec.generate_private_key(curve)
        self._public = self._private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    def initPayload(self) -> bytes:
        return string(self._public)

    def finish(self, serverPublic: bytes) -> bytes:
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(self._curve, Reader(serverPublic, "Q_S").string())
            shared = self._private.exchange(ec.ECDH(), peer)
        except ValueError:
            raise ProtocolError("the relay sent an invalid ECDH public key", reason="negotiation") from None
        return mpint(int.from_bytes(shared, "big"))

    def serverPublic(self, reader: Reader) -> bytes:
        return string(reader.string())


# RFC 3526 group 14 (2048 bits), generator 2.
_GROUP14 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)


class _FixedGroup(KeyAgreement):
    def __init__(self, prime: int, generator: int, hashName: str) -> None:
        self.hashName = hashName
        self._p = prime
        # 512 bits of exponent: twice the group's security level.
        self._x = int.from_bytes(os.urandom(64), "big") | 1
        self._e = pow(generator, self._x, prime)

    def initPayload(self) -> bytes:
        return mpint(self._e)

    def serverPublic(self, reader: Reader) -> bytes:
        return mpint(reader.mpint())

    def finish(self, serverPublic: bytes) -> bytes:
        f = Reader(serverPublic, "f").mpint()
        if not 1 < f < self._p - 1:
            raise ProtocolError("the relay sent an invalid Diffie-Hellman value", reason="negotiation")
        return mpint(pow(f, self._x, self._p))


class _MLKEMHybrid(KeyAgreement):
    """
    mlkem768x25519-sha256 (draft-ietf-sshm-mlkem-hybrid-kex): ML-KEM-768 and
    X25519 together; K = SHA-256 of both secrets, hashed as a string.
    """

    def __init__(self) -> None:
        self._kem = mlkem.MLKEM768PrivateKey.generate()
        self._x25519 = x25519.X25519PrivateKey.generate()
        self._init = self._kem.public_key().public_bytes_raw() + self._x25519.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def initPayload(self) -> bytes:
        return string(self._init)

    def serverPublic(self, reader: Reader) -> bytes:
        return string(reader.string())

    def finish(self, serverPublic: bytes) -> bytes:
        reply = Reader(serverPublic, "S_REPLY").string()
        if len(reply) != 1088 + 32:
            raise ProtocolError("the relay sent an S_REPLY of the wrong length", reason="negotiation")
        try:
            kemSecret = self._kem.decapsulate(reply[:1088])
            classic = self._x25519.exchange(x25519.X25519PublicKey.from_public_bytes(reply[1088:]))
        except ValueError:
            raise ProtocolError("the relay sent an invalid hybrid key share", reason="negotiation") from None
        return string(hashlib.sha256(kemSecret + classic).digest())


KEY_AGREEMENTS: dict[bytes, Callable[[], KeyAgreement]] = {
    b"mlkem768x25519-sha256": _MLKEMHybrid,
    b"curve25519-sha256": _Curve25519,
    b"curve25519-sha256@libssh.org": _Curve25519,
    b"ecdh-sha2-nistp256": lambda: _NISTCurve(ec.SECP256R1(), "sha256"),
    b"ecdh-sha2-nistp384": lambda: _NISTCurve(ec.SECP384R1(), "sha384"),
    b"ecdh-sha2-nistp521": lambda: _NISTCurve(ec.SECP521R1(), "sha512"),
    b"diffie-hellman-group14-sha256": lambda: _FixedGroup(_GROUP14, 2, "sha256"),
}


@dataclass(frozen=True)
class Keys:
    """
    One direction's keys: IV, encryption key, MAC key.
    """

    iv: bytes
    key: bytes
    mac: bytes


def deriveKeys(
    hashName: str, secret: bytes, exchangeHash: bytes, sessionID: bytes, negotiated: Negotiated
) -> tuple[Keys, Keys]:
    """
    The client-to-server and server-to-client keys (RFC 4253 section 7.2),
    each as long as its algorithm needs.
    """

    def derive(letter: bytes, size: int) -> bytes:
        out = hashlib.new(hashName, secret + exchangeHash + letter + sessionID).digest()
        while len(out) < size:
            out += hashlib.new(hashName, secret + exchangeHash + out).digest()
        return out[:size]

    def sizes(cipher: bytes, mac: bytes | None) -> tuple[int, int, int]:
        keySize, ivSize = CIPHERS[cipher]
        return ivSize, keySize, MACS[mac][1] if mac is not None else 0

    ivOut, keyOut, macOut = sizes(negotiated.cipherOut, negotiated.macOut)
    ivIn, keyIn, macIn = sizes(negotiated.cipherIn, negotiated.macIn)
    return (
        Keys(derive(b"A", ivOut), derive(b"C", keyOut), derive(b"E", macOut)),
        Keys(derive(b"B", ivIn), derive(b"D", keyIn), derive(b"F", macIn)),
    )
