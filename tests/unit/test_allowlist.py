"""
The allowlist: every syntax, every normalisation, every rejection, as tables.
"""

from __future__ import annotations

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from incident_connector.allowlist import (
    ANY_RULE,
    Allowlist,
    AllowlistError,
    Destination,
    InvalidDestination,
    Verdict,
    normalize,
)

A = Verdict.ALLOW
D = Verdict.DENY
R = Verdict.CHECK_ADDRESSES


class ParseTests(SynchronousTestCase):
    def test_noListAllowsAll(self) -> None:
        for text in (None, "", "   "):
            allowlist = Allowlist.parse(text)
            self.assertTrue(allowlist.permitAll)
            self.assertTrue(allowlist.allows("anything", 1))

    def test_any(self) -> None:
        self.assertTrue(Allowlist.parse("any").allows("db", 5432))

    def test_none(self) -> None:
        allowlist = Allowlist.parse("none")
        self.assertFalse(allowlist.allows("db", 5432))
        self.assertFalse(allowlist.allows("127.0.0.1", 1))
        self.assertFalse(allowlist.allowsAddresses([ipaddress.ip_address("127.0.0.1")], 1))
        self.assertEqual(allowlist.describe(), "no destination")

    def test_keywordsAlone(self) -> None:
        for text in ("any db:1", "db:1 none"):
            exc = self.assertRaises(AllowlistError, Allowlist.parse, text)
            self.assertIn("must be the only entry", str(exc))

    def test_syntax(self) -> None:
        """
        Each accepted form parses into the rule it means.
        """
        for entry, fields in [
            ("db:5432", {"name": "db", "ports": (5432, 5432)}),
            ("DB.Internal.:5432", {"name": "db.internal"}),
            ("*:443", {"name": None, "suffix": None, "network": None, "ports": (443, 443)}),
            ("db:*", {"name": "db", "ports": (1, 65535)}),
            ("*.example.internal:443", {"suffix": ".example.internal"}),
            ("10.0.0.0/8:5432", {"network": ipaddress.ip_network("10.0.0.0/8")}),
            ("[fd00::/8]:443", {"network": ipaddress.ip_network("fd00::/8")}),
            ("[::1]:80", {"network": ipaddress.ip_network("::1/128")}),
            ("127.0.0.1:80", {"network": ipaddress.ip_network("127.0.0.1/32")}),
            ("host:8000-8100", {"ports": (8000, 8100)}),
            ("bücher.example:443", {"name": "xn--bcher-kva.example"}),
            ("_svc.db.internal:5432", {"name": "_svc.db.internal"}),
        ]:
            rule = Allowlist.parse(entry).rules[0]
            for field, value in fields.items():
                self.assertEqual(getattr(rule, field), value, (entry, field))

    def test_malformed(self) -> None:
        """
        A malformed entry is an error that quotes it and says what is wrong.
        """
        for entry, message in [
            ("db", "expected 'host:port'"),
            ("db:0", "port '0' is not 1-65535"),
            ("db:65536", "port '65536'"),
            ("db:http", "port 'http'"),
            ("db:9000-8000", "port '9000-8000'"),
            ("db:1-", "port '1-'"),
            (":80", "empty host"),
            ("::1:80", "write IPv6 addresses in brackets"),
            ("[::1]80", "expected '[address]:port'"),
            ("[::1:80", "expected '[address]:port'"),
            ("[db]:80", "in brackets is not an IPv6 address"),
            ("[10.0.0.1]:80", "brackets are for IPv6"),
            ("10.0.0.1/8:80", "has host bits set"),
            ("[fd00::/8:443", "expected '[address]:port'"),
            ("fd00::/8:443", "write IPv6 addresses in brackets"),
            ("10.0.0.0/33:80", "10.0.0.0/33"),
            ("db*:80", "'*' is allowed only as the whole host or as '*.domain'"),
            ("*.10.0.0.1:80", "'*.' goes before a domain name"),
            ("bad host:80", "expected 'host:port'"),
            ("a..b:80", "is not a valid host name"),
        ]:
            exc = self.assertRaises(AllowlistError, Allowlist.parse, f"ok:1 {entry}")
            self.assertIn(message, str(exc), entry)
            if entry != "bad host:80":  # split into two entries by the space
                self.assertIn(repr(entry), str(exc))


