"""
Operating without restarts, and seeing what went through: the allowlist file
reloaded on SIGHUP and when Kubernetes swaps a ConfigMap, per-rule metrics,
the audit log, C{/destinations} and C{suggest-allowlist}; each against a real
sshd, the connector as a twistd process and real SOCKS clients.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from .harness import (
    REPO,
    Connector,
    TunnelTestCase,
    consoleScript,
    echo,
    recvAll,
    recvExactly,
    socks5Connect,
    waitFor,
)
from .test_observability import Samples, scrape, value


def closedPort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exchange(sock: socket.socket, rounds: int = 8, size: int = 64 * 1024) -> None:
    """
    Send random bytes through an echoing stream and check each echo, byte-exact.
    """
    for _ in range(rounds):
        payload = os.urandom(size)
        sock.sendall(payload)
        assert recvExactly(sock, size) == payload


def code(port: int, host: str, destination: int) -> int:
    sock, reply = socks5Connect(port, host, destination)
    sock.close()
    return reply


class ConfigMap:
    """
    A ConfigMap as the kubelet mounts it: C{allowlist} -> C{..data/allowlist},
    C{..data} -> a timestamped directory, swapped in one rename on update.
    """

    def __init__(self, root: Path, text: str) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.version = 0
        self.update(text)
        (root / "allowlist").symlink_to("..data/allowlist")
        self.path = root / "allowlist"

    def update(self, text: str) -> None:
        self.version += 1
        directory = self.root / f"..2026_11_26_09_14_{self.version:02d}.{os.getpid()}"
        directory.mkdir()
        (directory / "allowlist").write_text(text)
        (self.root / "..data_tmp").symlink_to(directory.name)
        os.rename(self.root / "..data_tmp", self.root / "..data")


class ReloadTests(TunnelTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.first = self.target(echo)
        self.second = self.target(echo)

    def metrics(self, connector: Connector) -> Samples:
        status, text = connector.get("/metrics")
        self.assertEqual(status, 200)
        return scrape(text)

    def allowlistStatus(self, connector: Connector) -> dict[str, Any]:
        status, body = connector.get("/readyz")
        self.assertEqual(status, 200)
        return json.loads(body)["allowlist"]  # type: ignore[no-any-return]

    def checkReloaded(self, connector: Connector, port: int, open: socket.socket, before: dict[str, Any]) -> None:
        """
        The stream opened under the old list still flows byte-exact; new
        requests follow the new list; /readyz and the metrics say so.
        """
        exchange(open)
        open.close()
        self.assertEqual(code(port, "127.0.0.1", self.first.port), 0x02)
        self.assertEqual(code(port, "127.0.0.1", self.second.port), 0)
        after = self.allowlistStatus(connector)
        self.assertNotEqual(after["digest"], before["digest"])
        self.assertGreater(after["loaded_at"], before["loaded_at"])
        self.assertEqual(after["rules"], 1)
        samples = self.metrics(connector)
        self.assertEqual(value(samples, "incident_connector_allowlist_reloads_total", result="ok"), 1)
        self.assertEqual(value(samples, "incident_connector_allowlist_rules"), 1)

    def test_sighup(self) -> None:
        path = self.dir / "allowlist"
        path.write_text(f"# the first echo\n127.0.0.1:{self.first.port}\n")
        connector = self.startConnector("--forward-dest-allowlist-file", str(path))
        port = connector.allocatedPort()
        before = self.allowlistStatus(connector)
        self.assertEqual(before["source"], f"file {path}")
        self.assertEqual(code(port, "127.0.0.1", self.second.port), 0x02)
        sock, reply = socks5Connect(port, "127.0.0.1", self.first.port)
        self.assertEqual(reply, 0)
        exchange(sock)
        # Edited in place: only the signal says it is complete.
        path.write_text(f"127.0.0.1:{self.second.port}  # now the second\n")
        mark = len(connector.text())
        connector.signal(signal.SIGHUP)
        connector.waitForLog(r"allowlist reloaded from .*destinations: 127\.0\.0\.1:\d+", after=mark)
        self.checkReloaded(connector, port, sock, before)
        assert connector.process is not None
        self.assertIsNone(connector.process.poll(), "SIGHUP does not stop the connector")

    def test_configMapSwap(self) -> None:
        """
        Kubernetes' update of a mounted ConfigMap (a new directory, the
        C{..data} symlink swapped) is picked up without a signal.
        """
        configMap = ConfigMap(self.dir / "config", f"127.0.0.1:{self.first.port}\n")
        connector = self.startConnector("--forward-dest-allowlist-file", str(configMap.path))
        port = connector.allocatedPort()
        before = self.allowlistStatus(connector)
        sock, reply = socks5Connect(port, "127.0.0.1", self.first.port)
        self.assertEqual(reply, 0)
        exchange(sock)
        mark = len(connector.text())
        configMap.update(f"127.0.0.1:{self.second.port}\n")
        connector.waitForLog(r"allowlist reloaded from", timeout=15, after=mark)
        self.checkReloaded(connector, port, sock, before)

    def test_brokenFileKeepsTheList(self) -> None:
        configMap = ConfigMap(self.dir / "config", f"127.0.0.1:{self.first.port}\n")
        connector = self.startConnector("--forward-dest-allowlist-file", str(configMap.path))
        port = connector.allocatedPort()
        before = self.allowlistStatus(connector)
        mark = len(connector.text())
        configMap.update(f"127.0.0.1:{self.second.port}\n# typo below\n127.0.0.1:{self.first.port}0000\n")
        line = connector.waitForLog(r".*keeping the allowlist loaded at.*", timeout=15, after=mark).group(0)
        self.assertIn(
            f"--forward-dest-allowlist-file '{configMap.path}': line 3: allowlist entry "
            f"'127.0.0.1:{self.first.port}0000': port '{self.first.port}0000' is not 1-65535",
            line,
        )
        self.assertIn(before["digest"], line)
        samples = waitFor(
            lambda: (
                (s := self.metrics(connector))
                and value(s, "incident_connector_allowlist_reloads_total", result="invalid") == 1
                and s
            ),
            10,
            "the failure counted",
        )
        self.assertEqual(value(samples, "incident_connector_allowlist_reloads_total", result="ok"), 0)
        self.assertEqual(self.allowlistStatus(connector), before)
        self.assertEqual(code(port, "127.0.0.1", self.first.port), 0)
        self.assertEqual(code(port, "127.0.0.1", self.second.port), 0x02)
        configMap.update(f"127.0.0.1:{self.second.port}\n")
        connector.waitForLog(r"allowlist reloaded from", timeout=15, after=mark)
        self.assertEqual(len(re.findall("keeping the allowlist", connector.text()[mark:])), 1)
        self.assertEqual(code(port, "127.0.0.1", self.second.port), 0)

    def test_closeDisallowedStreams(self) -> None:
        configMap = ConfigMap(self.dir / "config", f"127.0.0.1:{self.first.port} 127.0.0.1:{self.second.port}\n")
        connector = self.startConnector(
            "--forward-dest-allowlist-file", str(configMap.path), "--close-disallowed-streams", "yes"
        )
        port = connector.allocatedPort()
        revoked, _ = socks5Connect(port, "127.0.0.1", self.first.port)
        kept, _ = socks5Connect(port, "127.0.0.1", self.second.port)
        exchange(revoked, rounds=1)
        exchange(kept, rounds=1)
        mark = len(connector.text())
        configMap.update(f"127.0.0.1:{self.second.port}\n")
        connector.waitForLog(r"allowlist reloaded from .*; closed 1 open streams it does not allow", 15, mark)
        self.assertEqual(recvAll(revoked), b"")
        exchange(kept)
        kept.close()
        revoked.close()
        connector.waitForLog(rf"stream 127\.0\.0\.1:{self.first.port} revoked", after=mark)


class RuleMetricsTests(TunnelTestCase):
    def test_valuesEqualWhatClientsDid(self) -> None:
        """
        Streams, bytes, dials and dial failures per allowlist entry (as
        written), denials under C{none}.
        """
        first = self.target(echo)
        second = self.target(echo)
        forbidden = self.target(echo)
        closed = closedPort()
        byAddress, byName, anyHost = f"127.0.0.1:{first.port}", f"LocalHost:{second.port}", f"*:{closed}"
        connector = self.startConnector("--forward-dest-allowlist", f"{byAddress} {byName} {anyHost}")
        port = connector.allocatedPort()
        for size in (100, 2000, 30000):
            sock, reply = socks5Connect(port, "127.0.0.1", first.port)
            self.assertEqual(reply, 0)
            exchange(sock, rounds=1, size=size)
            sock.close()
        for _ in range(2):
            sock, reply = socks5Connect(port, "localhost", second.port)
            self.assertEqual(reply, 0)
            sock.sendall(b"u" * 500)
            recvExactly(sock, 500)
            sock.close()
        self.assertEqual(code(port, "127.0.0.1", closed), 0x05)
        for _ in range(2):
            self.assertEqual(code(port, "127.0.0.1", forbidden.port), 0x02)

        def settled() -> Samples | None:
            samples = scrape(connector.get("/metrics")[1])
            done = value(samples, "incident_connector_streams_active") == 0
            return samples if done and value(samples, "incident_connector_streams_total", result="ok") == 5 else None

        samples = waitFor(settled, 10, "eight streams to end")
        streams = "incident_connector_rule_streams_total"
        self.assertEqual(value(samples, streams, rule=byAddress, result="ok"), 3)
        self.assertEqual(value(samples, streams, rule=byName, result="ok"), 2)
        self.assertEqual(value(samples, streams, rule=anyHost, result="refused"), 1)
        self.assertEqual(value(samples, streams, rule="none", result="denied"), 2)
        bytes_ = "incident_connector_rule_bytes_total"
        for direction in ("up", "down"):
            self.assertEqual(value(samples, bytes_, rule=byAddress, direction=direction), 32100)
            self.assertEqual(value(samples, bytes_, rule=byName, direction=direction), 1000)
            self.assertEqual(value(samples, bytes_, rule="none", direction=direction), 0)
        dials = "incident_connector_rule_dial_seconds_count"
        self.assertEqual(value(samples, dials, rule=byAddress), 3)
        self.assertEqual(value(samples, dials, rule=byName), 2)
        self.assertEqual(value(samples, dials, rule=anyHost), 0)
        failures = "incident_connector_dial_failures_total"
        self.assertEqual(value(samples, failures, rule=anyHost, reason="refused"), 1)
        self.assertEqual(
            sum(v for (name, _labels), v in samples.items() if name == failures), 1, "no other dial failed"
        )
        self.assertEqual(value(samples, "incident_connector_allowlist_rules"), 3)
        rules = {dict(labels).get("rule") for (name, labels) in samples if name.startswith("incident_connector_rule_")}
        self.assertEqual(rules, {byAddress, byName, anyHost, "none"})


def socks5Raw(port: int, host: bytes, destination: int) -> tuple[socket.socket, int]:
    """
    A SOCKS5 CONNECT with the host's bytes exactly as given.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"\x05\x01\x00")
    assert recvExactly(sock, 2) == b"\x05\x00"
    sock.sendall(b"\x05\x01\x00\x03" + bytes([len(host)]) + host + destination.to_bytes(2, "big"))
    return sock, recvExactly(sock, 10)[1]


