# -*- test-case-name: tests.unit.test_hostkeys,tests.integration.test_knownhosts -*-
"""
Verifying the relay's host key: a C{SHA256:} fingerprint pin, an OpenSSH
known_hosts file, or both (then both must agree).

known_hosts is read as OpenSSH 9 reads it (C{hostfile.c}, C{match.c}), not
with Conch's C{KnownHostsFile}, which stops at the first line holding another
key for the host, ignores C{@revoked}, and knows no patterns:

  - a line is C{[@marker] patterns keytype base64 [comment]}; blank lines,
    C{#} comments and malformed lines are skipped;
  - C{patterns} is a comma-separated list matched against C{host}, or
    C{[host]:port} for a port other than 22, case-insensitively; C{*} and
    C{?} are wildcards; C{!pattern} excludes, whatever its place in the list;
    C{|1|salt|hash} is a hashed name (C{ssh-keygen -H});
  - for a port other than 22, when no line is about C{[host]:port} (none,
    or only excluded ones), the lines about plain C{host} are used, and then
    only to accept the key (C{ssh -v}: "checking without port identifier");
  - the key is accepted if any matching line without a marker holds it,
    wherever that line is (during a key rotation, old and new keys can both
    be listed);
  - a matching C{@revoked} line holding the key rejects it, whatever other
    lines say;
  - C{@cert-authority} lines are for host certificates.  Conch has none (the
    connector never negotiates a certificate host key), so they never accept
    a key, exactly as OpenSSH treats them for a plain host key; a rejection
    then says so.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.conch.ssh.keys import FingerprintFormats, Key

from ..files import readBounded

__all__ = [
    "MAX_FILE_SIZE",
    "HostKeyMismatch",
    "HostKeyPolicy",
    "KnownHost",
    "KnownHosts",
    "fingerprint",
    "knownHostsName",
    "matchHostPatterns",
]

# Signature algorithms a known_hosts key type can be negotiated as.
_ALGORITHMS = {b"ssh-rsa": [b"rsa-sha2-512", b"rsa-sha2-256", b"ssh-rsa"]}

REVOKED = b"@revoked"
CERT_AUTHORITY = b"@cert-authority"
_MARKERS = (REVOKED, CERT_AUTHORITY)
_HASH_MAGIC = b"|1|"

#: Largest known_hosts file read, in bytes (tens of thousands of hosts).
MAX_FILE_SIZE = 16 * 1024 * 1024


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
    The name OpenSSH looks a host up under: C{host} on port 22, else
    C{[host]:port}, in lower case (C{ssh} lowers the name it is given).
    """
    return (host if port == 22 else f"[{host}]:{port}").lower().encode("utf-8")


def _matchPattern(name: bytes, pattern: bytes) -> bool:
    """
    OpenSSH's C{match_pattern}: C{*} matches any run of bytes, C{?} any one
    byte, everything else itself.  Iterative, so no pattern can make it
    recurse or backtrack without bound.
    """
    n = p = 0
    star = -1
    resume = 0
    while n < len(name):
        if p < len(pattern) and (pattern[p] == ord("?") or pattern[p] == name[n]):
            n += 1
            p += 1
        elif p < len(pattern) and pattern[p] == ord("*"):
            star, resume = p, n
            p += 1
        elif star >= 0:
            resume += 1
            n, p = resume, star + 1
        else:
            return False
    while p < len(pattern) and pattern[p] == ord("*"):
        p += 1
    return p == len(pattern)


def matchHostPatterns(name: bytes, patterns: bytes) -> int:
    """
    OpenSSH's C{match_hostname}: 1 if a pattern of the comma-separated
    C{patterns} matches C{name}, -1 if a negated one does (it wins), else 0.
    """
    name = name.lower()
    positive = 0
    for pattern in patterns.split(b","):
        negated = pattern.startswith(b"!")
        if negated:
            pattern = pattern[1:]
        if len(pattern) >= 1023:  # OpenSSH gives up on the whole list
            return 0
        if _matchPattern(name, pattern.lower()):
            if negated:
                return -1
            positive = 1
    return positive