class NormalizeTests(SynchronousTestCase):
    table = [
        ("grafana", Destination(name="grafana")),
        ("GRAFANA.Internal", Destination(name="grafana.internal")),
        ("grafana.internal.", Destination(name="grafana.internal")),
        ("bücher.example", Destination(name="xn--bcher-kva.example")),
        ("BÜCHER.example", Destination(name="xn--bcher-kva.example")),
        ("127.0.0.1", Destination(address=ipaddress.ip_address("127.0.0.1"))),
        ("127.1", Destination(address=ipaddress.ip_address("127.0.0.1"))),
        ("2130706433", Destination(address=ipaddress.ip_address("127.0.0.1"))),
        ("0x7f.0.0.1", Destination(address=ipaddress.ip_address("127.0.0.1"))),
        ("0x7f000001", Destination(address=ipaddress.ip_address("127.0.0.1"))),
        ("0177.0.0.1", Destination(address=ipaddress.ip_address("127.0.0.1"))),
        ("::ffff:127.0.0.1", Destination(address=ipaddress.ip_address("127.0.0.1"))),
        ("::FFFF:7f00:1", Destination(address=ipaddress.ip_address("127.0.0.1"))),
        ("::1", Destination(address=ipaddress.ip_address("::1"))),
        # Full-width digits fold to ASCII ones under IDNA: still the address.
        ("\uff11\uff12\uff17.\uff10.\uff10.\uff11", Destination(address=ipaddress.ip_address("127.0.0.1"))),
    ]

    def test_table(self) -> None:
        for host, expected in self.table:
            self.assertEqual(normalize(host), expected, host)

    def test_invalid(self) -> None:
        for host in [
            "",
            ".",
            "a..b",
            "a\x00b",
            "evil\x00.allowed.internal",
            "sp ace",
            "tab\t",
            "-lead",
            "x" * 64,
            "\x7f",
        ]:
            self.assertRaises(InvalidDestination, normalize, host)


class MatchTests(SynchronousTestCase):
    table = [
        # (allowlist, host as sent, port, verdict before any lookup)
        ("grafana:3000", "grafana", 3000, A),
        ("grafana:3000", "grafana", 3001, D),
        ("grafana:3000", "GRAFANA", 3000, A),
        ("grafana:3000", "grafana.", 3000, A),
        ("grafana:3000", "grafana.evil", 3000, D),
        ("grafana:3000", "10.0.0.1", 3000, D),  # a name rule does not allow addresses
        ("*:443", "anything", 443, A),
        ("*:443", "10.1.2.3", 443, A),
        ("*:443", "anything", 80, D),
        ("db:*", "db", 1, A),
        ("db:*", "db2", 1, D),
        ("*.example.internal:443", "a.example.internal", 443, A),
        ("*.example.internal:443", "a.b.EXAMPLE.internal.", 443, A),
        ("*.example.internal:443", "example.internal", 443, D),
        ("*.example.internal:443", "evilexample.internal", 443, D),
        ("*.example.internal:443", "example.internal.evil", 443, D),
        ("host:8000-8100", "host", 8000, A),
        ("host:8000-8100", "host", 8100, A),
        ("host:8000-8100", "host", 8101, D),
        ("10.0.0.0/8:5432", "10.200.0.1", 5432, A),
        ("10.0.0.0/8:5432", "11.0.0.1", 5432, D),
        ("10.0.0.0/8:5432", "10.1", 5432, A),  # 10.0.0.1
        ("10.0.0.0/8:5432", "::ffff:10.0.0.1", 5432, A),
        ("10.0.0.0/8:5432", "db.internal", 5432, R),  # resolve, then check every address
        ("10.0.0.0/8:5432", "db.internal", 80, D),  # no IP rule for that port: no lookup
        ("[fd00::/8]:443", "fd12::1", 443, A),
        # A mapped network is the IPv4 network it maps, as a mapped address is.
        ("[::ffff:10.0.0.0/104]:443", "10.1.2.3", 443, A),
        ("[::ffff:10.0.0.0/104]:443", "::ffff:10.1.2.3", 443, A),
        ("[::ffff:10.0.0.0/104]:443", "11.0.0.1", 443, D),
        ("[fd00::/8]:443", "fe80::1", 443, D),
        ("[::1]:80", "::1", 80, A),
        ("[::1]:80", "127.0.0.1", 80, D),
        ("127.0.0.1:80", "127.1", 80, A),
        ("127.0.0.1:80", "2130706433", 80, A),
        ("127.0.0.1:80", "127.0.0.2", 80, D),
        ("10.0.0.1:80", "0x7f.0.0.1", 80, D),
        ("10.0.0.1:80", "0177.0.0.1", 80, D),
        ("a:1 b:2", "b", 2, A),
        # OpenSSH < 9.2 ignored the first entry; we never do.
        ("a:1", "b", 2, D),
        ("a:1", "a", 1, A),
    ]

    def test_table(self) -> None:
        for text, host, port, verdict in self.table:
            self.assertEqual(Allowlist.parse(text).check(normalize(host), port), verdict, (text, host, port))

    def test_addressesAfterLookup(self) -> None:
        """
        Under IP rules every resolved address must be allowed.
        """
        allowlist = Allowlist.parse("10.0.0.0/8:5432 [fd00::/8]:5432")
        ip = ipaddress.ip_address
        self.assertTrue(allowlist.allowsAddresses([ip("10.0.0.1"), ip("fd00::1")], 5432))
        self.assertFalse(allowlist.allowsAddresses([ip("10.0.0.1"), ip("127.0.0.1")], 5432))
        self.assertFalse(allowlist.allowsAddresses([ip("10.0.0.1")], 5433))
        self.assertFalse(allowlist.allowsAddresses([], 5432))
        self.assertTrue(allowlist.allowsAddresses([ip("::ffff:10.0.0.9")], 5432))

    def test_concrete(self) -> None:
        rules = Allowlist.parse("db:5432 10.0.0.1:80 *:1 db:1-2 10.0.0.0/8:1 *.x.internal:1").rules
        self.assertEqual([rule.concrete() for rule in rules], [("db", 5432), ("10.0.0.1", 80), None, None, None, None])


