"""
Streams that end let go of everything: a real connector and sshd, and
destinations that never read or never answer.  Descriptors and memory come
back to where they were, and the metrics say why each stream ended.
"""

from __future__ import annotations

import socket
import threading

from .harness import MiB, Target, TunnelTestCase, descriptors, rss, socks5Connect, waitFor


class LetGoTests(TunnelTestCase):
    def neverReads(self) -> Target:
        """
        A destination that accepts and never reads (a tiny receive buffer),
        holding every connection until the test ends.
        """
        done = threading.Event()
        self.addCleanup(done.set)

        def hold(sock: socket.socket) -> None:
            done.wait(60)

        return self.target(hold, receiveBuffer=4096)

    def target(self, handler, host: str = "127.0.0.1", receiveBuffer: int = 0) -> Target:  # type: ignore[no-untyped-def, override]
        target = Target(handler, host, receiveBuffer=receiveBuffer)
        self.addCleanup(target.close)
        return target

    def test_idleStreamsToAStuckDestination(self) -> None:
        """
        Ten streams push 4 MiB each at a destination that never reads, five
        rounds; each is ended by the idle timeout.  Every destination socket is
        closed (aborted after the flush deadline) and memory returns.
        """
        sink = self.neverReads()
        connector = self.startConnector("--stream-idle-timeout", "1")
        port = connector.allocatedPort()
        assert connector.process is not None
        pid = connector.process.pid
        baseline = descriptors(pid), rss(pid)
        payload = b"x" * MiB
        for _ in range(5):
            clients = []
            for _ in range(10):
                sock, code = socks5Connect(port, "127.0.0.1", sink.port)
                self.assertEqual(code, 0)
                sock.setblocking(False)
                sent = 0
                for _ in range(4):
                    try:
                        sent += sock.send(payload)
                    except BlockingIOError:
                        break
                clients.append(sock)
            # The idle timeout ends them; the relay side sees the channel close.
            for sock in clients:
                sock.setblocking(True)
                sock.settimeout(30)
                try:
                    while sock.recv(65536):
                        pass
                except OSError:
                    pass
                sock.close()
        waitFor(lambda: descriptors(pid) <= baseline[0], 20, "descriptors back to the baseline")
        # Every buffer is freed (tracemalloc shows the Python heap back to its
        # size); the allocator keeps its high-water mark, about three times
        # what ten 2 MiB windows hold.  Before, each round kept 20 MiB more.
        grown = rss(pid) - baseline[1]
        self.assertLess(grown, 64 * MiB, f"RSS {grown / MiB:.1f} MiB above the baseline")
        metrics = connector.get("/metrics")[1]
        self.assertIn('incident_connector_streams_total{result="idle"} 50.0', metrics)
        self.assertIn("incident_connector_destination_buffered_bytes 0.0", metrics)

    def test_halfClosedStreamsFreed(self) -> None:
        """
        The platform sends its request and EOF; the destination never answers
        nor closes.  After --half-close-timeout of silence the stream is freed.
        """
        sink = self.neverReads()
        connector = self.startConnector("--half-close-timeout", "2")
        port = connector.allocatedPort()
        assert connector.process is not None
        pid = connector.process.pid
        baseline = descriptors(pid)
        clients = []
        for _ in range(10):
            sock, code = socks5Connect(port, "127.0.0.1", sink.port)
            self.assertEqual(code, 0)
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            sock.shutdown(socket.SHUT_WR)
            clients.append(sock)
        waitFor(lambda: descriptors(pid) >= baseline + 10, 10, "ten destination connections")
        for sock in clients:
            sock.settimeout(30)
            self.assertEqual(sock.recv(100), b"", "the connector closes the stream")
            sock.close()
        waitFor(lambda: descriptors(pid) <= baseline, 20, "descriptors back to the baseline")
        waitFor(
            lambda: (
                'incident_connector_streams_total{result="half_close_timeout"} 10.0' in connector.get("/metrics")[1]
            ),
            10,
            "ten half-close timeouts counted",
        )
        self.assertEqual(connector.text().count("half-closed and silent for"), 10)