class AuditTests(TunnelTestCase):
    def audit(self, path: Path, count: int) -> list[dict[str, Any]]:
        def written() -> list[dict[str, Any]] | None:
            lines = path.read_text().splitlines() if path.exists() else []
            return [json.loads(line) for line in lines] if len(lines) >= count else None

        records = waitFor(written, 10, f"{count} audit records")
        self.assertEqual(len(records), count)
        return records  # type: ignore[no-any-return]

    def test_everyField(self) -> None:
        """
        Allowed, denied, DNS failure, refused, half-closed and a hostile
        host: every field of every record, against what the client did.
        """

        def countThenAnswer(sock: socket.socket) -> None:
            sock.sendall(b"got %d" % len(recvAll(sock)))

        server = self.target(echo)
        halfClose = self.target(countThenAnswer)
        closed = closedPort()
        path = self.dir / "audit.jsonl"
        rules = [f"localhost:{server.port}", f"127.0.0.1:{closed}", "*.invalid:80", f"127.0.0.1:{halfClose.port}"]
        connector = self.startConnector("--forward-dest-allowlist", " ".join(rules), "--audit-log", str(path))
        port = connector.allocatedPort()
        started = time.time()
        clients: list[int] = []

        sock, reply = socks5Connect(port, "localhost", server.port)
        clients.append(sock.getsockname()[1])
        self.assertEqual(reply, 0)
        sock.sendall(b"0123456789")
        recvExactly(sock, 10)
        sock.close()
        self.audit(path, 1)  # one at a time: records come in this order

        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        clients.append(sock.getsockname()[1])
        sock.sendall(b"\x04\x01" + server.port.to_bytes(2, "big") + b"\x00\x00\x00\x01\x00Denied.Example\x00")
        self.assertEqual(recvExactly(sock, 8)[1], 0x5B)
        sock.close()
        self.audit(path, 2)

        sock, reply = socks5Connect(port, "nothing-here.invalid", 80)
        clients.append(sock.getsockname()[1])
        self.assertEqual(reply, 0x04)
        sock.close()
        self.audit(path, 3)

        sock, reply = socks5Connect(port, "127.0.0.1", closed)
        clients.append(sock.getsockname()[1])
        self.assertEqual(reply, 0x05)
        sock.close()
        self.audit(path, 4)

        sock, reply = socks5Connect(port, "127.0.0.1", halfClose.port)
        clients.append(sock.getsockname()[1])
        sock.sendall(b"h" * 5000)
        sock.shutdown(socket.SHUT_WR)
        self.assertEqual(recvAll(sock), b"got 5000")
        sock.close()
        self.audit(path, 5)

        hostile = "bad\x00name\n\u00e9"
        sock, reply = socks5Raw(port, hostile.encode("latin-1"), 80)
        clients.append(sock.getsockname()[1])
        self.assertEqual(reply, 0x04)
        sock.close()
        records = self.audit(path, 6)
        ended = time.time()

        common = {"v": 1, "connection": "", "originator_host": "127.0.0.1"}
        expected: list[dict[str, Any]] = [
            {"socks_version": 5, "requested_host": "localhost", "requested_port": server.port,
             "normalized": "localhost", "dialled": f"127.0.0.1:{server.port}", "rule": rules[0],
             "verdict": "allow", "reply": 0, "bytes_up": 10, "bytes_down": 10, "result": "ok"},
            {"socks_version": 4, "requested_host": "Denied.Example", "requested_port": server.port,
             "normalized": "denied.example", "addresses": [], "dialled": None, "rule": None, "verdict": "deny",
             "reply": 0x5B, "bytes_up": 0, "bytes_down": 0, "result": "denied"},
            {"socks_version": 5, "requested_host": "nothing-here.invalid", "requested_port": 80,
             "normalized": "nothing-here.invalid", "addresses": [], "dialled": None, "rule": "*.invalid:80",
             "verdict": "allow", "reply": 4, "bytes_up": 0, "bytes_down": 0, "result": "dns_error"},
            {"socks_version": 5, "requested_host": "127.0.0.1", "requested_port": closed, "normalized": "127.0.0.1",
             "addresses": [], "dialled": None, "rule": rules[1], "verdict": "allow", "reply": 5, "bytes_up": 0,
             "bytes_down": 0, "result": "refused"},
            {"socks_version": 5, "requested_host": "127.0.0.1", "requested_port": halfClose.port,
             "normalized": "127.0.0.1", "addresses": [], "dialled": f"127.0.0.1:{halfClose.port}",
             "rule": rules[3], "verdict": "allow", "reply": 0, "bytes_up": 5000, "bytes_down": 8, "result": "ok"},
            {"socks_version": 5, "requested_host": hostile, "requested_port": 80, "normalized": None,
             "addresses": [], "dialled": None, "rule": None, "verdict": None, "reply": 4, "bytes_up": 0,
             "bytes_down": 0, "result": "bad_request"},
        ]  # fmt: skip
        for record, fields, client in zip(records, expected, clients, strict=True):
            self.assertEqual(list(record), [*_FIELDS])
            self.assertEqual({k: record[k] for k in fields}, fields)
            self.assertEqual({k: record[k] for k in common}, common)
            self.assertEqual(record["originator_port"], client, "the client's own port, as sshd reported it")
            start, end = (
                datetime.fromisoformat(record[k].replace("Z", "+00:00")).timestamp() for k in ("start", "end")
            )
            self.assertTrue(started - 1 <= start <= end <= ended + 1, record)
            self.assertAlmostEqual(record["duration"], end - start, places=5)
            self.assertRegex(record["id"], r"^[0-9a-f]{8}-\d+$")
        self.assertIn("127.0.0.1", records[0]["addresses"])
        self.assertEqual(len({record["id"] for record in records}), 6)
        raw = path.read_bytes()
        self.assertTrue(raw.isascii())
        self.assertIn(b'"requested_host":"bad\\u0000name\\n\\u00e9"', raw)

    def test_readOnlyPathKeepsTheTunnel(self) -> None:
        """
        An audit path that cannot be written: one line, a counter, and every
        stream still goes through.
        """
        server = self.target(echo)
        path = self.dir / "audit.jsonl"
        path.write_text("")
        readOnly(self, path)
        connector = self.startConnector("--audit-log", str(path))
        port = connector.allocatedPort()
        for _ in range(3):
            sock, reply = socks5Connect(port, "127.0.0.1", server.port)
            self.assertEqual(reply, 0)
            exchange(sock, rounds=1)
            sock.close()

        def counted() -> Samples | None:
            samples = scrape(connector.get("/metrics")[1])
            return samples if value(samples, "incident_connector_audit_write_errors_total") == 3 else None

        samples = waitFor(counted, 10, "three lost records counted")
        self.assertEqual(value(samples, "incident_connector_streams_total", result="ok"), 3)
        self.assertEqual(len(re.findall(rf"audit log {re.escape(str(path))}: ", connector.text())), 1)
        self.assertEqual(path.read_text(), "")

    def test_reopenedOnSighup(self) -> None:
        """
        logrotate moves the file and sends SIGHUP: records go to a new file.
        """
        server = self.target(echo)
        path = self.dir / "audit.jsonl"
        connector = self.startConnector("--audit-log", str(path))
        port = connector.allocatedPort()
        self.assertEqual(code(port, "127.0.0.1", server.port), 0)
        self.audit(path, 1)
        os.rename(path, self.dir / "audit.jsonl.1")
        mark = len(connector.text())
        connector.signal(signal.SIGHUP)
        connector.waitForLog("SIGHUP: reopening the audit log", after=mark)
        self.assertEqual(code(port, "127.0.0.1", server.port), 0)
        self.assertEqual(len(self.audit(path, 1)), 1)
        self.assertEqual(len((self.dir / "audit.jsonl.1").read_text().splitlines()), 1)


