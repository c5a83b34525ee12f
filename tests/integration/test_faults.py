"""
The connector and a real sshd with the fault proxy between them: a slow but
healthy link (where the windows shrink to what it carries), a black hole, a
relay that accepts and never speaks, resets and refusals.  Each fault is one
the field has shown; the connector must keep a healthy tunnel, notice a dead
one, and come back once the fault is gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from typing import Any

from .faultproxy import FaultProxy, NewConnections
from .harness import Connector, MiB, TunnelTestCase, echo, recvAll, recvExactly, socks5Connect, waitFor

FAST = ["--reconnect-initial-delay", "0.1", "--reconnect-max-delay", "0.5"]


class FaultTests(TunnelTestCase):
    """
    An sshd relay (from L{TunnelTestCase}), reached only through a
    L{FaultProxy}.
    """

    def throughProxy(self, *extra: str) -> tuple[FaultProxy, Connector]:
        proxy, connector = self.throughFaultProxy(*FAST, *extra)
        self.proxy = proxy
        return proxy, connector

    def assertStreamWorks(self, port: int) -> None:
        server = self.target(echo)
        sock, code = socks5Connect(port, "127.0.0.1", server.port, timeout=20)
        self.addCleanup(sock.close)
        sock.sendall(b"ping")
        self.assertEqual((code, recvExactly(sock, 4)), (0, b"ping"))

    def test_slowLinkIsNotDead(self) -> None:
        """
        A 256 KiB/s link carrying a download: the keepalive waits behind
        the channel data queued for the relay, yet the relay is plainly
        alive (its window adjustments keep coming), so the connection is kept.
        """
        payload = os.urandom(MiB) * 3

        def source(sock: socket.socket) -> None:
            sock.sendall(payload)

        proxy, connector = self.throughProxy("--keepalive-interval", "1", "--keepalive-count", "2")
        port = connector.allocatedPort()
        server = self.target(source)
        proxy.setRate(256 * 1024)
        sock, code = socks5Connect(port, "127.0.0.1", server.port, timeout=60)
        self.assertEqual(code, 0)
        received = recvAll(sock)
        sock.close()
        text = connector.text()
        self.assertNotIn("keepalives", text, "a slow but live link was taken for a dead one")
        self.assertEqual(hashlib.sha256(received).digest(), hashlib.sha256(payload).digest())
        self.assertEqual(text.count("Allocated port"), 1)

    def test_slowLinkShrinksTheWindows(self) -> None:
        """
        Uploads filling a 256 KiB/s link: sshd would queue our full 2 MiB
        window per stream in front of every other byte it sends us, so the
        connector gives channels less window once the relay's answers come
        late (/readyz shows it), and the uploads still arrive whole.
        """
        payload = os.urandom(MiB)
        digests: list[bytes] = []

        def sink(sock: socket.socket) -> None:
            digests.append(hashlib.sha256(recvAll(sock)).digest())

        proxy, connector = self.throughProxy()
        port = connector.allocatedPort()
        server = self.target(sink)

        def status() -> dict[str, Any]:
            return json.loads(connector.get("/readyz")[1])["connections"][0]  # type: ignore[no-any-return]

        full = status()["receive_window"]
        proxy.setRate(256 * 1024)
        outcomes: list[object] = []  # each upload's SOCKS reply code, or what it raised

        def upload() -> None:
            try:
                sock, code = socks5Connect(port, "127.0.0.1", server.port, timeout=60)
                with sock:
                    sock.sendall(payload)
                outcomes.append(code)
            except OSError as e:
                outcomes.append(e)

        uploads = [threading.Thread(target=upload, daemon=True) for _ in range(3)]
        for thread in uploads:
            thread.start()
        waitFor(lambda: status()["receive_window"] < full, 60, "a smaller receive window in /readyz")
        waitFor(lambda: len(outcomes) == 3, 120, "three uploads sent")
        self.assertEqual(outcomes, [0, 0, 0])
        waitFor(lambda: len(digests) == 3, 120, "three uploads delivered")
        self.assertEqual(digests, [hashlib.sha256(payload).digest()] * 3)
        self.assertGreater(status()["round_trip_ms"], 0)

    def test_blackHole(self) -> None:
        """
        A link that forwards nothing is noticed by keepalives within
        interval x (count + 1); once it carries traffic again, so does the tunnel.
        """
        interval, count = 0.5, 2
        proxy, connector = self.throughProxy("--keepalive-interval", str(interval), "--keepalive-count", str(count))
        connector.allocatedPort()
        mark = len(connector.text())
        proxy.setBlackHole()
        started = time.monotonic()
        connector.waitForLog("relay did not answer", after=mark)
        self.assertLess(time.monotonic() - started, interval * (count + 1) + 1)
        proxy.setBlackHole(False)
        port = connector.allocatedPort(timeout=30, after=mark)
        self.assertStreamWorks(port)

    def test_silentRelay(self) -> None:
        """
        A relay that accepts the TCP connection and never says a word: the
        connector gives up on it after its timeout, with a line, and tries
        again; once the relay answers, the tunnel comes up.
        """
        proxy, connector = self.throughProxy("--connect-timeout", "2")
        proxy.setNewConnections(NewConnections.SILENT)
        connector.waitForLog("connecting to relay")
        try:
            waitFor(lambda: connector.text().count("connecting to relay") >= 2, 20, "a second attempt")
        except AssertionError:
            self.fail(f"the connector waits forever on a relay that never speaks:\n{connector.text()[-1500:]}")
        text = connector.text()
        first = text.index("connecting to relay")
        between = text[first : text.index("connecting to relay", first + 1)]
        self.assertRegex(between, r"relay 127\.0\.0\.1:\d+: .+", "no line saying why the attempt failed")
        proxy.passThrough()
        self.assertStreamWorks(connector.allocatedPort(timeout=30))

    def test_resetDuringTransfer(self) -> None:
        """
        The relay connection is reset in the middle of a download: the
        SOCKS client's stream ends (it does not hang), the connector logs
        the loss once, without a traceback, and reconnects.
        """
        chunk = os.urandom(MiB)

        def endless(sock: socket.socket) -> None:
            while True:
                sock.sendall(chunk)

        proxy, connector = self.throughProxy()
        port = connector.allocatedPort()
        server = self.target(endless)
        sock, code = socks5Connect(port, "127.0.0.1", server.port, timeout=30)
        self.addCleanup(sock.close)
        self.assertEqual(code, 0)
        recvExactly(sock, 4 * MiB)
        mark = len(connector.text())
        proxy.resetAll()
        try:
            while sock.recv(1 << 20):
                pass
        except OSError:
            pass  # a reset reaching the client is as good as an end
        connector.waitForLog("connection lost after", after=mark)
        self.assertStreamWorks(connector.allocatedPort(timeout=30, after=mark))
        self.assertNotIn("Traceback", connector.text())

    def test_refusedThenBack(self) -> None:
        """
        A relay port that refuses connections: one line per attempt, with
        growing delays; when it listens again, the tunnel is back.
        """
        proxy, connector = self.throughProxy("--reconnect-initial-delay", "0.2", "--reconnect-max-delay", "2")
        proxy.setNewConnections(NewConnections.REFUSE)
        waitFor(lambda: connector.text().count("cannot reach relay") >= 3, 20, "three refused attempts")
        self.assertNotIn("Traceback", connector.text())
        proxy.passThrough()
        self.assertStreamWorks(connector.allocatedPort(timeout=30))
