"""
End to end: a real OpenSSH sshd as the relay, the connector as a twistd
process, real TCP targets and real SOCKS clients through the allocated port.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
import time

from python_socks import ProxyType
from python_socks.sync import Proxy

from .harness import (
    Connector,
    MiB,
    Target,
    TunnelTestCase,
    echo,
    http200,
    recvAll,
    recvExactly,
    socks5Connect,
    writeKeyPair,
)


class CoreTests(TunnelTestCase):
    def test_curlByName(self) -> None:
        """
        curl resolves nothing itself; the connector dials the name.
        """
        http = self.target(http200)
        port = self.startConnector().allocatedPort()
        result = self.curl(port, f"http://localhost:{http.port}/")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "hello from the private network\n")

    def test_curlIPv4AndIPv6(self) -> None:
        http4 = self.target(http200)
        http6 = self.target(http200, "::1")
        port = self.startConnector().allocatedPort()
        for url in (f"http://127.0.0.1:{http4.port}/", f"http://[::1]:{http6.port}/"):
            result = self.curl(port, url)
            self.assertEqual((result.returncode, result.stdout), (0, "hello from the private network\n"), url)
        sock, code = socks5Connect(port, "::1", http6.port)
        sock.close()
        self.assertEqual(code, 0)

    def test_socks4And4a(self) -> None:
        """
        SOCKS4 (address) and 4a (name resolved by the connector), as OpenSSH accepts.
        """
        server = self.target(echo)
        port = self.startConnector().allocatedPort()
        for host, rdns in (("127.0.0.1", False), ("localhost", True)):
            proxy = Proxy(ProxyType.SOCKS4, "127.0.0.1", port, rdns=rdns)
            sock = proxy.connect(host, server.port, timeout=10)
            sock.sendall(b"ping")
            self.assertEqual(recvExactly(sock, 4), b"ping")
            sock.close()

    def test_pythonSocks5(self) -> None:
        server = self.target(echo)
        port = self.startConnector().allocatedPort()
        sock = Proxy(ProxyType.SOCKS5, "127.0.0.1", port, rdns=True).connect("localhost", server.port, timeout=10)
        sock.sendall(b"x" * 1000)
        self.assertEqual(recvExactly(sock, 1000), b"x" * 1000)
        sock.close()

    def test_download64MiB(self) -> None:
        """
        64 MiB from the destination arrive byte-exact.
        """
        payload = os.urandom(MiB) * 64

        def source(sock: socket.socket) -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            sock.recv(1)

        server = self.target(source)
        port = self.startConnector().allocatedPort()
        sock, code = socks5Connect(port, "127.0.0.1", server.port, timeout=60)
        self.assertEqual(code, 0)
        received = recvAll(sock)
        sock.close()
        self.assertEqual(len(received), len(payload))
        self.assertEqual(hashlib.sha256(received).digest(), hashlib.sha256(payload).digest())

    def test_upload64MiB(self) -> None:
        """
        64 MiB to the destination arrive byte-exact; its digest comes back.
        """
        payload = os.urandom(MiB) * 64

        def sink(sock: socket.socket) -> None:
            digest = hashlib.sha256()
            size = 0
            while data := sock.recv(1 << 20):
                digest.update(data)
                size += len(data)
            sock.sendall(b"%d %s" % (size, digest.hexdigest().encode()))

        server = self.target(sink)
        port = self.startConnector().allocatedPort()
        sock, code = socks5Connect(port, "127.0.0.1", server.port, timeout=60)
        self.assertEqual(code, 0)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reply = recvAll(sock).decode()
        sock.close()
        self.assertEqual(reply, f"{len(payload)} {hashlib.sha256(payload).hexdigest()}")

    def test_halfCloseFromClient(self) -> None:
        """
        The client shuts its write side; the destination sees EOF and can still answer.
        """

        def countThenAnswer(sock: socket.socket) -> None:
            size = len(recvAll(sock))
            sock.sendall(b"got %d" % size)

        server = self.target(countThenAnswer)
        port = self.startConnector().allocatedPort()
        sock, _ = socks5Connect(port, "127.0.0.1", server.port)
        sock.sendall(b"a" * 5000)
        sock.shutdown(socket.SHUT_WR)
        self.assertEqual(recvAll(sock), b"got 5000")
        sock.close()

    def test_halfCloseWhileDestinationSlow(self) -> None:
        """
        The client's EOF arrives while the destination is not reading (so the
        connector has paused reading from the relay); it is still delivered
        once the destination catches up.
        """
        payload = os.urandom(1536 * 1024)  # within one 2 MiB window
        clientDone = threading.Event()

        def slowSink(sock: socket.socket) -> None:
            clientDone.wait(30)
            size = 0
            while chunk := sock.recv(4096):
                size += len(chunk)
                time.sleep(0.001)  # pace the reader so the connector stays paused
            sock.sendall(b"%d" % size)

        server = Target(slowSink, receiveBuffer=4096)
        self.addCleanup(server.close)
        port = self.startConnector().allocatedPort()
        sock, _ = socks5Connect(port, "127.0.0.1", server.port, timeout=30)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        clientDone.set()
        self.assertEqual(recvAll(sock), b"%d" % len(payload))
        sock.close()

    def test_halfCloseFromDestination(self) -> None:
        """
        The destination shuts its write side; the client sees EOF and can still send.
        """
        heard: list[bytes] = []
        done = threading.Event()

        def speakThenListen(sock: socket.socket) -> None:
            sock.sendall(b"banner")
            sock.shutdown(socket.SHUT_WR)
            heard.append(recvAll(sock))
            done.set()

        server = self.target(speakThenListen)
        port = self.startConnector().allocatedPort()
        sock, _ = socks5Connect(port, "127.0.0.1", server.port)
        self.assertEqual(recvAll(sock), b"banner")
        sock.sendall(b"after your EOF")
        sock.shutdown(socket.SHUT_WR)
        self.assertTrue(done.wait(10))
        self.assertEqual(heard, [b"after your EOF"])
        sock.close()

    def test_200ConcurrentStreams(self) -> None:
        server = self.target(echo)
        port = self.startConnector().allocatedPort()
        results: list[bool] = []
        barrier = threading.Barrier(200, timeout=30)

        def client(index: int) -> None:
            try:
                sock, code = socks5Connect(port, "127.0.0.1", server.port, timeout=30)
                barrier.wait()  # all 200 open at once
                message = b"stream %d " % index * 100
                sock.sendall(message)
                ok = code == 0 and recvExactly(sock, len(message)) == message
                sock.close()
            except Exception:
                ok = False
            results.append(ok)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(200)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        self.assertEqual(results.count(True), 200)

    def test_deniedDestination(self) -> None:
        """
        A destination not on the list gets 0x02 and never sees a connection.
        """
        allowed = self.target(echo)
        forbidden = self.target(echo)
        connector = self.startConnector("--forward-dest-allowlist", f"127.0.0.1:{allowed.port}")
        port = connector.allocatedPort()
        for host in ("127.0.0.1", "localhost"):
            sock, code = socks5Connect(port, host, forbidden.port)
            self.assertEqual(code, 0x02)
            self.assertEqual(recvAll(sock), b"")  # then the channel closes
            sock.close()
        sock, code = socks5Connect(port, "127.0.0.1", allowed.port)
        self.assertEqual(code, 0)
        sock.close()
        result = self.curl(port, f"http://127.0.0.1:{forbidden.port}/")
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(forbidden.accepts, 0)
        connector.waitForLog(rf"stream 127\.0\.0\.1:{forbidden.port} denied")

    def test_replyCodes(self) -> None:
        """
        Refused, unresolvable and unsupported requests get their RFC 1928 codes.
        """
        port = self.startConnector().allocatedPort()
        closedPort = _closedPort()
        sock, code = socks5Connect(port, "127.0.0.1", closedPort)
        self.assertEqual(code, 0x05)
        sock.close()
        sock, code = socks5Connect(port, "no-such-host.invalid", 80)
        self.assertEqual(code, 0x04)
        sock.close()
        for request, expected in [
            (b"\x05\x01\x00" + b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50", b"\x05\x00\x05\x07"),  # BIND
            (b"\x05\x01\x00" + b"\x05\x01\x00\x07\x00\x00", b"\x05\x00\x05\x08"),  # address type
            (b"\x05\x01\x02", b"\x05\xff"),  # no acceptable method
        ]:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(request)
                self.assertEqual(recvAll(sock)[: len(expected)], expected)

    def test_garbageKeepsServing(self) -> None:
        """
        Garbage on one stream closes it; the next stream works.
        """
        server = self.target(echo)
        port = self.startConnector().allocatedPort()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
            self.assertEqual(recvAll(sock), b"")
        sock, code = socks5Connect(port, "127.0.0.1", server.port)
        self.assertEqual(code, 0)
        sock.close()


#: Connector prelude: a platform without socket.sendmsg (Windows).  The
#: connector's check (C{_twisted._SENDMSG}) is what such a platform sets, and
#: any call that still reached C{sendmsg} would fail the stream.
NO_SENDMSG = """
import socket
def _absent(self, *args, **kwargs):
    raise AttributeError("socket.sendmsg is removed by the test")