def readOnly(test: TunnelTestCase, path: Path) -> None:
    """
    Make C{path} unwritable, even for root (who ignores permission bits).
    """
    path.chmod(0o444)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
        test.addCleanup(subprocess.run, ["chattr", "-i", str(path)], check=True)
    try:
        os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError:
        return
    raise AssertionError(f"{path} is still writable")


class DestinationsTests(TunnelTestCase):
    def test_suggestedAllowlist(self) -> None:
        """
        The suggested allowlist, fed back as the allowlist file, allows the
        traffic seen and nothing else.
        """
        byName = self.target(echo)
        byAddress = self.target(echo)
        closed = closedPort()
        first = self.startConnector()  # no list: everything allowed
        port = first.allocatedPort()
        for host, destination in [("localhost", byName.port), ("127.0.0.1", byAddress.port)] * 2:
            sock, reply = socks5Connect(port, host, destination)
            self.assertEqual(reply, 0)
            exchange(sock, rounds=1, size=1000)
            sock.close()
        self.assertEqual(code(port, "127.0.0.1", closed), 0x05)

        def seen() -> dict[str, Any] | None:
            document = json.loads(first.get("/destinations")[1])
            return document if len(document["destinations"]) == 3 else None

        document = waitFor(seen, 10, "three destinations")
        entries = {d["entry"]: d for d in document["destinations"]}
        self.assertEqual(
            {k: v for k, v in entries[f"localhost:{byName.port}"].items() if k not in ("first_seen", "last_seen")},
            {"host": "localhost", "port": byName.port, "entry": f"localhost:{byName.port}",
             "verdicts": {"allow": 2}, "connected": 2, "bytes_up": 2000, "bytes_down": 2000, "rules": ["any"]},
        )  # fmt: skip
        self.assertEqual(entries[f"127.0.0.1:{closed}"]["connected"], 0)

        result = subprocess.run(
            [
                *consoleScript("incident-connector"),
                "suggest-allowlist",
                "--url",
                f"http://127.0.0.1:{first.metricsPort}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = [line for line in result.stdout.splitlines() if not line.startswith("#")]
        self.assertEqual(
            [line.split("#")[0].strip() for line in lines], [f"127.0.0.1:{byAddress.port}", f"localhost:{byName.port}"]
        )
        for line in lines:
            self.assertRegex(line, r"# 2 allowed, 2 connected, 2000 bytes up, 2000 bytes down, last seen 20\d\d-")
        first.stop()

        path = self.dir / "suggested"
        path.write_text(result.stdout)
        second = self.startConnector("--forward-dest-allowlist-file", str(path))
        port = second.allocatedPort(after=0)
        self.assertEqual(code(port, "localhost", byName.port), 0)
        self.assertEqual(code(port, "127.0.0.1", byAddress.port), 0)
        self.assertEqual(code(port, "127.0.0.1", closed), 0x02)
        self.assertEqual(code(port, "127.0.0.1", byName.port), 0x02)  # the name was allowed, not its address
        self.assertEqual(code(port, "localhost", closed), 0x02)

    def test_suggestUnreachable(self) -> None:
        result = subprocess.run(
            [*consoleScript("incident-connector"), "suggest-allowlist", "--url", f"http://127.0.0.1:{closedPort()}"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )
        self.assertEqual(result.returncode, 1)
        self.assertRegex(
            result.stderr.strip(), r"^incident-connector: cannot read http://127\.0\.0\.1:\d+/destinations: .*refused"
        )


class FileCheckTests(TunnelTestCase):
    def test_checkReadsTheFileAsTheServiceDoes(self) -> None:
        server = self.target(echo)
        path = self.dir / "allowlist"
        path.write_text(f"# databases\n127.0.0.1:{server.port}  *:443\n")
        result = self.check(*self.connectorArgs(), "--forward-dest-allowlist-file", str(path))
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertRegex(
            result.stdout, rf"ok    allowlist file {re.escape(str(path))}: 2 entries \(sha256:[0-9a-f]{{64}}\)"
        )
        self.assertIn(f"ok    destination 127.0.0.1:{server.port} reachable", result.stdout)

        path.write_text(f"127.0.0.1:{server.port}\n\n*:4430000\n")
        expected = (
            f"incident-connector: error: --forward-dest-allowlist-file '{path}': line 3: allowlist entry "
            "'*:4430000': port '4430000' is not 1-65535, a range LOW-HIGH or '*'"
        )
        result = self.check(*self.connectorArgs(), "--forward-dest-allowlist-file", str(path))
        self.assertEqual((result.returncode, result.stdout, result.stderr.splitlines()), (2, "", [expected]))
        service = Connector(self.dir / "service", [*self.connectorArgs(), "--forward-dest-allowlist-file", str(path)])
        service.start()
        self.addCleanup(service.stop)
        self.assertEqual(service.wait(), 2)
        self.assertEqual(service.text().splitlines(), [expected])


_FIELDS = (
    "v", "id", "start", "end", "duration", "connection", "originator_host", "originator_port", "socks_version",
    "requested_host", "requested_port", "normalized", "addresses", "dialled", "rule", "verdict", "reply", "bytes_up",
    "bytes_down", "result",
)  # fmt: skip
