"""
Never stranded, and never dropped while alive: a real sshd (or Dropbear)
relay behind the fault proxy.  A relay path that accepts and stays silent is
abandoned after --setup-timeout and retried until it heals; a slow but moving
link is never taken for a dead one; readiness tells the truth throughout; and
every failure is counted under its reason, on its connection.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time

from .faultproxy import FaultProxy, NewConnections
from .harness import Connector, MiB, TunnelTestCase, recvAll, socks5Connect, waitFor
from .relays import DropbearRelay

FAST = ["--reconnect-initial-delay", "0.2", "--reconnect-max-delay", "1"]


def counter(metrics: str, name: str, **labels: str) -> float:
    """
    The value of one sample in Prometheus text, 0 if absent.
    """
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in metrics.splitlines():
        if line.startswith(name + "{"):
            inside = line[len(name) + 1 : line.index("}")]
            if ",".join(sorted(inside.split(","))) == wanted:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


class LivenessTests(TunnelTestCase):
    def throughProxy(self, *extra: str) -> tuple[FaultProxy, Connector]:
        return self.throughFaultProxy(*FAST, *extra)  # type: ignore[no-any-return]

    def test_silentRelayPathHeals(self) -> None:
        """
        The path accepts TCP and says nothing for 8 s: each attempt is given
        up after --setup-timeout and counted as setup_timeout; /readyz shows
        the attempt under way; once the path heals the tunnel is up within
        one backoff period.
        """
        proxy, connector = self.throughProxy("--setup-timeout", "2")
        proxy.setNewConnections(NewConnections.SILENT)
        connector.waitForLog("connecting to relay")
        # While an attempt hangs, /readyz says how far it got and for how long.
        status = waitFor(
            lambda: (lambda s: s if s["connections"][0]["attempt"] else None)(json.loads(connector.get("/readyz")[1])),
            5,
            "an attempt under way in /readyz",
        )
        self.assertEqual(status["status"], "unavailable")
        self.assertIn(status["connections"][0]["attempt"]["phase"], ("connecting", "waiting for the relay's version"))
        waitFor(lambda: connector.text().count("no forward within 2 s") >= 2, 15, "two abandoned attempts")
        proxy.passThrough()
        healed = time.monotonic()
        port = connector.allocatedPort(timeout=10, after=len(connector.text()) - 2000)
        self.assertLess(time.monotonic() - healed, 2 + 1 + 2, "not up within a backoff period and a setup")
        sock, code = socks5Connect(port, "127.0.0.1", self.target(lambda s: s.sendall(b"hi")).port)
        self.assertEqual((code, recvAll(sock)), (0, b"hi"))
        sock.close()
        metrics = connector.get("/metrics")[1]
        self.assertGreaterEqual(
            counter(metrics, "incident_connector_connection_failures_total", connection="0", reason="setup_timeout"), 2
        )

    def test_busySlowLinkIsKept(self) -> None:
        """
        A 1 MiB/s link carrying 8 bulk downloads with keepalives at 2 s x 3:
        the relay is plainly alive (its window adjustments keep coming), so
        nothing is dropped and every download is byte-exact.
        """
        payload = os.urandom(MiB) * 3

        def source(sock: socket.socket) -> None:
            sock.sendall(payload)

        proxy, connector = self.throughProxy("--keepalive-interval", "2", "--keepalive-count", "3")
        port = connector.allocatedPort()
        proxy.setRate(MiB)
        server = self.target(source)
        digests: list[bytes] = []

        def download() -> None:
            sock, code = socks5Connect(port, "127.0.0.1", server.port, timeout=60)
            sock.settimeout(90)
            digests.append(hashlib.sha256(recvAll(sock)).digest() if code == 0 else b"")
            sock.close()

        threads = [threading.Thread(target=download) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        self.assertEqual(digests, [hashlib.sha256(payload).digest()] * 8)
        self.assertEqual(connector.text().count("Allocated port"), 1)
        self.assertNotIn("keepalives", connector.text())

    def test_reasonsAndLabels(self) -> None:
        """
        With --connections 2, a black hole is noticed on both connections,
        counted as keepalive_timeout on each, and every relay line names its
        connection.
        """
        proxy, connector = self.throughProxy(
            "--connections", "2", "--keepalive-interval", "0.5", "--keepalive-count", "2"
        )
        waitFor(lambda: connector.text().count("Allocated port") == 2, 15, "two forwards")
        proxy.setBlackHole()
        waitFor(lambda: connector.text().count("relay did not answer") >= 2, 15, "both connections noticed")
        proxy.setBlackHole(False)
        waitFor(lambda: connector.text().count("Allocated port") >= 4, 30, "both back")
        metrics = connector.get("/metrics")[1]
        failures = "incident_connector_connection_failures_total"
        for index in ("0", "1"):
            self.assertGreaterEqual(
                counter(metrics, failures, connection=index, reason="keepalive_timeout"), 1, metrics
            )
        for line in connector.text().splitlines():
            if "incident_connector.tunnel" in line:
                self.assertRegex(line, r"relay [12]/2", line)


class DropbearReadinessTests(TunnelTestCase):
    """
    Dropbear (which accepted a second ssh-userauth request and swapped the
    connection service away under Conch's client): the connector re-keys with
    it every MiB while streams flow, and /readyz stays true to reality.
    """

    def setUp(self) -> None:
        super().setUp()
        self.relay.stop()
        self.relay = DropbearRelay(self.dir / "dropbear").start()  # type: ignore[assignment]
        self.addCleanup(self.relay.stop)

    def test_readyWhileRekeying(self) -> None:
        connector = self.startConnector(
            "--rekey-limit", "1M", "--keepalive-interval", "0.5", "--keepalive-count", "2", *FAST
        )
        port = connector.allocatedPort()
        payload = os.urandom(MiB) * 24

        def source(sock: socket.socket) -> None:
            sock.sendall(payload)

        server = self.target(source)
        sock, code = socks5Connect(port, "127.0.0.1", server.port, timeout=30)
        self.assertEqual(code, 0)
        received = bytearray()
        answers = set()
        while chunk := sock.recv(1 << 20):
            received += chunk
            answers.add(connector.get("/readyz")[0])
        sock.close()
        self.assertEqual(hashlib.sha256(received).digest(), hashlib.sha256(payload).digest())
        self.assertEqual(answers, {200})
        status = json.loads(connector.get("/readyz")[1])
        self.assertGreaterEqual(status["connections"][0]["rekeys"], 20)
        # Still the one connection, still serving.
        sock, code = socks5Connect(port, "127.0.0.1", self.target(lambda s: s.sendall(b"ok")).port)
        self.assertEqual((code, recvAll(sock)), (0, b"ok"))
        sock.close()
        self.assertEqual(connector.text().count("Allocated port"), 1)
        # And readiness notices when the relay stops answering.
        self.relay.freeze()
        self.addCleanup(self.relay.thaw)
        waitFor(lambda: connector.get("/readyz")[0] == 503, 5, "/readyz turns 503 for a frozen relay")
