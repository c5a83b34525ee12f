# -*- test-case-name: tests.test_hostkeys -*-
"""
Verifying the relay's host key: a C{SHA256:} fingerprint pin, an OpenSSH
known_hosts file, or both (then both must agree).
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.conch.client.knownhosts import KnownHostsFile
from twisted.conch.error import HostKeyChanged
from twisted.conch.ssh.keys import FingerprintFormats, Key
from twisted.python.filepath import FilePath

__all__ = ["HostKeyMismatch", "HostKeyPolicy", "fingerprint"]

# Signature algorithms a known_hosts key type can be negotiated as.
_ALGORITHMS = {b"ssh-rsa": [b"rsa-sha2-512", b"rsa-sha2-256", b"ssh-rsa"]}


class HostKeyMismatch(Exception):
    """
    The relay presented a host key we were not told to trust.
    """


def fingerprint(key: Key) -> str:
    """
    The key's fingerprint as OpenSSH prints it: C{SHA256:} and unpadded base64.
    """
    return "SHA256:" + key.fingerprint(FingerprintFormats.SHA256_BASE64).rstrip("=")


def knownHostsName(host: str, port: int) -> bytes:
    """
    The name OpenSSH looks a host up under: C{host} on port 22, else C{[host]:port}.
    """
    return (host if port == 22 else f"[{host}]:{port}").encode("utf-8")


class HostKeyPolicy:
    """
    Decides whether a relay host key is trusted.

    @ivar host: the relay host as dialled.
    @ivar port: the relay port.
    @ivar pin: a C{SHA256:...} fingerprint, or L{None}.
    @ivar knownHosts: the parsed known_hosts file, or L{None}.
    """

    def __init__(self, host: str, port: int, pin: str | None = None, knownHostsPath: str | None = None) -> None:
        if pin is None and knownHostsPath is None:
            raise ValueError("a host key policy needs a pin or a known_hosts file")
        self.host = host
        self.port = port
        self.pin = pin.rstrip("=") if pin else None
        self.knownHosts = KnownHostsFile.fromPath(FilePath(knownHostsPath)) if knownHostsPath else None

    def preferredAlgorithms(self, offered: Sequence[bytes]) -> list[bytes]:
        """
        Reorder C{offered} host key algorithms so the types known_hosts holds for
        this relay come first, as OpenSSH does; otherwise Conch might negotiate
        a type we have no entry for and reject a relay that is fine.
        """
        if self.knownHosts is None:
            return list(offered)
        name = knownHostsName(self.host, self.port)
        known: list[bytes] = []
        for entry in self.knownHosts.iterentries():
            keyType = getattr(entry, "keyType", None)
            if keyType is not None and entry.matchesHost(name):
                known.extend(_ALGORITHMS.get(keyType, [keyType]))
        first = [alg for alg in offered if alg in known]
        return first + [alg for alg in offered if alg not in first]

    def verify(self, blob: bytes) -> Key:
        """
        Check a host key blob.

        @raise HostKeyMismatch: with a message naming what was expected and seen.
        """
        key = Key.fromString(blob)
        seen = fingerprint(key)
        if self.pin is not None and seen != self.pin:
            raise HostKeyMismatch(f"relay host key {seen} does not match --relay-host-key {self.pin}")
        if self.knownHosts is not None:
            name = knownHostsName(self.host, self.port)
            try:
                found = self.knownHosts.hasHostKey(name, key)
            except HostKeyChanged as e:
                raise HostKeyMismatch(
                    f"relay host key {seen} ({key.sshType().decode()}) for {name.decode()} "
                    f"differs from the one in known_hosts line {e.lineno}"
                ) from None
            if not found:
                raise HostKeyMismatch(
                    f"relay host key {seen} ({key.sshType().decode()}) for {name.decode()} "
                    "is not in the known_hosts file"
                )
        return key
