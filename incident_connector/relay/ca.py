# -*- test-case-name: tests.unit.test_relay_ca -*-
"""
The relay's keys: its SSH host key, and the user CA that signs connectors'
certificates (with C{cryptography}'s C{SSHCertificateBuilder}) and checks
them at login.

A certificate is good for one thing, a remote forward: it carries the critical
option C{force-command /bin/false} and no extension but
C{permit-port-forwarding}, so an OpenSSH C{sshd} that trusts this CA gives it no
shell, pty, agent or X11 forwarding and runs no user rc file.  Its key ID names
the connector and the registry generation it was issued in
(C{conn_... generation 3}); L{parseKeyId} reads it back at login.
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

__all__ = ["FORCE_COMMAND", "CertificateAuthority", "CertificateRejected", "keyId", "loadOrCreateKey", "parseKeyId"]

FORCE_COMMAND = b"/bin/false"
"""
The command an OpenSSH sshd runs instead of whatever a certificate holder asks
for: none, in effect.
"""


def keyId(principal: str, generation: int) -> str:
    """
    The key ID of a certificate for C{principal} issued in C{generation}.
    """
    return f"{principal} generation {generation}"


def parseKeyId(text: str) -> tuple[str, int] | None:
    """
    The principal and generation in a key ID from L{keyId}, or L{None}.  A bare
    principal (certificates issued before generations existed) is generation 0.
    """
    principal, separator, generation = text.rpartition(" generation ")
    if not separator:
        return (text, 0) if text and " " not in text else None
    if not generation.isdigit() or not principal:
        return None
    return principal, int(generation)


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

    def sign(self, publicKey: str, principal: str, generation: int = 0, now: float | None = None) -> tuple[str, int]:
        """
        Certify C{publicKey} (an OpenSSH public key line, ed25519) for login as
        C{principal}, in registry C{generation}; return the certificate line and
        its end of validity.

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
            .key_id(keyId(principal, generation).encode())
            .valid_principals([principal.encode()])
            .valid_after(int(now) - 60)  # tolerate a little clock skew
            .valid_before(validBefore)
            # Nothing but forwarding, whatever the sshd's own configuration says.
            .add_critical_option(b"force-command", FORCE_COMMAND)
            .add_extension(b"permit-port-forwarding", b"")
            .sign(self.key)
        )
        return certificate.public_bytes().decode(), validBefore

    def verifyLogin(
        self, user: str, algorithm: bytes, blob: bytes, signedData: bytes | None, signature: bytes | None
    ) -> str:
        """
        Check a C{publickey} login with a certificate: signed by this CA, a user
        certificate, valid now, for C{user}; and, if given, that C{signature}
        over C{signedData} is by the certified key.  Returns the key ID.

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
        identity = certificate.key_id.decode("utf-8", "replace")
        if signature is None or signedData is None:
            return identity
        key = certificate.public_key()
        algorithmName, rest = getNS(signature)
        raw, _ = getNS(rest)
        if algorithmName != b"ssh-ed25519" or not isinstance(key, ed25519.Ed25519PublicKey):
            raise CertificateRejected("unexpected signature algorithm")
        try:
            key.verify(raw, signedData)
        except InvalidSignature:
            raise CertificateRejected("bad signature") from None
        return identity
