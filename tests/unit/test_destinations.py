"""
The observed destinations: counted from the stream records, bounded to the
most recent distinct ones, served as JSON; and the allowlist suggested from
them covers exactly what was allowed and connected to.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from incident_connector.allowlist import Allowlist
from incident_connector.destinations import DestinationsResource, ObservedDestinations, allowlistEntry
from incident_connector.results import StreamRecord, StreamResult
from incident_connector.suggest import suggest, suggestFrom


def ended(host: str | None, port: int, verdict: str | None, at: float, **fields: object) -> StreamRecord:
    return StreamRecord(at, normalized=host, port=port, verdict=verdict, ended=at + 1, result=StreamResult.OK, **fields)  # type: ignore[arg-type]


class TableTests(SynchronousTestCase):
    def test_counts(self) -> None:
        table = ObservedDestinations(1_700_000_000)
        table(ended("db.internal", 5432, "allow", 1_700_000_010, rule="db.internal:5432", dialled="x", up=5, down=7))
        table(ended("db.internal", 5432, "allow", 1_700_000_020, rule="*:5432", dialled="x", up=1, down=1))
        table(ended("db.internal", 5432, "deny", 1_700_000_030))
        table(ended("fd00::5", 443, "deny", 1_700_000_040))
        table(ended(None, 1, None, 1_700_000_050))  # an invalid host: no destination
        table(StreamRecord(0, result=StreamResult.TIMEOUT))  # never sent a request
        document = table.snapshot()
        self.assertEqual(
            (document["since"], document["dropped"], document["capacity"]), ("2023-11-14T22:13:20.000000Z", 0, 1000)
        )
        newest, db = document["destinations"]
        self.assertEqual(
            (newest["host"], newest["entry"], newest["verdicts"]), ("fd00::5", "[fd00::5]:443", {"deny": 1})
        )
        self.assertEqual(
            db,
            {
                "host": "db.internal",
                "port": 5432,
                "entry": "db.internal:5432",
                "verdicts": {"allow": 2, "deny": 1},
                "connected": 2,
                "bytes_up": 6,
                "bytes_down": 8,
                "rules": ["*:5432", "db.internal:5432"],
                "first_seen": "2023-11-14T22:13:30.000000Z",
                "last_seen": "2023-11-14T22:13:51.000000Z",
            },
        )

    def test_bounded(self) -> None:
        """
        The most recently seen distinct destinations are kept; a destination
        seen again moves to the front instead of being dropped.
        """
        table = ObservedDestinations(0, capacity=3)
        table(ended("keep", 1, "allow", 1))
        for n in range(5):
            table(ended(f"h{n}", 1, "deny", 10 + n))
            table(ended("keep", 1, "allow", 10 + n))
        document = table.snapshot()
        self.assertEqual([d["host"] for d in document["destinations"]], ["keep", "h4", "h3"])
        self.assertEqual(document["dropped"], 3)
        self.assertEqual(document["destinations"][0]["verdicts"], {"allow": 6})

    def test_resource(self) -> None:
        table = ObservedDestinations(0)
        table(ended("db", 1, "allow", 1))
        request = DummyRequest([b""])
        body = DestinationsResource(table).render_GET(request)  # type: ignore[arg-type]
        self.assertEqual(json.loads(body), table.snapshot())
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"])

    def test_entries(self) -> None:
        self.assertEqual(allowlistEntry("db.internal", 5432), "db.internal:5432")
        self.assertEqual(allowlistEntry("10.0.0.5", 80), "10.0.0.5:80")
        self.assertEqual(allowlistEntry("::1", 80), "[::1]:80")


class SuggestTests(SynchronousTestCase):
    def test_exactlyWhatWasAllowedAndUsed(self) -> None:
        """
        Allowed and connected to: listed, with counts and last seen.  Denied,
        or allowed but never connected to: left out.  The output parses as an
        allowlist file allowing exactly the listed destinations.
        """
        table = ObservedDestinations(0)
        table(ended("grafana.internal", 3000, "allow", 100, dialled="x", up=10, down=20))
        table(ended("grafana.internal", 3000, "allow", 200, dialled="x", up=1, down=2))
        table(ended("10.0.0.5", 5432, "allow", 300, dialled="x"))
        table(ended("fd00::5", 443, "allow", 400, dialled="x"))
        table(ended("refused.internal", 80, "allow", 500))
        table(ended("denied.internal", 80, "deny", 600))
        text = suggestFrom(table.snapshot(), "http://127.0.0.1:9090/destinations")
        lines = text.splitlines()
        self.assertEqual(
            lines[1],
            "# 3 destinations allowed and connected to; 2 denied or never connected to, left out",
        )
        self.assertEqual(
            lines[2:],
            [
                "10.0.0.5:5432          # 1 allowed, 1 connected, 0 bytes up, 0 bytes down, last seen "
                "1970-01-01T00:05:01.000000Z",
                "[fd00::5]:443          # 1 allowed, 1 connected, 0 bytes up, 0 bytes down, last seen "
                "1970-01-01T00:06:41.000000Z",
                "grafana.internal:3000  # 2 allowed, 2 connected, 11 bytes up, 22 bytes down, last seen "
                "1970-01-01T00:03:21.000000Z",
            ],
        )
        allowlist = Allowlist.parseLines(text)
        for host, port, allowed in [
            ("grafana.internal", 3000, True),
            ("10.0.0.5", 5432, True),
            ("fd00::5", 443, True),
            ("grafana.internal", 3001, False),
            ("refused.internal", 80, False),
            ("denied.internal", 80, False),
        ]:
            self.assertEqual(allowlist.allows(host, port), allowed, host)

    def test_nothingUsed(self) -> None:
        table = ObservedDestinations(0)
        table(ended("denied.internal", 80, "deny", 1))
        text = suggestFrom(table.snapshot(), "u")
        self.assertEqual(text.splitlines()[-1], "none  # nothing was allowed and connected to")
        self.assertFalse(Allowlist.parseLines(text).allows("denied.internal", 80))


class SuggestCommandTests(SynchronousTestCase):
    """
    incident-connector suggest-allowlist --url: odd answers are one line.
    """

    def error(self, url: str) -> str:
        exc = self.assertRaises(SystemExit, suggest, ["--url", url], io.StringIO())
        self.assertIsInstance(exc.code, str)
        self.assertEqual(len(str(exc.code).splitlines()), 1, exc.code)
        return str(exc.code)

    def test_badURL(self) -> None:
        self.assertIn("nonnumeric port", self.error("http://127.0.0.1:abc"))
        self.assertIn("cannot read", self.error("http://127.0.0.1:1/a b"))

    def test_notADestinationsDocument(self) -> None:
        for text in ["{}", "[1]", '{"destinations": [{"x": 1}], "since": 1, "dropped": 0}']:
            base = Path(self.mktemp()).resolve()
            base.mkdir()
            (base / "destinations").write_text(text)
            self.assertIn("is not a connector's /destinations document", self.error(base.as_uri()))
