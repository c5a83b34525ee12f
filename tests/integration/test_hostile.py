"""
The allowlist holds against hostile SOCKS input, with a real sshd relay and
a "forbidden" server that counts every connection it accepts.
"""

from __future__ import annotations

import ipaddress
import os
import random
import resource
import socket
import threading
import time

from .harness import Target, TunnelTestCase, echo, recvAll, recvExactly, socks5Connect


def socks5Raw(port: int, request: bytes, timeout: float = 10) -> bytes:
    """
    Send a raw SOCKS5 greeting + request; return everything the proxy says.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"\x05\x01\x00" + request)
        return recvAll(sock)


def domainRequest(name: bytes, port: int) -> bytes:
    return b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big")


class BypassTests(TunnelTestCase):
    def test_bypassCorpus(self) -> None:
        """
        Every spelling of the forbidden destination gets 0x02 and the
        forbidden server never sees a connection.
        """
        allowed = self.target(echo)
        forbidden = self.target(echo)
        F = forbidden.port
        connector = self.startConnector(
            "--forward-dest-allowlist",
            f"127.0.0.1:{allowed.port} 10.0.0.0/8:{F} *.example.internal:{F} grafana.internal:{F}",
        )
        port = connector.allocatedPort()
        corpus = [
            domainRequest(b"127.0.0.1", F),
            b"\x05\x01\x00\x01" + bytes([127, 0, 0, 1]) + F.to_bytes(2, "big"),
            domainRequest(b"127.1", F),
            domainRequest(b"2130706433", F),
            domainRequest(b"0x7f.0.0.1", F),
            domainRequest(b"0x7f000001", F),
            domainRequest(b"0177.0.0.1", F),
            domainRequest(b"::ffff:127.0.0.1", F),
            b"\x05\x01\x00\x04" + ipaddress.ip_address("::ffff:127.0.0.1").packed + F.to_bytes(2, "big"),
            domainRequest(b"localhost", F),  # resolves to 127.0.0.1: not in 10.0.0.0/8
            domainRequest(b"LOCALHOST.", F),
            domainRequest(b"127.0.0.1", allowed.port + 1 if allowed.port + 1 != F else allowed.port + 2),
        ]
        for request in corpus:
            reply = socks5Raw(port, request)
            self.assertEqual(reply[:4], b"\x05\x00\x05\x02", request)
        # No name rule matches these; the IP rule for that port makes the
        # connector resolve them, which fails (0x04): still never dialled.
        for name in (b"example.internal", b"127.0.0.1.example.internal.evil", b"grafana.internal.evil"):
            reply = socks5Raw(port, domainRequest(name, F))
            self.assertEqual(reply[:4], b"\x05\x00\x05\x04", name)
        # Spellings of the allowed address are the address they mean.
        for name in ("127.1", "2130706433", "0x7f.0.0.1"):
            sock, code = socks5Connect(port, name, allowed.port)
            sock.close()
            self.assertEqual(code, 0, name)
        self.assertEqual(forbidden.accepts, 0)

    def test_invalidNames(self) -> None:
        """
        NUL bytes, control characters and empty labels never reach a resolver.
        """
        server = self.target(echo)
        port = self.startConnector("--forward-dest-allowlist", "*:*").allocatedPort()
        for name in (b"local\x00host", b"a..b", b"\x01\x02", b"x\nlocalhost", b"-.-"):
            reply = socks5Raw(port, domainRequest(name, server.port))
            self.assertEqual(reply[:4], b"\x05\x00\x05\x04", name)
        self.assertEqual(server.accepts, 0)

    def test_none(self) -> None:
        server = self.target(echo)
        connector = self.startConnector("--forward-dest-allowlist", "none")
        port = connector.allocatedPort()
        sock, code = socks5Connect(port, "127.0.0.1", server.port)
        sock.close()
        self.assertEqual((code, server.accepts), (2, 0))
        self.assertIn("destinations: no destination", connector.text())


class HostileInputTests(TunnelTestCase):
    def test_dribbledRequestTimesOut(self) -> None:
        """
        A request dribbled one byte at a time past the handshake timeout is
        closed; a normal stream keeps working meanwhile.
        """
        server = self.target(echo)
        port = self.startConnector("--handshake-timeout", "1").allocatedPort()
        slow = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(slow.close)
        started = time.monotonic()
        closed = False
        for byte in b"\x05\x01\x00\x05\x01\x00\x03\x09localhost":
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            slow.settimeout(0.3)
            try:
                if slow.recv(100) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            sock, code = socks5Connect(port, "127.0.0.1", server.port)
            sock.close()
            self.assertEqual(code, 0)
        self.assertTrue(closed, "the dribbling client was never cut off")
        self.assertLess(time.monotonic() - started, 5)

    def test_manyHalfOpenChannels(self) -> None:
        """
        A thousand channels that never finish a handshake: a normal stream
        still works byte-exact, and the timeout closes them all.
        """
        count = 1000
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        server = self.target(echo)
        connector = self.startConnector("--handshake-timeout", "3")
        port = connector.allocatedPort()
        idle = []
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(b"\x05")  # a greeting that never completes
            idle.append(sock)
        self.addCleanup(lambda: [s.close() for s in idle])
        payload = os.urandom(1 << 20)
        sock, code = socks5Connect(port, "127.0.0.1", server.port, timeout=30)
        self.assertEqual(code, 0)
        sock.sendall(payload)
        self.assertEqual(recvExactly(sock, len(payload)), payload)
        sock.close()
        for half in idle:
            half.settimeout(30)
            self.assertEqual(recvAll(half), b"")
        self.assertEqual(connector.process.poll(), None)  # type: ignore[union-attr]

    def test_fuzzWhileStreaming(self) -> None:
        """
        Five seconds of random bytes into the relay port, while a normal
        stream keeps echoing byte-exact.
        """
        server = self.target(echo)
        connector = self.startConnector("--handshake-timeout", "2")
        port = connector.allocatedPort()
        rng = random.Random(1234)
        stop = threading.Event()
        errors: list[str] = []

        def steady() -> None:
            sock, _code = socks5Connect(port, "127.0.0.1", server.port, timeout=30)
            try:
                while not stop.is_set():
                    block = os.urandom(rng.randint(1, 65536))
                    sock.sendall(block)
                    if recvExactly(sock, len(block)) != block:
                        errors.append("echo mismatch")
            except Exception as e:
                errors.append(repr(e))
            finally:
                sock.close()

        streamer = threading.Thread(target=steady)
        streamer.start()
        deadline = time.monotonic() + 5
        sent = 0
        while time.monotonic() < deadline:
            first = rng.choice([b"\x04", b"\x05", b""])
            garbage = first + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 600)))
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(garbage)
                    sock.shutdown(socket.SHUT_WR)
                    sock.settimeout(3)
                    try:
                        recvAll(sock)
                    except TimeoutError:
                        pass
            except OSError:
                pass
            sent += 1
        stop.set()
        streamer.join(30)
        self.assertEqual(errors, [])
        self.assertGreater(sent, 50)
        self.assertIsNone(connector.process.poll())  # type: ignore[union-attr]
        sock, code = socks5Connect(port, "127.0.0.1", server.port)
        sock.close()
        self.assertEqual(code, 0)


__all__ = ["Target"]