def _matchHashed(name: bytes, field: bytes) -> bool:
    """
    Whether C{|1|salt|hash} is the HMAC-SHA1 of C{name} under C{salt}.
    """
    if not field.startswith(_HASH_MAGIC):
        return False
    salt64, _, _ = field[len(_HASH_MAGIC) :].partition(b"|")
    try:
        salt = base64.b64decode(salt64, validate=True)
    except binascii.Error:
        return False
    if len(salt) != hashlib.sha1().digest_size:
        return False
    digest = hmac.new(salt, name, hashlib.sha1).digest()
    expected = _HASH_MAGIC + base64.b64encode(salt) + b"|" + base64.b64encode(digest)
    return hmac.compare_digest(expected, field)


@dataclass(frozen=True)
class KnownHost:
    """
    One valid known_hosts line.

    @ivar lineno: its line number, from 1.
    @ivar marker: C{@revoked}, C{@cert-authority}, or L{None}.
    @ivar hosts: the host patterns, or a hashed name.
    @ivar keyType: the key type field, e.g. C{ssh-ed25519}.
    @ivar blob: the public key, as the SSH wire format encodes it.
    """

    lineno: int
    marker: bytes | None
    hosts: bytes
    keyType: bytes
    blob: bytes

    @classmethod
    def fromLine(cls, lineno: int, line: bytes) -> KnownHost | None:
        """
        Parse a line; L{None} for a blank, comment or malformed one (OpenSSH
        skips those too).
        """
        # Fields are separated by spaces and tabs only (a CR is part of a field, as for OpenSSH).
        fields = [field for field in re.split(rb"[ \t]+", line) if field]
        if not fields or fields[0].startswith(b"#"):
            return None
        marker = None
        if fields[0].startswith(b"@"):
            if fields[0] not in _MARKERS:
                return None
            marker, fields = fields[0], fields[1:]
        if len(fields) < 3:
            return None
        hosts, keyType, encoded = fields[:3]
        try:
            # OpenSSH's b64_pton skips whitespace: the CR of a CRLF line is no part of the key.
            blob = base64.b64decode(encoded.translate(None, b"\r\n\v\f"), validate=True)
        except binascii.Error:
            return None
        # The blob names its own type: a line whose type field disagrees is malformed.
        if len(blob) < 4:
            return None
        (length,) = struct.unpack(">L", blob[:4])
        if blob[4 : 4 + length] != keyType:
            return None
        return cls(lineno, marker, hosts, keyType, blob)

    def matchesHost(self, name: bytes) -> bool:
        """
        Whether this line is about C{name} (as L{knownHostsName} spells it).
        """
        if self.hosts.startswith(b"|"):
            return _matchHashed(name, self.hosts)
        return matchHostPatterns(name, self.hosts) == 1


