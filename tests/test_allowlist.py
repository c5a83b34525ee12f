"""
The allowlist keeps OpenSSH PermitRemoteOpen's meaning.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from incident_connector.allowlist import Allowlist, AllowlistError


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
        self.assertEqual(allowlist.describe(), "no destination")

    def test_keywordsAlone(self) -> None:
        for text in ("any db:1", "db:1 none"):
            exc = self.assertRaises(AllowlistError, Allowlist.parse, text)
            self.assertIn("must be the only entry", str(exc))

    def test_malformed(self) -> None:
        for entry, message in [
            ("db", "expected 'host:port'"),
            ("db:0", "port '0' is not 1-65535"),
            ("db:65536", "port '65536'"),
            ("db:http", "port 'http'"),
            (":80", "empty host"),
            ("::1:80", "write IPv6 addresses in brackets"),
            ("[::1]80", "expected '[address]:port'"),
            ("[::1:80", "expected '[address]:port'"),
        ]:
            exc = self.assertRaises(AllowlistError, Allowlist.parse, f"ok:1 {entry}")
            self.assertIn(repr(entry), str(exc))
            self.assertIn(message, str(exc))


class MatchTests(SynchronousTestCase):
    table = [
        # (allowlist, host, port, allowed)
        ("grafana:3000", "grafana", 3000, True),
        ("grafana:3000", "grafana", 3001, False),
        ("grafana:3000", "GRAFANA", 3000, False),  # exact, as OpenSSH
        ("grafana:3000", "grafana.", 3000, False),
        ("grafana:3000", "10.0.0.1", 3000, False),  # no DNS
        ("*:443", "anything", 443, True),
        ("*:443", "anything", 80, False),
        ("db:*", "db", 1, True),
        ("db:*", "db2", 1, False),
        ("*:*", "x", 9, True),
        ("[::1]:80", "::1", 80, True),
        ("[::1]:80", "127.0.0.1", 80, False),
        ("a:1 b:2", "b", 2, True),
        # OpenSSH < 9.2 ignored the first entry; we never do.
        ("a:1", "b", 2, False),
        ("a:1", "a", 1, True),
    ]

    def test_table(self) -> None:
        for text, host, port, allowed in self.table:
            self.assertEqual(Allowlist.parse(text).allows(host, port), allowed, (text, host, port))
