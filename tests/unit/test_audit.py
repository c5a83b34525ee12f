"""
The audit log: one JSON line per stream, every field from the record, hostile
bytes escaped; a file that cannot be opened or written costs records (counted,
one log line), never a stream; reopened after logrotate.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.audit import AUDIT_VERSION, FIELDS, AuditLog, auditRecord
from incident_connector.metrics import ConnectorMetrics
from incident_connector.results import StreamRecord, StreamResult


def record(**fields: object) -> StreamRecord:
    values: dict[str, object] = {
        "started": 1_700_000_000.25,
        "ended": 1_700_000_001.5,
        "id": "0a1b2c3d-7",
        "connection": "2/2",
        "originator": ("127.0.0.1", 41234),
        "version": 5,
        "host": "DB.internal.",
        "requested": "DB.internal.:5432",
        "port": 5432,
        "normalized": "db.internal",
        "addresses": ["10.0.0.5", "fd00::5"],
        "dialled": "10.0.0.5:5432",
        "verdict": "allow",
        "rule": "10.0.0.0/8:5432",
        "reply": 0,
        "up": 12,
        "down": 3400,
        "result": StreamResult.OK,
    }
    values.update(fields)
    return StreamRecord(**values)  # type: ignore[arg-type]


class RecordTests(SynchronousTestCase):
    def test_fields(self) -> None:
        written = auditRecord(record())
        self.assertEqual(tuple(written), FIELDS)
        self.assertEqual(
            written,
            {
                "v": AUDIT_VERSION,
                "id": "0a1b2c3d-7",
                "start": "2023-11-14T22:13:20.250000Z",
                "end": "2023-11-14T22:13:21.500000Z",
                "duration": 1.25,
                "connection": "2/2",
                "originator_host": "127.0.0.1",
                "originator_port": 41234,
                "socks_version": 5,
                "requested_host": "DB.internal.",
                "requested_port": 5432,
                "normalized": "db.internal",
                "addresses": ["10.0.0.5", "fd00::5"],
                "dialled": "10.0.0.5:5432",
                "rule": "10.0.0.0/8:5432",
                "verdict": "allow",
                "reply": 0,
                "bytes_up": 12,
                "bytes_down": 3400,
                "result": "ok",
            },
        )


class WriterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.metrics = ConnectorMetrics()

    def errors(self) -> float | None:
        return self.metrics.registry.get_sample_value("incident_connector_audit_write_errors_total")

    def test_oneLinePerStream(self) -> None:
        """
        Hostile bytes in the requested host (each a Latin-1 character) are
        escaped: one line per record, whatever was sent.
        """
        path = self.dir / "audit.jsonl"
        audit = AuditLog(str(path), self.metrics)
        hostile = "evil\n\x00\u2028\xff"
        audit(record(host=hostile))
        audit(record(id="0a1b2c3d-8", result=StreamResult.DENIED))
        lines = path.read_bytes().split(b"\n")
        self.assertEqual(lines[2:], [b""])
        self.assertTrue(all(line.isascii() for line in lines))
        first, second = (json.loads(line) for line in lines[:2])
        self.assertEqual(first["requested_host"], hostile)
        self.assertEqual((second["id"], second["result"]), ("0a1b2c3d-8", "denied"))
        self.assertEqual(path.stat().st_mode & 0o137, 0, "at most rw-r-----")
        self.assertEqual(self.errors(), 0)

    def test_reopenAfterRotation(self) -> None:
        path = self.dir / "audit.jsonl"
        audit = AuditLog(str(path), self.metrics)
        audit(record(id="a-1"))
        os.rename(path, self.dir / "audit.jsonl.1")
        audit(record(id="a-2"))
        audit.reopen()
        audit(record(id="a-3"))
        rotated = [json.loads(line)["id"] for line in (self.dir / "audit.jsonl.1").read_text().splitlines()]
        self.assertEqual(rotated, ["a-1", "a-2"])
        self.assertEqual([json.loads(line)["id"] for line in path.read_text().splitlines()], ["a-3"])

    def test_cannotOpen(self) -> None:
        """
        A path that cannot be opened: one line at start, each record counted
        as lost, never an exception; once it can be opened, records go there.
        """
        path = self.dir / "missing" / "audit.jsonl"
        with capturedLogs() as events:
            audit = AuditLog(str(path), self.metrics)
            for _ in range(3):
                audit(record())
        self.assertEqual(self.errors(), 3)
        [line] = [formatEvent(e) for e in events]
        self.assertEqual(
            line,
            f"audit log {path}: No such file or directory; streams go on, lost records are counted in "
            "incident_connector_audit_write_errors_total",
        )
        path.parent.mkdir()
        with capturedLogs() as events:
            audit(record())
        self.assertEqual([formatEvent(e) for e in events], [f"audit log {path}: writing again (3 records lost)"])
        self.assertEqual(len(path.read_text().splitlines()), 1)

    def test_diskFull(self) -> None:
        """
        Writes that fail (C{/dev/full}: no space left) are counted and
        reported once.
        """
        with capturedLogs() as events:
            audit = AuditLog("/dev/full", self.metrics)
            audit(record())
            audit(record())
        self.assertEqual(self.errors(), 2)
        self.assertEqual(len(events), 1)
        self.assertIn("No space left on device", formatEvent(events[0]))

    def test_failedReopenKeepsTheOldFile(self) -> None:
        path = self.dir / "sub" / "audit.jsonl"
        path.parent.mkdir()
        audit = AuditLog(str(path), self.metrics)
        os.rename(path.parent, self.dir / "gone")
        audit.reopen()
        audit(record(id="kept"))
        self.assertEqual(json.loads((self.dir / "gone" / "audit.jsonl").read_text())["id"], "kept")
        self.assertEqual(self.errors(), 0)

    def test_fifoNeverBlocks(self) -> None:
        """
        A FIFO with no reader costs the records instead of blocking the
        process in open() (before, the connector hung at start, its metrics
        port never listening); one whose reader stalls costs the records that
        do not fit instead of blocking the reactor in write().
        """
        path = self.dir / "fifo"
        os.mkfifo(path)
        audit = AuditLog(str(path), self.metrics)
        audit(record())
        self.assertEqual(self.errors(), 1)
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, reader)
        for _ in range(5000):
            audit(record())
        self.assertGreater(self.errors(), 1)
