# -*- test-case-name: tests.test_allowlist -*-
"""
The destination allowlist, with OpenSSH C{PermitRemoteOpen} semantics.

Entries are space-separated C{host:port}; C{[v6]:port} for IPv6 literals;
C{*} as a whole host or port field; C{any} or C{none} alone.  A host matches
the destination string exactly as the SOCKS client sent it: no DNS, no case
folding, no CIDR (the same as OpenSSH, so a list moved from C{ssh -o
PermitRemoteOpen=...} keeps its meaning).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Allowlist", "AllowlistError", "Rule"]


class AllowlistError(ValueError):
    """
    An allowlist entry cannot be parsed; the message quotes it.
    """


@dataclass(frozen=True)
class Rule:
    """
    One C{host:port} entry.

    @ivar host: the host string to match exactly, or L{None} for C{*}.
    @ivar port: the port to match, or L{None} for C{*}.
    @ivar text: the entry as the operator wrote it.
    """

    host: str | None
    port: int | None
    text: str

    def matches(self, host: str, port: int) -> bool:
        return (self.host is None or self.host == host) and (self.port is None or self.port == port)


def _parsePort(text: str, entry: str) -> int | None:
    if text == "*":
        return None
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise AllowlistError(f"allowlist entry {entry!r}: port {text!r} is not 1-65535 or '*'")
    return int(text)


def parseRule(entry: str) -> Rule:
    """
    Parse one C{host:port} entry.

    @raise AllowlistError: the entry is malformed.
    """
    if entry.startswith("["):
        close = entry.find("]")
        if close < 0 or entry[close + 1 : close + 2] != ":":
            raise AllowlistError(f"allowlist entry {entry!r}: expected '[address]:port'")
        host, portText = entry[1:close], entry[close + 2 :]
    else:
        host, sep, portText = entry.rpartition(":")
        if not sep:
            raise AllowlistError(f"allowlist entry {entry!r}: expected 'host:port'")
        if ":" in host:
            raise AllowlistError(f"allowlist entry {entry!r}: write IPv6 addresses in brackets, as '[::1]:443'")
    if not host:
        raise AllowlistError(f"allowlist entry {entry!r}: empty host")
    return Rule(None if host == "*" else host, _parsePort(portText, entry), entry)


@dataclass(frozen=True)
class Allowlist:
    """
    The parsed allowlist.

    @ivar rules: the entries in order; empty with C{permitAll} for "no list"
        or C{any}, empty without it for C{none}.
    @ivar permitAll: every destination is allowed.
    """

    rules: tuple[Rule, ...]
    permitAll: bool

    @classmethod
    def parse(cls, text: str | None) -> Allowlist:
        """
        Parse the option's value; L{None} or blank means "any destination".

        @raise AllowlistError: an entry is malformed, or C{any}/C{none} is not alone.
        """
        entries = (text or "").split()
        if not entries:
            return cls((), True)
        for keyword in ("any", "none"):
            if keyword in entries and len(entries) > 1:
                raise AllowlistError(f"allowlist: {keyword!r} must be the only entry")
        if entries == ["any"]:
            return cls((), True)
        if entries == ["none"]:
            return cls((), False)
        return cls(tuple(parseRule(entry) for entry in entries), False)

    def allows(self, host: str, port: int) -> bool:
        """
        Whether a CONNECT to C{host} (as the client sent it) and C{port} may go ahead.
        """
        return self.permitAll or any(rule.matches(host, port) for rule in self.rules)

    def describe(self) -> str:
        """
        A one-line summary for the startup log.
        """
        if self.permitAll:
            return "any destination"
        if not self.rules:
            return "no destination"
        return " ".join(rule.text for rule in self.rules)