socket.socket.sendmsg = _absent
import incident_connector._twisted
incident_connector._twisted._SENDMSG = False
"""


class PortabilityTests(TunnelTestCase):
    def test_withoutSendmsg(self) -> None:
        """
        Where the platform has no C{sendmsg}, the tunnel still carries bulk
        data both ways byte-exact, and many streams at once.
        """
        payload = os.urandom(MiB) * 16

        def roundTrip(sock: socket.socket) -> None:
            received = recvExactly(sock, len(payload))
            sock.sendall(hashlib.sha256(received).digest() + payload)

        server = self.target(roundTrip)
        connector = Connector(self.dir / "connector", self.connectorArgs(), prelude=NO_SENDMSG).start()
        self.addCleanup(connector.stop)
        port = connector.allocatedPort()
        sock, code = socks5Connect(port, "127.0.0.1", server.port, timeout=60)
        self.assertEqual(code, 0)
        sock.sendall(payload)
        self.assertEqual(recvExactly(sock, 32), hashlib.sha256(payload).digest())
        self.assertEqual(hashlib.sha256(recvExactly(sock, len(payload))).digest(), hashlib.sha256(payload).digest())
        sock.close()
        echoed = self.target(echo)
        results: list[bool] = []

        def client(n: int) -> None:
            data = b"%04d" % n * 4096
            s, c = socks5Connect(port, "127.0.0.1", echoed.port, timeout=30)
            with s:
                s.sendall(data)
                results.append(c == 0 and recvExactly(s, len(data)) == data)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        self.assertEqual(results, [True] * 50)
        self.assertNotIn("Traceback", connector.text())


class HostKeyTests(TunnelTestCase):
    def connectorArgs(self) -> list[str]:
        args = super().connectorArgs()
        return args[: args.index("--known-hosts")]

    def test_pinnedFingerprint(self) -> None:
        connector = self.startConnector("--relay-host-key", self.relay.fingerprint)
        connector.allocatedPort()

    def test_wrongPinRefused(self) -> None:
        other = writeKeyPair(self.dir / "other")
        from .harness import fingerprintOf

        connector = self.startConnector("--relay-host-key", fingerprintOf(other))
        connector.waitForLog("host key verification failed: relay host key SHA256:")
        self.assertNotIn("Allocated port", connector.text())
        self.assertNotIn("Accepted publickey", self.relay.log.read_text())

    def test_wrongKnownHostsRefused(self) -> None:
        knownHosts = self.dir / "wrong_known_hosts"
        other = writeKeyPair(self.dir / "other").split()
        knownHosts.write_text(f"[127.0.0.1]:{self.relay.port} {other[0]} {other[1]}\n")
        connector = self.startConnector("--known-hosts", str(knownHosts))
        connector.waitForLog("host key verification failed: .*differs from the one in known_hosts line 1")
        self.assertNotIn("Allocated port", connector.text())

    def test_hashedKnownHosts(self) -> None:
        """
        Hashed known_hosts entries, as ssh-keygen -H writes them, are honoured.
        """
        knownHosts = self.relay.knownHosts(self.dir / "hashed")
        subprocess.run(["ssh-keygen", "-H", "-f", str(knownHosts)], check=True, capture_output=True)
        self.assertTrue(knownHosts.read_text().startswith("|1|"))
        self.startConnector("--known-hosts", str(knownHosts)).allocatedPort()

    def test_unknownUserKey(self) -> None:
        stranger = self.dir / "stranger"
        writeKeyPair(stranger)
        args = [*self.connectorArgs(), "--relay-host-key", self.relay.fingerprint]
        args[args.index("--identity-file") + 1] = str(stranger)
        connector = Connector(self.dir / "c", args).start()
        self.addCleanup(connector.stop)
        connector.waitForLog("authentication failed: the relay refused the key for user")


def _closedPort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