class KnownHosts:
    """
    An OpenSSH known_hosts file, read once.

    @ivar entries: its valid lines, in file order.
    """

    def __init__(self, entries: Sequence[KnownHost]) -> None:
        self.entries = list(entries)

    @classmethod
    def fromBytes(cls, text: bytes) -> KnownHosts:
        lines = text.split(b"\n")
        found = (KnownHost.fromLine(number, line) for number, line in enumerate(lines, 1))
        return cls([entry for entry in found if entry is not None])

    @classmethod
    def fromPath(cls, path: str) -> KnownHosts:
        """
        Read a known_hosts file of at most L{MAX_FILE_SIZE} bytes.

        @raise OSError: it cannot be read, is not a regular file, or is too large
            (C{strerror} says which).
        """
        text, _ = readBounded(path, MAX_FILE_SIZE)
        return cls.fromBytes(text)

    def forHost(self, name: bytes) -> list[KnownHost]:
        """
        The lines about C{name}, markers included.
        """
        return [entry for entry in self.entries if entry.matchesHost(name)]

    def lookup(self, name: bytes, blob: bytes) -> tuple[str, list[int]]:
        """
        OpenSSH's C{check_key_in_hostkeys} for one name: C{("ok", [line])};
        C{("revoked", [line])}, whatever else matches; C{("changed", lines)}
        holding other keys; or C{("new", lines)} of C{@cert-authority} lines
        (no line without a marker is about C{name}).
        """
        lines = self.forHost(name)
        revoked = [entry.lineno for entry in lines if entry.marker == REVOKED and entry.blob == blob]
        if revoked:
            return "revoked", revoked[:1]
        plain = [entry for entry in lines if entry.marker is None]
        holding = [entry.lineno for entry in plain if entry.blob == blob]
        if holding:
            return "ok", holding[:1]
        if plain:
            return "changed", [entry.lineno for entry in plain]
        return "new", [entry.lineno for entry in lines if entry.marker == CERT_AUTHORITY]

    def check(self, host: str, port: int, blob: bytes, what: str) -> None:
        """
        Accept the key C{blob} for C{host} on C{port}, or say why not.  As
        C{ssh} does, a port other than 22 is looked up as C{[host]:port},
        and, if no line is about that name at all, as plain C{host}, where
        the key is then accepted only if a line holds it and none revokes it.

        @param what: how to name the key in the message.
        @raise HostKeyMismatch: revoked, different from the listed keys, or unknown.
        """
        name = knownHostsName(host, port)
        status, lines = self.lookup(name, blob)
        if status == "new" and port != 22:
            bare = knownHostsName(host, 22)
            bareStatus, bareLines = self.lookup(bare, blob)
            if bareStatus == "ok":
                return
            if bareStatus != "new":
                name, status, lines = bare, bareStatus, bareLines
        if status == "ok":
            return
        if status == "revoked":
            raise HostKeyMismatch(f"{what} for {name.decode()} is revoked in known_hosts line {lines[0]}")
        numbers = ", ".join(str(number) for number in lines)
        if status == "changed":
            which = "the one in known_hosts line" if len(lines) == 1 else "those in known_hosts lines"
            raise HostKeyMismatch(f"{what} for {name.decode()} differs from {which} {numbers}")
        hint = ""
        if lines:
            hint = (
                f" (line {lines[0]} is @cert-authority, but host certificates are not supported: "
                "list the relay's host key itself)"
            )
        raise HostKeyMismatch(f"{what} for {name.decode()} is not in the known_hosts file{hint}")

    def keyTypes(self, host: str, port: int) -> list[bytes]:
        """
        The key types of the lines that could accept a key for C{host} on
        C{port}, in file order (those for plain C{host} if none is about
        C{[host]:port}).
        """
        types = [entry.keyType for entry in self.forHost(knownHostsName(host, port)) if entry.marker is None]
        if not types and port != 22:
            types = [entry.keyType for entry in self.forHost(knownHostsName(host, 22)) if entry.marker is None]
        return types


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
        self.knownHosts = KnownHosts.fromPath(knownHostsPath) if knownHostsPath else None

    def preferredAlgorithms(self, offered: Sequence[bytes]) -> list[bytes]:
        """
        Reorder C{offered} host key algorithms so the types known_hosts holds for
        this relay come first, as OpenSSH does; otherwise Conch might negotiate
        a type we have no entry for and reject a relay that is fine.
        """
        if self.knownHosts is None:
            return list(offered)
        known: list[bytes] = []
        for keyType in self.knownHosts.keyTypes(self.host, self.port):
            known.extend(_ALGORITHMS.get(keyType, [keyType]))
        first = [alg for alg in offered if alg in known]
        return first + [alg for alg in offered if alg not in first]

    def verify(self, blob: bytes) -> Key:
        """
        Check a host key blob.

        @raise HostKeyMismatch: with a message naming what was expected and seen.
        """
        key = Key.fromString(blob, type="blob")
        seen = fingerprint(key)
        if self.pin is not None and seen != self.pin:
            raise HostKeyMismatch(f"relay host key {seen} does not match --relay-host-key {self.pin}")
        if self.knownHosts is not None:
            what = f"relay host key {seen} ({key.sshType().decode()})"
            self.knownHosts.check(self.host, self.port, blob, what)
        return key
