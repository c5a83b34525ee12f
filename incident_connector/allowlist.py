# -*- test-case-name: tests.unit.test_allowlist -*-
"""
The destination allowlist: the product's security boundary.

Syntax, a superset of OpenSSH C{PermitRemoteOpen} (what it accepts keeps its
meaning), space-separated:

  - C{host:port}, C{[v6]:port}; C{*} for a whole host or port field;
  - C{any} or C{none} alone;
  - C{*.example.internal:443}: names under that domain (not the bare domain);
  - C{10.0.0.0/8:5432}, C{[fd00::/8]:443}: addresses in a network;
  - C{host:8000-8100}: a port range.

Matching is done on a normal form of what the SOCKS client sent: names are
case-folded, lose one trailing dot and are IDNA-encoded; IP literals are
parsed, in every spelling C{getaddrinfo} would accept (C{127.1},
C{2130706433}, C{0x7f.0.0.1}, octal), and IPv4-mapped IPv6 counts as IPv4.

A name rule allows the name whatever it resolves to.  A name that only IP
rules could allow is resolved once, every address must be allowed, and the
connector dials exactly those addresses (see L{Verdict}).
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import idna

__all__ = [
    "ANY_RULE",
    "Allowlist",
    "AllowlistError",
    "Destination",
    "InvalidDestination",
    "Rule",
    "Verdict",
    "normalize",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AllowlistError(ValueError):
    """
    An allowlist entry cannot be parsed; the message quotes it.
    """


class InvalidDestination(ValueError):
    """
    The requested host is no valid name or address (NUL bytes, empty labels...).
    """


@dataclass(frozen=True)
class Destination:
    """
    A requested host in normal form: exactly one of C{name} and C{address}.

    @ivar name: lower-case ASCII (IDNA) name without a trailing dot.
    @ivar address: the IP address the literal means (IPv4-mapped as IPv4).
    """

    name: str | None = None
    address: IPAddress | None = None

    def __str__(self) -> str:
        return self.name if self.name is not None else str(self.address)


_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def parseAddress(text: str) -> IPAddress | None:
    """
    The IP address C{text} spells, in any spelling the resolver would accept,
    or L{None} if it is not an IP literal.
    """
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        address = None
        if re.fullmatch(r"[0-9a-fA-FxX.]+", text) and re.match(r"[0-9]", text):
            try:
                # inet_aton reads 127.1, 2130706433, 0x7f.0.0.1 and octal as getaddrinfo does.
                address = ipaddress.IPv4Address(socket.inet_aton(text))
            except OSError:
                return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def normalize(host: str) -> Destination:
    """
    The normal form of a requested host (as the SOCKS client sent it).

    @raise InvalidDestination: not a usable name or address.
    """
    address = parseAddress(host)
    if address is not None:
        return Destination(address=address)
    if not host or any(ord(c) < 0x21 or c == "\x7f" for c in host):
        raise InvalidDestination(f"invalid host name {host!r}")
    name = host[:-1] if host.endswith(".") else host
    if name.isascii():
        # Not through IDNA: it refuses "_", which internal DNS names use.
        ascii = name.lower()
    else:
        try:
            ascii = idna.encode(name, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            raise InvalidDestination(f"invalid host name {host!r}") from None
    if len(ascii) > 253 or not all(_LABEL.fullmatch(label) for label in ascii.split(".")):
        raise InvalidDestination(f"invalid host name {host!r}")
    if parseAddress(ascii) is not None:  # e.g. full-width digits that fold to an address
        return Destination(address=parseAddress(ascii))
    return Destination(name=ascii)


class Verdict(enum.Enum):
    """
    What the allowlist says of a destination before any DNS lookup.
    """

    #: Allowed as it is (a name: whatever it resolves to).
    ALLOW = "allow"
    #: Denied, no lookup needed.
    DENY = "deny"
    #: A name only IP rules could allow: resolve it once, then L{Allowlist.allowsAddresses}.
    CHECK_ADDRESSES = "check-addresses"


@dataclass(frozen=True)
class Rule:
    """
    One entry.

    @ivar text: the entry as the operator wrote it.
    @ivar name: an exact name, or L{None}.
    @ivar suffix: for C{*.domain}, the C{.domain} names must end with.
    @ivar network: an address or network, or L{None}.
    @ivar ports: inclusive port range; (1, 65535) for C{*}.
    """

    text: str
    name: str | None = None
    suffix: str | None = None
    network: IPNetwork | None = None
    ports: tuple[int, int] = (1, 65535)

    @property
    def anyHost(self) -> bool:
        return self.name is None and self.suffix is None and self.network is None

    def portMatches(self, port: int) -> bool:
        return self.ports[0] <= port <= self.ports[1]

    def matchesName(self, name: str, port: int) -> bool:
        if not self.portMatches(port):
            return False
        if self.anyHost:
            return True
        if self.name is not None:
            return name == self.name
        return self.suffix is not None and name.endswith(self.suffix)

    def matchesAddress(self, address: IPAddress, port: int) -> bool:
        if not self.portMatches(port):
            return False
        if self.anyHost:
            return True
        return self.network is not None and address.version == self.network.version and address in self.network

    def concrete(self) -> tuple[str, int] | None:
        """
        The single destination this rule names, if it names exactly one.
        """
        if self.ports[0] != self.ports[1]:
            return None
        if self.name is not None:
            return self.name, self.ports[0]
        if self.network is not None and self.network.num_addresses == 1:
            return str(self.network.network_address), self.ports[0]
        return None


#: The rule that matches when there is no list, or the list is C{any}.
ANY_RULE = Rule("any")


def _parsePorts(text: str, entry: str) -> tuple[int, int]:
    if text == "*":
        return 1, 65535
    match = re.fullmatch(r"(\d{1,5})(?:-(\d{1,5}))?", text)
    if not match:
        raise AllowlistError(f"allowlist entry {entry!r}: port {text!r} is not 1-65535, a range LOW-HIGH or '*'")
    low = int(match.group(1))
    high = int(match.group(2) or low)
    if not 0 < low <= high < 65536:
        raise AllowlistError(f"allowlist entry {entry!r}: port {text!r} is not 1-65535, a range LOW-HIGH or '*'")
    return low, high


def _parseHost(host: str, entry: str, bracketed: bool) -> dict[str, object]:
    if host == "*":
        return {}
    if "/" in host:
        try:
            network = ipaddress.ip_network(host, strict=True)
        except ValueError as e:
            raise AllowlistError(f"allowlist entry {entry!r}: {e}") from None
        if bracketed != (network.version == 6):
            raise AllowlistError(f"allowlist entry {entry!r}: write IPv6 networks in brackets, IPv4 without")
        mapped = network.network_address.ipv4_mapped if isinstance(network, ipaddress.IPv6Network) else None
        if mapped is not None and network.prefixlen >= 96:
            # Mapped addresses are judged as the IPv4 address they map (as a
            # single mapped address entry is): so is a mapped network.
            network = ipaddress.IPv4Network((mapped, network.prefixlen - 96))
        return {"network": network}
    address = parseAddress(host)
    if address is not None:
        if bracketed != (":" in host):
            raise AllowlistError(f"allowlist entry {entry!r}: brackets are for IPv6 addresses")
        return {"network": ipaddress.ip_network(address)}
    if bracketed:
        raise AllowlistError(f"allowlist entry {entry!r}: {host!r} in brackets is not an IPv6 address")
    if host.startswith("*."):
        try:
            domain = normalize(host[2:])
        except InvalidDestination:
            raise AllowlistError(f"allowlist entry {entry!r}: {host[2:]!r} is not a valid domain") from None
        if domain.name is None:
            raise AllowlistError(f"allowlist entry {entry!r}: '*.' goes before a domain name, not an address")
        return {"suffix": "." + domain.name}
    if "*" in host:
        raise AllowlistError(f"allowlist entry {entry!r}: '*' is allowed only as the whole host or as '*.domain'")
    try:
        destination = normalize(host)
    except InvalidDestination:
        raise AllowlistError(f"allowlist entry {entry!r}: {host!r} is not a valid host name") from None
    return {"name": destination.name}


def parseRule(entry: str) -> Rule:
    """
    Parse one entry.

    @raise AllowlistError: the entry is malformed; the message quotes it and says why.
    """
    if entry.startswith("["):
        close = entry.find("]")
        if close < 0 or entry[close + 1 : close + 2] != ":":
            raise AllowlistError(f"allowlist entry {entry!r}: expected '[address]:port'")
        host, portText, bracketed = entry[1:close], entry[close + 2 :], True
    else:
        host, sep, portText = entry.rpartition(":")
        if not sep:
            raise AllowlistError(f"allowlist entry {entry!r}: expected 'host:port'")
        if ":" in host:
            raise AllowlistError(f"allowlist entry {entry!r}: write IPv6 addresses in brackets, as '[::1]:443'")
        bracketed = False
    if not host:
        raise AllowlistError(f"allowlist entry {entry!r}: empty host")
    fields = _parseHost(host, entry, bracketed)
    return Rule(entry, ports=_parsePorts(portText, entry), **fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Allowlist:
    """
    The parsed allowlist.

    @ivar rules: the entries in order.
    @ivar permitAll: every destination is allowed (no list, or C{any}).
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

    @classmethod
    def parseLines(cls, text: str) -> Allowlist:
        """
        Parse an allowlist file: entries as in L{parse}, any number per line,
        C{#} to the end of a line is a comment.  Unlike the option, a file
        with no entry is an error, not "any destination": an emptied file
        must not open everything.

        @raise AllowlistError: the message starts with the line number.
        """
        entries = [
            (number, entry)
            # Lines end at "\n" only (a CRLF's CR is whitespace): splitlines() also ends
            # them at VT, FF, NEL, U+2028..., which would end a comment early.
            for number, line in enumerate(text.split("\n"), 1)
            for entry in line.split("#", 1)[0].split()
        ]
        if not entries:
            raise AllowlistError("no entry (write 'any' or 'none' to mean everything or nothing)")
        rules = []
        for number, entry in entries:
            if entry in ("any", "none"):
                if len(entries) > 1:
                    raise AllowlistError(f"line {number}: allowlist: {entry!r} must be the only entry")
                return cls((), entry == "any")
            try:
                rules.append(parseRule(entry))
            except AllowlistError as e:
                raise AllowlistError(f"line {number}: {e}") from None
        return cls(tuple(rules), False)

    @property
    def entries(self) -> tuple[str, ...]:
        """
        The list as written, one entry each: C{any} or C{none} alone, or the rules' texts.
        """
        if self.permitAll:
            return ("any",)
        return tuple(rule.text for rule in self.rules) or ("none",)

    def digest(self) -> str:
        """
        C{sha256:} and the hex digest of the entries, one per line: equal
        lists have equal digests, however they are spread over lines or
        commented.
        """
        return "sha256:" + hashlib.sha256("\n".join(self.entries).encode("utf-8")).hexdigest()

    def check(self, destination: Destination, port: int) -> Verdict:
        """
        Judge a destination before any lookup.
        """
        return self.match(destination, port)[0]

    def match(self, destination: Destination, port: int) -> tuple[Verdict, Rule | None]:
        """
        Judge a destination before any lookup, and name the rule that allows
        it: the first matching entry (L{ANY_RULE} with no list), or L{None}
        when denied or when the addresses decide (L{ruleForAddresses}).
        """
        if self.permitAll:
            return Verdict.ALLOW, ANY_RULE
        if destination.address is not None:
            rule = self._addressRule(destination.address, port)
            return (Verdict.DENY, None) if rule is None else (Verdict.ALLOW, rule)
        assert destination.name is not None
        for rule in self.rules:
            if rule.matchesName(destination.name, port):
                return Verdict.ALLOW, rule
        if any(rule.network is not None and rule.portMatches(port) for rule in self.rules):
            return Verdict.CHECK_ADDRESSES, None
        return Verdict.DENY, None

    def _addressRule(self, address: IPAddress, port: int) -> Rule | None:
        for rule in self.rules:
            if rule.matchesAddress(address, port):
                return rule
        return None

    def ruleForAddresses(self, addresses: Iterable[IPAddress | str], port: int) -> Rule | None:
        """
        For a name the addresses decide: the rule that allows the first
        address, if every address is allowed (L{allowsAddresses}); else L{None}.
        """
        checked = [parseAddress(str(address)) for address in addresses]
        if not checked or any(address is None for address in checked):
            return None
        rules = [self._addressRule(address, port) for address in checked if address is not None]
        return rules[0] if all(rule is not None for rule in rules) else None

    def allowsAddresses(self, addresses: Iterable[IPAddress | str], port: int) -> bool:
        """
        Whether every address a name resolved to is allowed (never true for none).
        """
        return self.ruleForAddresses(addresses, port) is not None

    def allows(self, host: str, port: int) -> bool:
        """
        Whether C{host} as sent is allowed without a lookup (names under IP
        rules count as denied here).
        """
        try:
            return self.check(normalize(host), port) is Verdict.ALLOW
        except InvalidDestination:
            return False

    def describe(self) -> str:
        """
        A one-line summary for the startup log.
        """
        if self.permitAll:
            return "any destination"
        if not self.rules:
            return "no destination"
        return " ".join(rule.text for rule in self.rules)
