"""
The fault proxy the integration tests put between the connector and a relay,
tested against plain loopback sockets: each fault does what it says, and the
proxy stays correct under concurrent bulk streams.  Bounds are generous: the
machine is shared.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.faultproxy import FaultProxy, NewConnections
from tests.integration.harness import MiB, Target, echo, recvAll, recvExactly, waitFor


def sink(sock: socket.socket) -> None:
    """
    Read everything, then answer with its SHA-256 and how long it took from
    the first byte to the last.
    """
    digest = hashlib.sha256()
    first = None
    while data := sock.recv(1 << 16):
        if first is None:
            first = time.monotonic()
        digest.update(data)
    elapsed = time.monotonic() - first if first is not None else 0.0
    sock.sendall(digest.hexdigest().encode() + b" %.6f" % elapsed)


def connectAndRead(port: int) -> bytes:
    """
    Connect and read to the end.  A RST may come before connect() returns
    (on loopback the proxy can accept and reset first), or after.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return recvAll(sock)


class FaultProxyTests(SynchronousTestCase):
    def proxyTo(self, handler: Callable[[socket.socket], None], **kwargs: Any) -> tuple[FaultProxy, Target]:
        target = Target(handler)
        self.addCleanup(target.close)
        proxy = FaultProxy(("127.0.0.1", target.port), **kwargs).start()
        self.addCleanup(proxy.stop)
        return proxy, target

    def connect(self, proxy: FaultProxy, timeout: float = 10) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
        self.addCleanup(sock.close)
        return sock

    def test_passThrough(self) -> None:
        """
        Bytes arrive intact both ways, and a half-close travels through: the
        server sees EOF, answers, and its close reaches the client.
        """
        proxy, _ = self.proxyTo(sink)
        payload = os.urandom(4 * MiB)
        sock = self.connect(proxy)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        digest, _ = recvAll(sock).split()
        self.assertEqual(digest.decode(), hashlib.sha256(payload).hexdigest())
        self.assertEqual(proxy.forwarded["up"], len(payload))
        waitFor(lambda: proxy.openConnections == 0, 5, "the proxied connection to be closed")

    def test_rate(self) -> None:
        """
        Capped at 1 MiB/s, 2 MiB take 2 s (within 20 %) to arrive.
        """
        proxy, _ = self.proxyTo(sink)
        proxy.setRate(MiB)
        payload = os.urandom(2 * MiB)
        sock = self.connect(proxy, timeout=30)
        started = time.monotonic()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        digest, _ = recvAll(sock).split()
        elapsed = time.monotonic() - started
        self.assertEqual(digest.decode(), hashlib.sha256(payload).hexdigest())
        self.assertTrue(1.6 <= elapsed <= 2.4, f"2 MiB at 1 MiB/s took {elapsed:.2f} s")

    def test_rateBoundsItsQueue(self) -> None:
        """
        Behind a slow link the sender's own buffers fill: the proxy takes in
        no more than its queue and socket buffers.
        """
        proxy, _ = self.proxyTo(sink)
        proxy.setRate(16 * 1024)
        sock = socket.socket()
        self.addCleanup(sock.close)
        # A small send buffer of our own, so that what we manage to send is
        # what the proxy (and its kernel buffers) took in.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        sock.connect(("127.0.0.1", proxy.port))
        sock.setblocking(False)
        offered = 0
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            try:
                offered += sock.send(b"x" * 65536)
            except BlockingIOError:
                time.sleep(0.01)  # the traffic pattern: a sender that keeps trying
        # Our send buffer, the proxy's receive buffer and queue, and what the
        # link let through in 1 s: some hundreds of KiB, not the megabytes a
        # proxy that reads whatever comes would take.
        self.assertLess(offered, 512 * 1024, f"{offered} bytes taken in 1 s through a 16 KiB/s link")
        self.assertLessEqual(proxy.forwarded["up"], 2 * 16 * 1024)

    def test_concurrentBulkStreams(self) -> None:
        """
        Eight streams echoing 256 KiB each through a 1 MiB/s link (both
        ways): every byte comes back in order, and the link's rate holds.
        """
        proxy, _ = self.proxyTo(echo)
        proxy.setRate(MiB)
        size = 256 * 1024
        results: list[bool] = []
        errors: list[str] = []

        def stream() -> None:
            payload = os.urandom(size)
            try:
                with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
                    sender = threading.Thread(target=sock.sendall, args=(payload,))
                    sender.start()
                    received = recvExactly(sock, size)
                    sender.join()
                results.append(received == payload)
            except OSError as e:
                errors.append(repr(e))

        threads = [threading.Thread(target=stream) for _ in range(8)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        elapsed = time.monotonic() - started
        self.assertEqual((errors, results), ([], [True] * 8))
        rate = 8 * size / elapsed / MiB
        self.assertTrue(0.8 <= rate <= 1.2, f"{rate:.2f} MiB/s through a 1 MiB/s link ({elapsed:.2f} s)")

    def test_latency(self) -> None:
        """
        200 ms each way: a round trip takes at least 400 ms.
        """
        proxy, _ = self.proxyTo(echo)
        sock = self.connect(proxy)
        sock.sendall(b"a")
        self.assertEqual(recvExactly(sock, 1), b"a")
        proxy.setLatency(0.2)
        started = time.monotonic()
        sock.sendall(b"b")
        self.assertEqual(recvExactly(sock, 1), b"b")
        elapsed = time.monotonic() - started
        self.assertTrue(0.4 <= elapsed < 1.5, f"round trip {elapsed:.2f} s")
        proxy.setLatency(0)
        started = time.monotonic()
        sock.sendall(b"c")
        self.assertEqual(recvExactly(sock, 1), b"c")
        self.assertLess(time.monotonic() - started, 0.3)

    def test_blackHole(self) -> None:
        """
        In a black hole nothing moves either way and nothing is closed; once
        lifted, what was sent meanwhile arrives intact.
        """
        proxy, _ = self.proxyTo(echo)
        sock = self.connect(proxy)
        sock.sendall(b"before")
        self.assertEqual(recvExactly(sock, 6), b"before")
        proxy.setBlackHole()
        up = proxy.forwarded["up"]
        sock.sendall(b"during")
        sock.settimeout(1)
        self.assertRaises(TimeoutError, sock.recv, 100)
        self.assertEqual(proxy.forwarded["up"], up)
        self.assertEqual(proxy.openConnections, 1)
        proxy.setBlackHole(False)
        sock.settimeout(10)
        self.assertEqual(recvExactly(sock, 6), b"during")

    def test_silent(self) -> None:
        """
        New connections are accepted and then nothing: no upstream
        connection, no byte, no close.  Connections already open carry on.
        """
        proxy, target = self.proxyTo(echo)
        old = self.connect(proxy)
        old.sendall(b"x")
        self.assertEqual(recvExactly(old, 1), b"x")
        proxy.setNewConnections(NewConnections.SILENT)
        new = self.connect(proxy)
        new.sendall(b"hello")
        new.settimeout(1)
        self.assertRaises(TimeoutError, new.recv, 100)
        self.assertEqual((proxy.accepted, target.accepts), (2, 1))
        old.sendall(b"y")
        self.assertEqual(recvExactly(old, 1), b"y")

    def test_reset(self) -> None:
        """
        Every open connection gets a RST (ECONNRESET) on both sides, and so
        does every new one.
        """
        upstreamErrors: list[BaseException] = []

        def hold(sock: socket.socket) -> None:
            try:
                while sock.recv(100):
                    pass
            except OSError as e:
                upstreamErrors.append(e)

        proxy, _ = self.proxyTo(hold)
        sock = self.connect(proxy)
        sock.sendall(b"x")
        waitFor(lambda: proxy.forwarded["up"] == 1, 5, "a byte through")
        proxy.reset()
        self.assertRaises(ConnectionResetError, sock.recv, 100)
        waitFor(lambda: upstreamErrors, 5, "the upstream side to be reset")
        self.assertIsInstance(upstreamErrors[0], ConnectionResetError)
        self.assertRaises(ConnectionResetError, connectAndRead, proxy.port)

    def test_refuse(self) -> None:
        """
        Refusing, the port is closed: connecting fails with ECONNREFUSED.
        Open connections carry on, and the same port listens again after.
        """
        proxy, _ = self.proxyTo(echo)
        old = self.connect(proxy)
        proxy.setNewConnections(NewConnections.REFUSE)
        self.assertRaises(ConnectionRefusedError, socket.create_connection, ("127.0.0.1", proxy.port), 5)
        old.sendall(b"still")
        self.assertEqual(recvExactly(old, 5), b"still")
        proxy.passThrough()
        new = self.connect(proxy)
        new.sendall(b"again")
        self.assertEqual(recvExactly(new, 5), b"again")

    def test_upstreamDown(self) -> None:
        """
        With nothing listening upstream, an accepted connection is reset.
        """
        port = socket.socket()
        port.bind(("127.0.0.1", 0))
        address = port.getsockname()
        port.close()
        proxy = FaultProxy(address).start()
        self.addCleanup(proxy.stop)
        self.assertRaises(ConnectionResetError, connectAndRead, proxy.port)

    def test_stop(self) -> None:
        """
        Stopping closes the port and every connection, and ends the thread.
        """
        proxy, _ = self.proxyTo(echo)
        sock = self.connect(proxy)
        sock.sendall(b"x")
        self.assertEqual(recvExactly(sock, 1), b"x")
        name = f"faultproxy:{proxy.port}"
        self.assertIn(name, [thread.name for thread in threading.enumerate()])
        proxy.stop()
        self.assertNotIn(name, [thread.name for thread in threading.enumerate()])
        self.assertIn(recvAll(sock), [b""])
        self.assertRaises(ConnectionRefusedError, socket.create_connection, ("127.0.0.1", proxy.port), 5)