class RuleTests(SynchronousTestCase):
    """
    Which entry allowed a destination, as the operator wrote it: the label
    of the per-rule metrics and the audit log's C{rule}.
    """

    def test_firstMatchingEntry(self) -> None:
        allowlist = Allowlist.parse("DB.internal:5432 *:5432 10.0.0.0/8:* [fd00::/8]:443")
        for host, port, verdict, rule in [
            ("db.internal", 5432, A, "DB.internal:5432"),
            ("other", 5432, A, "*:5432"),
            ("10.1.2.3", 5432, A, "*:5432"),
            ("10.1.2.3", 80, A, "10.0.0.0/8:*"),
            ("fd00::1", 443, A, "[fd00::/8]:443"),
            ("db.internal", 80, R, None),
            ("fe80::1", 443, D, None),
        ]:
            verdict_, found = allowlist.match(normalize(host), port)
            self.assertEqual((verdict_, found.text if found else None), (verdict, rule), host)

    def test_noList(self) -> None:
        for text in (None, "any"):
            verdict, rule = Allowlist.parse(text).match(normalize("anything"), 1)
            self.assertEqual((verdict, rule), (A, ANY_RULE))
            self.assertEqual(ANY_RULE.text, "any")
        self.assertEqual(Allowlist.parse("none").match(normalize("db"), 1), (D, None))

    def test_ruleForAddresses(self) -> None:
        """
        A name the addresses decide: the rule of the first address, if
        every address is allowed (strings as the resolver gives them too).
        """
        allowlist = Allowlist.parse("10.0.0.0/8:5432 [fd00::/8]:5432")
        rule = allowlist.ruleForAddresses(["fd00::1", ipaddress.ip_address("10.0.0.1")], 5432)
        self.assertEqual(rule.text if rule else None, "[fd00::/8]:5432")
        self.assertIsNone(allowlist.ruleForAddresses(["10.0.0.1", "127.0.0.1"], 5432))
        self.assertIsNone(allowlist.ruleForAddresses([], 5432))
        self.assertIsNone(allowlist.ruleForAddresses(["not an address"], 5432))

    def test_digest(self) -> None:
        """
        Equal lists have equal digests, however they are written.
        """
        one = Allowlist.parse("a:1 b:2")
        self.assertEqual(one.digest(), Allowlist.parseLines("# comment\na:1\n\n  b:2  # b\n").digest())
        self.assertNotEqual(one.digest(), Allowlist.parse("b:2 a:1").digest())
        self.assertRegex(one.digest(), r"^sha256:[0-9a-f]{64}$")
        self.assertEqual(Allowlist.parse(None).entries, ("any",))
        self.assertEqual(Allowlist.parse("none").entries, ("none",))


class FileTests(SynchronousTestCase):
    """
    The file syntax: the option's entries, any number per line, C{#} comments.
    """

    def test_syntax(self) -> None:
        allowlist = Allowlist.parseLines("grafana.internal:3000 prometheus:9090  # two\n#whole line\n\n[::1]:80\n")
        self.assertEqual(allowlist.entries, ("grafana.internal:3000", "prometheus:9090", "[::1]:80"))
        self.assertTrue(Allowlist.parseLines("any # everything\n").permitAll)
        none = Allowlist.parseLines("\n none\n")
        self.assertEqual((none.permitAll, none.rules), (False, ()))

    def test_badLineNamed(self) -> None:
        """
        The error gives the line number and quotes the entry, as the
        option's error does.
        """
        for text, message in [
            ("a:1\n# ok\nb:2 10.0.0.1/8:80\n", "line 3: allowlist entry '10.0.0.1/8:80': 10.0.0.1/8 has host bits set"),
            ("a:1\nb\n", "line 2: allowlist entry 'b': expected 'host:port'"),
            ("a:1\nany\n", "line 2: allowlist: 'any' must be the only entry"),
            ("none\na:1\n", "line 1: allowlist: 'none' must be the only entry"),
        ]:
            exc = self.assertRaises(AllowlistError, Allowlist.parseLines, text)
            self.assertEqual(str(exc), message)

    def test_emptyFileIsAnError(self) -> None:
        """
        An emptied file must not open everything, as an empty option does.
        """
        for text in ("", "\n", "# only comments\n  # more\n"):
            exc = self.assertRaises(AllowlistError, Allowlist.parseLines, text)
            self.assertIn("no entry", str(exc))
