"""
Staying connected under injected faults, with a real sshd relay.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import threading
import time

from .harness import MiB, Target, TunnelTestCase, echo, http200, recvAll, recvExactly, rss, socks5Connect, waitFor

FAST = ["--reconnect-initial-delay", "0.1", "--reconnect-max-delay", "0.5"]


class ReconnectTests(TunnelTestCase):
    def test_relayRestart(self) -> None:
        """
        The relay dies and comes back on the same port: a new forward, and
        streams work again.
        """
        http = self.target(http200)
        connector = self.startConnector(*FAST)
        connector.allocatedPort()
        mark = len(connector.text())
        self.relay.stop()
        connector.waitForLog("connection lost after", after=mark)
        self.relay.start()
        port = connector.allocatedPort(after=mark)
        result = self.curl(port, f"http://127.0.0.1:{http.port}/")
        self.assertEqual(result.stdout, "hello from the private network\n")

    def test_hostKeyChangedOnRestart(self) -> None:
        """
        A relay that comes back with another host key is refused before any
        authentication is attempted.
        """
        connector = self.startConnector(*FAST)
        connector.allocatedPort()
        self.relay.stop()
        self.relay.newHostKey()
        logMark = len(self.relay.log.read_text())
        mark = len(connector.text())
        self.relay.start()
        first = connector.waitForLog("host key verification failed: .*differs from the one in known_hosts", after=mark)
        # And again after a retry: refused every time, never let in.
        retry = connector.waitForLog("retrying relay", after=mark + first.end())
        connector.waitForLog("host key verification failed", after=mark + first.end() + retry.end())
        self.assertNotIn("Allocated port", connector.text()[mark:])
        self.assertNotIn("publickey", self.relay.log.read_text()[logMark:])

    def test_frozenRelay(self) -> None:
        """
        A relay that answers nothing (SIGSTOP) is noticed by keepalives within
        interval x (count + 1), and the tunnel comes back once it thaws.
        """
        interval, count = 0.5, 2
        connector = self.startConnector(*FAST, "--keepalive-interval", str(interval), "--keepalive-count", str(count))
        connector.allocatedPort()
        mark = len(connector.text())
        self.relay.freeze()
        frozenAt = time.monotonic()
        connector.waitForLog("relay did not answer 2 keepalives", after=mark)
        noticed = time.monotonic() - frozenAt
        # The log poll adds at most a few tens of milliseconds.
        self.assertLess(noticed, interval * (count + 1) + 0.3)
        self.relay.thaw()
        connector.allocatedPort(after=mark)

    def test_forwardRefused(self) -> None:
        """
        A relay that refuses remote forwarding: a clear line per attempt,
        growing delays, and /readyz stays 503.
        """
        self.relay.stop()
        self.relay = type(self.relay)(self.dir / "strict", extraConfig="AllowTcpForwarding no").start()
        self.addCleanup(self.relay.stop)
        connector = self.startConnector("--reconnect-initial-delay", "0.1", "--reconnect-max-delay", "5")
        waitFor(lambda: connector.text().count("refused the remote forward") >= 3, 20, "three refused attempts")
        delays = [float(d) for d in __import__("re").findall(r"retrying relay \S+ in ([\d.]+) s", connector.text())]
        self.assertGreaterEqual(len(delays), 2)
        status, body = connector.get("/readyz")
        self.assertEqual(status, 503)
        self.assertIn("refused the remote forward", body)


class DrainTests(TunnelTestCase):
    def test_sigtermDrainsTransfer(self) -> None:
        """
        SIGTERM during a 64 MiB download: no new streams are taken, the
        transfer completes byte-exact, then the process exits 0.
        """
        payload = os.urandom(MiB) * 64

        def source(sock: socket.socket) -> None:
            sock.sendall(payload)

        server = self.target(source)
        connector = self.startConnector("--grace-period", "60")
        port = connector.allocatedPort()
        sock, code = socks5Connect(port, "127.0.0.1", server.port, timeout=60)
        self.assertEqual(code, 0)
        first = recvExactly(sock, MiB)
        connector.signal(signal.SIGTERM)
        connector.waitForLog("draining 1 open streams")
        rest = recvAll(sock)
        sock.close()
        self.assertEqual(hashlib.sha256(first + rest).digest(), hashlib.sha256(payload).digest())
        self.assertEqual(connector.wait(30), 0)

    def test_drainRefusesNewStreams(self) -> None:
        server = self.target(echo)
        connector = self.startConnector("--grace-period", "60")
        port = connector.allocatedPort()
        sock, _ = socks5Connect(port, "127.0.0.1", server.port)
        connector.signal(signal.SIGTERM)
        connector.waitForLog("draining 1 open streams")

        def refused() -> bool:
            try:
                socks5Connect(port, "127.0.0.1", server.port, timeout=5)[0].close()
                return False
            except (OSError, AssertionError):
                return True

        waitFor(refused, 10, "the relay to stop accepting for us")
        sock.sendall(b"still here")
        self.assertEqual(recvExactly(sock, 10), b"still here")
        sock.close()
        self.assertEqual(connector.wait(30), 0)

    def test_secondSignalExitsAtOnce(self) -> None:
        server = self.target(echo)
        connector = self.startConnector("--grace-period", "600")
        port = connector.allocatedPort()
        sock, _ = socks5Connect(port, "127.0.0.1", server.port)
        self.addCleanup(sock.close)
        connector.signal(signal.SIGTERM)
        connector.waitForLog("draining 1 open streams")
        connector.signal(signal.SIGTERM)
        self.assertEqual(connector.wait(10), 1)
        self.assertIn("during drain: exiting now", connector.text())

    def test_gracePeriodEnds(self) -> None:
        server = self.target(echo)
        connector = self.startConnector("--grace-period", "1")
        port = connector.allocatedPort()
        sock, _ = socks5Connect(port, "127.0.0.1", server.port)
        self.addCleanup(sock.close)
        started = time.monotonic()
        connector.signal(signal.SIGTERM)
        self.assertEqual(connector.wait(20), 0)
        self.assertLess(time.monotonic() - started, 10)


class LimitTests(TunnelTestCase):
    def test_maxStreams(self) -> None:
        """
        With --max-streams 5, ten concurrent streams: five served, five
        refused, and the connector serves again once they end.
        """
        server = self.target(echo)
        connector = self.startConnector("--max-streams", "5")
        port = connector.allocatedPort()
        outcomes: list[bool] = []
        barrier = threading.Barrier(10, timeout=30)
        opened: list[socket.socket] = []

        def client() -> None:
            try:
                sock, code = socks5Connect(port, "127.0.0.1", server.port, timeout=10)
                opened.append(sock)
                ok = code == 0
            except (OSError, AssertionError):
                ok = False
            barrier.wait()
            outcomes.append(ok)

        # Open five first so the limit, not timing, decides who is refused.
        threads = [threading.Thread(target=client) for _ in range(10)]
        for thread in threads[:5]:
            thread.start()
        waitFor(lambda: len(opened) == 5, 10, "five streams open")
        for thread in threads[5:]:
            thread.start()
        for thread in threads:
            thread.join(30)
        self.assertEqual((outcomes.count(True), outcomes.count(False)), (5, 5))
        # Counted every time, logged once: refusals repeat at the relay's will.
        self.assertEqual(connector.text().count("refused a stream"), 1)
        self.assertIn('incident_connector_streams_total{result="limit"} 5.0', connector.get("/metrics")[1])
        for sock in opened:
            sock.close()

        def servesAgain() -> bool:
            try:
                sock, code = socks5Connect(port, "127.0.0.1", server.port, timeout=5)
            except (OSError, AssertionError):
                return False
            sock.close()
            return code == 0

        waitFor(servesAgain, 10, "a stream once the others ended")

    def test_idleTimeout(self) -> None:
        """
        An idle stream is closed; a busy one is not.
        """
        server = self.target(echo)
        connector = self.startConnector("--stream-idle-timeout", "1")
        port = connector.allocatedPort()
        idle, _ = socks5Connect(port, "127.0.0.1", server.port)
        busy, _ = socks5Connect(port, "127.0.0.1", server.port)
        idle.settimeout(10)
        started = time.monotonic()
        while time.monotonic() - started < 2.5:
            busy.sendall(b"tick")
            self.assertEqual(recvExactly(busy, 4), b"tick")
            time.sleep(0.2)  # the traffic pattern under test, not a wait
        self.assertEqual(recvAll(idle), b"")
        busy.sendall(b"still")
        self.assertEqual(recvExactly(busy, 5), b"still")
        connector.waitForLog(r"idle for \d+ s: closing")
        idle.close()
        busy.close()

    def test_stalledReaderMemory(self) -> None:
        """
        256 MiB offered while the client reads nothing for 5 s: the windows
        hold the data back and the connector's RSS grows by less than 16 MiB.
        """
        chunk = os.urandom(MiB)
        stop = threading.Event()

        def firehose(sock: socket.socket) -> None:
            for _ in range(256):
                if stop.is_set():
                    return
                sock.sendall(chunk)

        server = Target(firehose)
        self.addCleanup(server.close)
        self.addCleanup(stop.set)
        connector = self.startConnector()
        port = connector.allocatedPort()
        assert connector.process is not None
        sock, code = socks5Connect(port, "127.0.0.1", server.port, timeout=30)
        self.assertEqual(code, 0)
        self.addCleanup(sock.close)
        before = rss(connector.process.pid)
        time.sleep(5)  # the client not reading is the scenario itself
        grown = rss(connector.process.pid) - before
        self.assertLess(grown, 16 * MiB, f"RSS grew by {grown / MiB:.1f} MiB")
        # And the stream still works: the next bytes are the right ones.
        self.assertEqual(recvExactly(sock, MiB), chunk)
