"""
File descriptor limits of a real connector process started with a given
C{RLIMIT_NOFILE}: the soft limit is raised to the hard one, and a hard limit
too low for C{--max-streams} lowers it, with one line, so extra streams are
refused cleanly instead of failing with EMFILE.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

from .harness import Connector, TunnelTestCase, echo, recvExactly, socks5Connect, waitFor


def softLimit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no 'Max open files' in /proc/PID/limits")


class DescriptorLimitTests(TunnelTestCase):
    def start(self, limits: tuple[int, int], *extra: str) -> Connector:
        connector = Connector(self.dir / "connector", [*self.connectorArgs(), *extra], descriptorLimits=limits)
        connector.start()
        self.addCleanup(connector.stop)
        return connector

    def test_softLimitRaisedToHard(self) -> None:
        connector = self.start((64, 4096))
        connector.allocatedPort()
        assert connector.process is not None
        self.assertEqual(softLimit(connector.process.pid), (4096, 4096))
        self.assertNotIn("file descriptor limit", connector.text())

    def test_lowHardLimitServesFewerStreams(self) -> None:
        """
        Under a hard limit of 200, --max-streams 1024 cannot fit: one line
        says how many streams will be served; that many work at once, the
        next ones are refused, /healthz keeps answering, and nothing fails
        with EMFILE.
        """
        server = self.target(echo)
        connector = self.start((200, 200), "--max-streams", "1024")
        port = connector.allocatedPort()
        line = connector.waitForLog(
            r"the file descriptor limit \(200\) fits (\d+) streams, not --max-streams 1024: "
            r"serving at most (\d+) \(raise LimitNOFILE, or ulimit -n\)"
        )
        fits = int(line.group(1))
        self.assertEqual(line.group(2), line.group(1))
        self.assertEqual(connector.text().count("file descriptor limit"), 1)
        self.assertGreater(fits, 20)
        streams = []
        for _ in range(fits):
            sock, code = socks5Connect(port, "127.0.0.1", server.port)
            self.addCleanup(sock.close)
            self.assertEqual(code, 0)
            streams.append(sock)
        for sock in streams:
            sock.sendall(b"ping")
            self.assertEqual(recvExactly(sock, 4), b"ping")
        for _ in range(5):
            with self.assertRaises(OSError):
                extra, _code = socks5Connect(port, "127.0.0.1", server.port)
                extra.close()
        # Counted every time, logged at most once a minute.
        waitFor(
            lambda: 'incident_connector_streams_total{result="limit"} 5.0' in connector.get("/metrics")[1],
            10,
            "five refusals counted",
        )
        self.assertEqual(connector.text().count("refused a stream"), 1)
        self.assertIn(f"refused a stream: the --max-streams limit is reached ({fits})", connector.text())
        self.assertEqual(connector.get("/healthz")[0], 200)
        streams.pop().close()
        sock = waitFor(lambda: _tryStream(port, server.port), 10, "a stream once one ended")
        sock.close()
        self.assertIsNone(re.search(r"Too many open files|EMFILE", connector.text()))

    def test_limitTooLowToRun(self) -> None:
        connector = self.start((100, 100))
        self.assertEqual(connector.wait(30), 2)
        lines = [line for line in connector.text().splitlines() if line.strip()]
        self.assertEqual(len([line for line in lines if "error" in line]), 1, lines)
        self.assertRegex(
            connector.text(),
            r"incident-connector: error: the file descriptor limit \(100\) leaves no room for streams: "
            r"it must be at least \d+, and about one more per stream \(raise LimitNOFILE, or ulimit -n\)",
        )


def _tryStream(proxyPort: int, targetPort: int) -> socket.socket | None:
    try:
        sock, code = socks5Connect(proxyPort, "127.0.0.1", targetPort)
    except OSError:
        return None
    if code != 0:
        sock.close()
        return None
    return sock
