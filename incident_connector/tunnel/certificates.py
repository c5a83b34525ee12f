# -*- test-case-name: tests.unit.test_certificates,tests.integration.test_token -*-
"""
OpenSSH user certificates on the client side.  Conch's C{keys.Key} knows no
certificates: C{cryptography} parses them, and user auth offers the
certificate blob under its own algorithm while signing with the plain key.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh.keys import Key

__all__ = ["CertificateError", "UserCertificate"]


class CertificateError(ValueError):
    """
    A certificate cannot be used; the message says why.
    """


@dataclass(frozen=True)
class UserCertificate:
    """
    An OpenSSH user certificate as offered in C{publickey} auth.

    @ivar algorithm: e.g. C{ssh-ed25519-cert-v01@openssh.com}.
    @ivar certificateBlob: the certificate in SSH wire format.
    @ivar validAfter: Unix time it becomes valid.
    @ivar validBefore: Unix time it stops being valid.
    @ivar principals: the login names it is valid for.
    """

    algorithm: bytes
    certificateBlob: bytes
    validAfter: int
    validBefore: int
    principals: tuple[str, ...]

    @classmethod
    def fromLine(cls, line: object, key: Key | None = None) -> UserCertificate:
        """
        Parse an OpenSSH certificate line (C{ssh-ed25519-cert-v01@openssh.com AAAA...}).

        @param key: if given, the private key the certificate must certify.
        @raise CertificateError: unparsable, not a user certificate, or for another key.
        """
        if not isinstance(line, (str, bytes)):
            raise CertificateError(f"expected a certificate line, not {type(line).__name__}")
        try:
            text = line.decode() if isinstance(line, bytes) else line
        except UnicodeDecodeError:
            raise CertificateError("not an OpenSSH certificate line") from None
        fields = text.split()
        if len(fields) < 2 or not fields[0].endswith("-cert-v01@openssh.com"):
            raise CertificateError("not an OpenSSH certificate line")
        try:
            certificate = serialization.load_ssh_public_identity(" ".join(fields[:2]).encode())
            blob = base64.b64decode(fields[1], validate=True)
        except (ValueError, binascii.Error, UnsupportedAlgorithm) as e:
            raise CertificateError(f"unparsable certificate: {e}") from None
        if not isinstance(certificate, serialization.SSHCertificate):
            raise CertificateError("not an OpenSSH certificate")
        if certificate.type is not serialization.SSHCertificateType.USER:
            raise CertificateError("a host certificate cannot log in")
        if key is not None:
            certified = certificate.public_key()
            ours = key.public()._keyObject
            if not (
                isinstance(certified, ed25519.Ed25519PublicKey)
                and isinstance(ours, ed25519.Ed25519PublicKey)
                and certified.public_bytes_raw() == ours.public_bytes_raw()
            ):
                raise CertificateError("the certificate is for another key")
        return cls(
            fields[0].encode(),
            blob,
            certificate.valid_after,
            certificate.valid_before,
            tuple(p.decode("utf-8", "replace") for p in certificate.valid_principals),
        )

    # What Conch's user auth asks of the key it offers.

    def sshType(self) -> bytes:
        return self.algorithm

    def blob(self) -> bytes:
        return self.certificateBlob
