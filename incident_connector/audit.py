# -*- test-case-name: tests.unit.test_audit -*-
"""
The audit log (C{--audit-log}): one JSON object per line for every stream
that ended, made from the same L{StreamRecord} as the log line and the
metrics.  The fields are L{FIELDS}, documented in C{docs/audit.md}; C{v}
says which version of that list a line follows.

Writing never holds up a stream: a file that cannot be opened or written
(read-only, disk full) costs the record, counted in
C{incident_connector_audit_write_errors_total} and reported in one log line
until writing works again.  Each record is one C{write} to a descriptor
opened with C{O_APPEND}, so lines are whole even if another process appends
too; L{AuditLog.reopen} (on SIGHUP) opens the path again after logrotate
moved the file.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.logger import Logger

from .metrics import ConnectorMetrics
from .results import StreamRecord, timestamp

__all__ = ["AUDIT_VERSION", "FIELDS", "AuditLog", "auditRecord"]

#: The version of the field list; it changes when a field changes meaning or
#: goes away (new fields may be added without a new version).
AUDIT_VERSION = 1

#: Every field of a version 1 record, in the order written.
FIELDS = (
    "v",
    "id",
    "start",
    "end",
    "duration",
    "connection",
    "originator_host",
    "originator_port",
    "socks_version",
    "requested_host",
    "requested_port",
    "normalized",
    "addresses",
    "dialled",
    "rule",
    "verdict",
    "reply",
    "bytes_up",
    "bytes_down",
    "result",
)

_log = Logger(namespace="incident_connector.audit")


def auditRecord(record: StreamRecord) -> dict[str, Any]:
    """
    The audit record of a stream that ended, keys in L{FIELDS} order.
    """
    assert record.result is not None and record.ended is not None
    return {
        "v": AUDIT_VERSION,
        "id": record.id,
        "start": timestamp(record.started),
        "end": timestamp(record.ended),
        "duration": round(record.duration, 6),
        "connection": record.connection,
        "originator_host": record.originator[0],
        "originator_port": record.originator[1],
        "socks_version": record.version,
        "requested_host": record.host,
        "requested_port": record.port,
        "normalized": record.normalized,
        "addresses": record.addresses,
        "dialled": record.dialled,
        "rule": record.rule,
        "verdict": record.verdict,
        "reply": record.reply,
        "bytes_up": record.up,
        "bytes_down": record.down,
        "result": record.result.value,
    }


class AuditLog:
    """
    The sink writing audit records to a file, or to standard output for C{-}.

    @ivar path: the file, or C{-}.
    @ivar metrics: counts what could not be written.
    """

    def __init__(self, path: str, metrics: ConnectorMetrics) -> None:
        self.path = path
        self.metrics = metrics
        self._fd: int | None = None
        # Records lost since writing last worked, or None while it works.
        self._lost: int | None = None
        # A failed write may have left half a line: start the next on a new one.
        self._partial = False
        error = self._open()
        if error is not None:
            self._complain(error)

    def __call__(self, record: StreamRecord) -> None:
        """
        Write the record of a stream that ended.
        """
        line = json.dumps(auditRecord(record), ensure_ascii=True, separators=(",", ":")) + "\n"
        self._write(line.encode("ascii"))

    def reopen(self) -> None:
        """
        Open the path again (called on SIGHUP, after logrotate moved the
        file).  If it cannot be opened, records go on to the old file.
        """
        if self.path == "-":
            return
        old = self._fd
        error = self._open()
        if error is not None:
            self._complain(error)
            self._fd = old
        elif old is not None:
            os.close(old)

    def close(self) -> None:
        if self._fd is not None and self.path != "-":
            os.close(self._fd)
        self._fd = None

    def _open(self) -> OSError | None:
        if self.path == "-":
            # The process's standard output itself: twistd and connector-proxy
            # redirect sys.stdout into the log system, which would wrap each record.
            self._fd = 1
            return None
        # O_NONBLOCK: a FIFO with no reader fails at once (ENXIO) instead of
        # blocking the whole process in open(), and a full FIFO fails the
        # write (EAGAIN, the record counted lost) instead of blocking the
        # reactor; it changes nothing for a regular file.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            self._fd = os.open(self.path, flags, 0o640)
        except OSError as e:
            return e
        return None

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            error = self._open()
            if error is not None:
                self._lose(error)
                return
        assert self._fd is not None
        if self._partial:
            data = b"\n" + data
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as e:
            self._partial = len(view) < len(data)
            self._lose(e)
            return
        self._partial = False
        if self._lost is not None:
            _log.info("audit log {path}: writing again ({lost} records lost)", path=self.path, lost=self._lost)
            self._lost = None

    def _lose(self, error: OSError) -> None:
        """
        A record could not be written.
        """
        self.metrics.auditWriteErrors.inc()
        self._complain(error)
        assert self._lost is not None
        self._lost += 1

    def _complain(self, error: OSError) -> None:
        """
        One log line when writing stops working, none after until it works again.
        """
        if self._lost is None:
            self._lost = 0
            _log.error(
                "audit log {path}: {error}; streams go on, lost records are counted in "
                "incident_connector_audit_write_errors_total",
                path=self.path,
                error=error.strerror,
            )
