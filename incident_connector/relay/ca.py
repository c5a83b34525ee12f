# -*- test-case-name: tests.test_token -*-
"""
The relay's keys: its SSH host key, and the user CA that signs connectors'
certificates (with C{cryptography}'s C{SSHCertificateBuilder}) and checks
them at login.
"""

from __future__ import annotations

import base64
import secrets
import time
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh.common import getNS

from ..keyfiles import createKeyFile

__all__ = ["CertificateAuthority", "CertificateRejected", "loadOrCreateKey"]


class CertificateRejected(Exception):
    """
    A certificate presented at login is not acceptable; the message says why.
    """


def loadOrCreateKey(path: Path) -> ed25519.Ed25519PrivateKey:
    """
    An ed25519 key stored in OpenSSH format at C{path}, created (0600) if missing.
    """
    created = createKeyFile(path)
    loaded = serialization.load_ssh_private_key(path.read_bytes(), None)
    if not isinstance(loaded, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path} is not an ed25519 key")
    if created:
        path.with_name(path.name + ".pub").write_bytes(publicLine(loaded.public_key()) + b"\n")
    return loaded


def publicLine(key: ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


class CertificateAuthority:
    """
    @ivar key: the CA's private key.
    @ivar lifetime: seconds a new certificate is valid.
    """

    CERT_ALGORITHM = b"ssh-ed25519-cert-v01@openssh.com"

    def __init__(self, key: ed25519.Ed25519PrivateKey, lifetime: float) -> None:
        self.key = key
        self.lifetime = lifetime

    @property
    def publicLine(self) -> bytes:
        return publicLine(self.key.public_key())

    def sign(self, publicKey: str, principal: str, now: float | None = None) -> tuple[str, int]:
        """
        Certify C{publicKey} (an OpenSSH public key line, ed25519) for login as
        C{principal}; return the certificate line and its end of validity.

        @raise ValueError: the key is not an ed25519 public key.
        """
        loaded = serialization.load_ssh_public_key(publicKey.strip().encode())
        if not isinstance(loaded, ed25519.Ed25519PublicKey):
            raise ValueError("only ed25519 keys are certified")
        now = time.time() if now is None else now
        validBefore = int(now + self.lifetime)
        certificate = (
            serialization.SSHCertificateBuilder()
            .public_key(loaded)
            .serial(secrets.randbits(64))
            .type(serialization.SSHCertificateType.USER)
            .key_id(principal.encode())
            .valid_principals([principal.encode()])
            .valid_after(int(now) - 60)  # tolerate a little clock skew
            .valid_before(validBefore)
            # OpenSSH's sshd allows forwarding to certificates only with this.
            .add_extension(b"permit-port-forwarding", b"")
            .sign(self.key)
        )
        return certificate.public_bytes().decode(), validBefore

    def verifyLogin(
        self, user: str, algorithm: bytes, blob: bytes, signedData: bytes | None, signature: bytes | None
    ) -> None:
        """
        Check a C{publickey} login with a certificate: signed by this CA, a user
        certificate, valid now, for C{user}; and, if given, that C{signature}
        over C{signedData} is by the certified key.

        @raise CertificateRejected: with the reason.
        """
        if algorithm != self.CERT_ALGORITHM:
            raise CertificateRejected(f"only {self.CERT_ALGORITHM.decode()} is accepted, not {algorithm!r}")
        try:
            certificate = serialization.load_ssh_public_identity(algorithm + b" " + base64.b64encode(blob))
        except ValueError as e:
            raise CertificateRejected(f"unparsable certificate: {e}") from None
        if not isinstance(certificate, serialization.SSHCertificate):
            raise CertificateRejected("not a certificate")
        signer = certificate.signature_key()
        if not isinstance(signer, ed25519.Ed25519PublicKey) or signer.public_bytes_raw() != (
            self.key.public_key().public_bytes_raw()
        ):
            raise CertificateRejected("not signed by this relay's CA")
        try:
            certificate.verify_cert_signature()
        except InvalidSignature:
            raise CertificateRejected("bad CA signature") from None
        if certificate.type is not serialization.SSHCertificateType.USER:
            raise CertificateRejected("not a user certificate")
        now = time.time()
        if not certificate.valid_after <= now < certificate.valid_before:
            raise CertificateRejected("expired or not yet valid")
        if user.encode() not in certificate.valid_principals:
            raise CertificateRejected(f"not valid for user {user!r}")
        if signature is None or signedData is None:
            return
        key = certificate.public_key()
        algorithmName, rest = getNS(signature)
        raw, _ = getNS(rest)
        if algorithmName != b"ssh-ed25519" or not isinstance(key, ed25519.Ed25519PublicKey):
            raise CertificateRejected("unexpected signature algorithm")
        try:
            key.verify(raw, signedData)
        except InvalidSignature:
            raise CertificateRejected("bad signature") from None
