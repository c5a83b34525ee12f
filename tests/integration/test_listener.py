"""
The metrics and health listener of a real connector process, over real
sockets on loopback: a huge body is refused without touching the disk, idle
connections are closed, the connection cap holds the process's descriptors,
and scraping still works.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import tempfile
import threading
import time

from .harness import REPO, MiB, TunnelTestCase, waitFor

REQUEST_413 = b"HTTP/1.1 413 "


def openDescriptors(pid: int) -> list[str]:
    """
    Where each open descriptor of process C{pid} points.
    """
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed meanwhile
            pass
    return targets


def spoolFiles(pid: int) -> list[str]:
    """
    Descriptors of C{pid} on temporary files: C{tempfile.TemporaryFile} shows
    as C{/tmp/#123 (deleted)}.
    """
    tmp = tempfile.gettempdir()
    # The checkout itself may live under /tmp (CI clones there): its files,
    # the connector's own log included, are not spooled bodies.
    return [
        t
        for t in openDescriptors(pid)
        if (t.startswith(tmp) and not t.startswith(str(REPO))) or t.endswith("(deleted)")
    ]


def isClosed(sock: socket.socket) -> bool:
    """
    Whether the peer closed C{sock} (without blocking).
    """
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:  # reset
        return True


class ListenerTests(TunnelTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.connector = self.startConnector()
        self.connector.allocatedPort()
        self.pid = self.connector.process.pid  # type: ignore[union-attr]

    def dial(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.connector.metricsPort), timeout=10)
        self.addCleanup(sock.close)
        return sock

    def test_hugeBodyRefusedWithoutSpooling(self) -> None:
        """
        A POST announcing 300 MiB gets 413 from its headers alone; pushing the
        body anyway fails early, and the connector never opens a temporary file.
        """
        sock = self.dial()
        sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (300 * MiB))
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        self.assertTrue(answer.startswith(REQUEST_413), answer)
        seen: list[str] = []
        sent = 0
        done = threading.Event()

        def push() -> None:
            nonlocal sent
            chunk = b"\0" * MiB
            try:
                while sent < 300 * MiB:
                    sock.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass
            done.set()

        threading.Thread(target=push, daemon=True).start()
        while not done.wait(0.01):
            seen.extend(spoolFiles(self.pid))
        seen.extend(spoolFiles(self.pid))
        self.assertEqual(seen, [])
        self.assertLess(sent, 16 * MiB)
        self.assertEqual(self.connector.get("/healthz")[0], 200)

    def test_chunkedBodyRefused(self) -> None:
        result = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", "Transfer-Encoding: chunked",
             "--data-binary", "@-", f"http://127.0.0.1:{self.connector.metricsPort}/healthz"],
            input=b"x" * (2 * MiB), capture_output=True, timeout=30,
        )  # fmt: skip
        self.assertEqual(result.stdout, b"413")
        self.assertEqual(spoolFiles(self.pid), [])

    def test_methods(self) -> None:
        """
        GET and HEAD are served (Prometheus, probes); anything else gets 405,
        before any resource sees it.
        """
        base = f"http://127.0.0.1:{self.connector.metricsPort}"

        def code(*args: str) -> str:
            result = subprocess.run(
                ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", *args], capture_output=True, text=True,
                timeout=30,
            )  # fmt: skip
            return result.stdout

        self.assertEqual(code(f"{base}/metrics"), "200")
        self.assertEqual(code("-I", f"{base}/healthz"), "200")
        # prometheus_client's own application serves GET only.
        self.assertEqual(code("-I", f"{base}/metrics"), "405")
        self.assertEqual(code("-X", "POST", "--data", "x=1", f"{base}/metrics"), "405")
        self.assertEqual(code("-X", "DELETE", f"{base}/healthz"), "405")
        self.assertEqual(code("-X", "PUT", "--data", "x", f"{base}/readyz"), "405")
        status, body = self.connector.get("/metrics")
        self.assertEqual(status, 200)
        self.assertIn("incident_connector_tunnel_up", body)

    def test_idleConnectionsClosed(self) -> None:
        """
        Connections that send nothing, or stop halfway through a request, are
        closed after a few seconds (twisted.web's default is 60).
        """
        silent = [self.dial() for _ in range(5)]
        halfway = [self.dial() for _ in range(5)]
        for sock in halfway:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        waitFor(lambda: all(isClosed(s) for s in silent + halfway), 20, "idle connections to be closed")
        self.assertGreater(time.monotonic() - started, 2)

    def test_connectionCapHoldsDescriptors(self) -> None:
        """
        300 idle connections: the connector holds at most 64 of them (each
        new one past 64 aborts the oldest) and logs that once; scraping works again once
        the idle ones are gone, and the descriptors are given back.
        """
        baseline = len(openDescriptors(self.pid))
        socks = [self.dial() for _ in range(300)]
        waitFor(lambda: sum(isClosed(s) for s in socks) >= 300 - 64, 20, "the surplus connections to be closed")
        held = len(openDescriptors(self.pid)) - baseline
        self.assertLessEqual(held, 64 + 2)
        self.connector.waitForLog(r"metrics listener: 64 connections open, closing the oldest for new ones")
        waitFor(lambda: self.connector.get("/healthz")[0] == 200, 20, "/healthz to answer again")
        self.assertEqual(self.connector.text().count("connections open, closing the oldest"), 1)
        waitFor(lambda: len(openDescriptors(self.pid)) <= baseline + 1, 20, "descriptors to be given back")
