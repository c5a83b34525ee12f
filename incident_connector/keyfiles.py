# -*- test-case-name: tests.test_token -*-
"""
Private key files: ed25519, OpenSSH format, created once with mode 0600.
Shared by the connector's key and the reference relay's host and CA keys.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

__all__ = ["createKeyFile"]


def createKeyFile(path: Path) -> bool:
    """
    Write a new ed25519 private key at C{path} (0600, never world-readable
    even for an instant) unless one is there.  Returns whether it created one.
    """
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as f:
        f.write(pem)
    return True
