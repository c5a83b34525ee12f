"""
The allowlist file reloaded live, on a L{task.Clock}: a new file (rename,
Kubernetes' C{..data} symlink swap) is put in force at the next poll, an
in-place edit once it holds still, a bad or missing file keeps the list in
force with one line; with C{--close-disallowed-streams} open streams the new
list does not allow are closed, the others keep going.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.allowlist import Allowlist
from incident_connector.budget import Budget
from incident_connector.metrics import ConnectorMetrics
from incident_connector.opening import OpeningSettings
from incident_connector.policy import (
    POLL_INTERVAL,
    AllowlistFile,
    AllowlistPolicy,
    OpenStreams,
    readAllowlistFile,
    stillAllowed,
)
from incident_connector.results import StreamRecord, StreamResult
from incident_connector.splice import SpliceSettings
from incident_connector.stream import StreamSettings

from .test_stream import CONNECT, Harness, Resolver, socks5


class ConfigMap:
    """
    A directory laid out as Kubernetes mounts a ConfigMap: C{allowlist} is a
    symlink to C{..data/allowlist}, C{..data} a symlink to a timestamped
    directory, and an update swaps C{..data} in one rename.
    """

    def __init__(self, root: Path, text: str) -> None:
        self.root = root
        root.mkdir()
        self.version = 0
        self.update(text)
        (root / "allowlist").symlink_to("..data/allowlist")
        self.path = str(root / "allowlist")

    def update(self, text: str) -> None:
        self.version += 1
        target = self.root / f"..2026_11_26_09_00_{self.version:02d}.{self.version}"
        target.mkdir()
        (target / "allowlist").write_text(text)
        link = self.root / "..data_tmp"
        link.symlink_to(target.name)
        os.rename(link, self.root / "..data")


class Reloading:
    """
    A policy fed by an allowlist file, polled on a task.Clock.
    """

    def __init__(self, path: str, closeDisallowed: bool = False, clock: Any = None) -> None:
        self.clock = clock or task.Clock()
        self.clock.advance(1_700_000_000)
        self.metrics = ConnectorMetrics()
        loaded = readAllowlistFile(path)
        self.policy = AllowlistPolicy(loaded.allowlist, f"file {path}", self.clock, self.metrics)
        self.openStreams = OpenStreams()
        self.file = AllowlistFile(
            path, loaded, self.policy, self.clock, self.metrics, self.openStreams, closeDisallowed=closeDisallowed
        )
        self.file.startService()

    def poll(self) -> None:
        self.clock.advance(POLL_INTERVAL)

    def entries(self) -> tuple[str, ...]:
        return self.policy().entries

    def reloads(self, result: str) -> float | None:
        return self.metrics.registry.get_sample_value("incident_connector_allowlist_reloads_total", {"result": result})

    def rules(self) -> float | None:
        return self.metrics.registry.get_sample_value("incident_connector_allowlist_rules")


class ReloadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()

    def test_configMapSwap(self) -> None:
        """
        Kubernetes' update (a new directory, C{..data} swapped) is in force
        after the next poll; the policy says when and what.
        """
        configMap = ConfigMap(self.dir / "config", "a:1\n")
        reloading = Reloading(configMap.path)
        self.assertEqual((reloading.entries(), reloading.rules()), (("a:1",), 1))
        reloading.poll()
        self.assertEqual(reloading.reloads("ok"), 0)
        configMap.update("# two now\na:1 b:2\n")
        with capturedLogs() as events:
            reloading.poll()
        self.assertEqual(reloading.entries(), ("a:1", "b:2"))
        self.assertEqual((reloading.reloads("ok"), reloading.rules()), (1, 2))
        status = reloading.policy.status()
        self.assertEqual(status["digest"], Allowlist.parse("a:1 b:2").digest())
        self.assertEqual(status["loaded_at"], "2023-11-14T22:13:24.000000Z")
        self.assertEqual(status["source"], f"file {configMap.path}")
        [line] = [formatEvent(e) for e in events]
        self.assertIn(f"allowlist reloaded from {configMap.path}: sha256:", line)
        self.assertIn("destinations: a:1 b:2", line)

    def test_renamedIntoPlace(self) -> None:
        path = self.dir / "allowlist"
        path.write_text("a:1\n")
        reloading = Reloading(str(path))
        (self.dir / "new").write_text("c:3\n")
        os.rename(self.dir / "new", path)
        reloading.poll()
        self.assertEqual(reloading.entries(), ("c:3",))

    def test_editedInPlaceLoadsOnceStill(self) -> None:
        """
        An edit of the same file is loaded once two polls read the same
        bytes: a half-written C{db:5432} read as C{db:54} never takes force.
        """
        path = self.dir / "allowlist"
        path.write_text("db:80\n")
        reloading = Reloading(str(path))
        with open(path, "r+") as f:
            f.truncate(0)
            f.write("db:54")
        reloading.poll()
        self.assertEqual(reloading.entries(), ("db:80",))
        with open(path, "a") as f:
            f.write("32\n")
        reloading.poll()
        self.assertEqual(reloading.entries(), ("db:80",))
        reloading.poll()
        self.assertEqual(reloading.entries(), ("db:5432",))
        self.assertEqual(reloading.reloads("ok"), 1)

    def test_hangUpLoadsAtOnce(self) -> None:
        """
        SIGHUP (L{AllowlistFile.reload}) loads what is there now, edited in
        place or not, and counts even an unchanged file.
        """
        path = self.dir / "allowlist"
        path.write_text("a:1\n")
        reloading = Reloading(str(path))
        reloading.file.reload()
        self.assertEqual(reloading.reloads("ok"), 1)
        with open(path, "w") as f:
            f.write("b:2\n")
        reloading.file.reload()
        self.assertEqual((reloading.entries(), reloading.reloads("ok")), (("b:2",), 2))

    def test_badFileKeepsTheList(self) -> None:
        """
        A file that does not parse leaves the list in force and says so in
        one line naming the line and the entry, once however often it is
        polled; the next good file is loaded.
        """
        configMap = ConfigMap(self.dir / "config", "a:1\n")
        reloading = Reloading(configMap.path)
        configMap.update("a:1\n# new\nb:2 10.0.0.1/8:80\n")
        with capturedLogs() as events:
            for _ in range(5):
                reloading.poll()
        self.assertEqual(reloading.entries(), ("a:1",))
        self.assertEqual((reloading.reloads("invalid"), reloading.reloads("ok")), (1, 0))
        [line] = [formatEvent(e) for e in events]
        self.assertEqual(
            line,
            f"--forward-dest-allowlist-file {configMap.path!r}: line 3: allowlist entry '10.0.0.1/8:80': "
            "10.0.0.1/8 has host bits set; keeping the allowlist loaded at 2023-11-14T22:13:20.000000Z "
            f"({Allowlist.parse('a:1').digest()})",
        )
        configMap.update("b:2\n")
        reloading.poll()
        self.assertEqual(reloading.entries(), ("b:2",))

    def test_emptiedFileKeepsTheList(self) -> None:
        configMap = ConfigMap(self.dir / "config", "a:1\n")
        reloading = Reloading(configMap.path)
        configMap.update("")
        reloading.poll()
        self.assertEqual((reloading.entries(), reloading.reloads("invalid")), (("a:1",), 1))

    def test_missingFileKeepsTheList(self) -> None:
        path = self.dir / "allowlist"
        path.write_text("a:1\n")
        reloading = Reloading(str(path))
        path.unlink()
        with capturedLogs() as events:
            reloading.poll()
            reloading.poll()
        self.assertEqual((reloading.entries(), reloading.reloads("unreadable")), (("a:1",), 1))
        [line] = [formatEvent(e) for e in events]
        self.assertIn("No such file or directory; keeping the allowlist loaded at", line)
        path.write_text("a:1\n")
        reloading.poll()
        path.unlink()
        reloading.poll()
        self.assertEqual(reloading.reloads("unreadable"), 2, "back to normal, then missing again: a new line")

    def test_stopped(self) -> None:
        path = self.dir / "allowlist"
        path.write_text("a:1\n")
        reloading = Reloading(str(path))
        reloading.file.stopService()
        self.assertEqual(reloading.clock.getDelayedCalls(), [])


class CloseDisallowedTests(SynchronousTestCase):
    """
    C{--close-disallowed-streams}: a reload closes the open streams the new
    list does not allow; the others, and every stream without the option,
    keep going.
    """

    def setUp(self) -> None:
        path = Path(self.mktemp())
        path.write_text("127.0.0.1:5432 db.internal:5432\n")
        self.path = path

    def streams(self, reloading: Reloading) -> tuple[list[StreamRecord], StreamSettings]:
        records: list[StreamRecord] = []
        settings = StreamSettings(
            OpeningSettings(reloading.clock, reloading.policy, reloading.metrics),
            SpliceSettings(reloading.clock, 0, 0, Budget(1 << 30, reloading.clock)),
            reloading.metrics,
            [records.append],
            reloading.openStreams,
        )
        return records, settings

    def replace(self, text: str) -> None:
        new = self.path.with_suffix(".new")
        new.write_text(text)
        os.rename(new, self.path)

    def test_closesWhatIsNoLongerAllowed(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        reloading = Reloading(str(self.path), closeDisallowed=True, clock=MemoryReactorClock())
        records, settings = self.streams(reloading)
        kept = Harness(settings=settings, reactor=reloading.clock)
        kept.feed(CONNECT)  # 127.0.0.1:5432
        keptDestination = kept.accept()
        revoked = Harness(settings=settings, reactor=reloading.clock)
        reloading.clock.nameResolver = Resolver("10.0.0.9")  # type: ignore[attr-defined]
        revoked.feed(socks5(b"db.internal", 5432))
        revokedDestination = revoked.accept()
        dialling = Harness(settings=settings, reactor=reloading.clock)
        dialling.feed(socks5(b"db.internal", 5432))
        waiting = Harness(settings=settings, reactor=reloading.clock)
        waiting.feed(b"\x05\x01\x00")  # no request yet: judged by the new list later
        self.assertEqual(len(reloading.openStreams), 4)

        self.replace("127.0.0.1:5432\n")
        with capturedLogs() as events:
            reloading.poll()
        self.assertIn("closed 2 open streams it does not allow", formatEvent(events[-1]))
        self.assertFalse(kept.channel.closed)
        kept.stream.dataReceived(b"still flowing")
        self.assertEqual(keptDestination.value(), b"still flowing")
        self.assertTrue(revoked.channel.closed)
        self.assertIsNotNone(revokedDestination.closedAfter)
        self.assertTrue(dialling.channel.closed)
        self.assertEqual(dialling.channel.sent[2:4], b"\x05\x02", "answered: not allowed")
        self.assertFalse(waiting.channel.closed)
        self.assertEqual([r.result for r in records], [StreamResult.REVOKED, StreamResult.REVOKED])
        self.assertEqual(len(reloading.openStreams), 2)

    def test_offByDefault(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        reloading = Reloading(str(self.path), clock=MemoryReactorClock())
        _records, settings = self.streams(reloading)
        stream = Harness(settings=settings, reactor=reloading.clock)
        stream.feed(CONNECT)
        stream.accept()
        self.replace("none\n")
        reloading.poll()
        self.assertEqual(reloading.entries(), ("none",))
        self.assertFalse(stream.channel.closed)
        stream.stream.connectionLost(_closed())
        self.assertEqual(len(reloading.openStreams), 0)


class StillAllowedTests(SynchronousTestCase):
    def test_table(self) -> None:
        def record(normalized: str | None, verdict: str | None, *addresses: str) -> StreamRecord:
            return StreamRecord(0, normalized=normalized, port=443, verdict=verdict, addresses=list(addresses))

        for allowlist, stream, allowed in [
            ("a:443", record("a", "allow"), True),
            ("b:443", record("a", "allow"), False),
            ("*:443", record("10.0.0.1", "allow"), True),
            ("10.0.0.0/8:443", record("a", "allow", "10.0.0.1", "10.0.0.2"), True),
            ("10.0.0.0/8:443", record("a", "allow", "10.0.0.1", "127.0.0.1"), False),
            ("10.0.0.0/8:443", record("a", "unresolved"), False),  # still dialling, addresses unknown
            ("none", record(None, None), True),  # not judged yet
            ("none", record("a", "deny"), True),  # already being refused
        ]:
            self.assertEqual(stillAllowed(Allowlist.parse(allowlist), stream), allowed, (allowlist, stream))


def _closed() -> Any:
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    return Failure(ConnectionDone())
